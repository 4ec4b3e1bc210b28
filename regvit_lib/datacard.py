"""Write the data card of the scenes data set: ``python -m regvit_lib.datacard [--out data/scenes]``.

Renders the picture grids with :mod:`regvit_lib.plots` and measures every number of the card
with :func:`regvit_lib.scenes.scene_stats`, for the data of the ``cpu`` and ``gpu`` profiles. The
card (``README.md``), its figures and ``stats.json`` are all written by this module.
"""

import argparse
import json
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import numpy as np

from .profiles import get_profile
from .scenes import render_scenes, scene_stats

__all__ = ["write_card"]

# The card's text, with {fields} for the measured numbers.
_CARD = files("regvit_lib") / "datacard.md"


def write_card(out: Path, n: int = 2_000) -> dict[str, dict]:
    """Write ``README.md``, ``grid.png``, ``labels.png`` and ``stats.json`` into ``out``."""
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    stats = {p.name: scene_stats(p.scenes, p.model.patch_size, n=n) for p in map(get_profile, ("cpu", "gpu"))}
    cpu = get_profile("cpu")
    plots.use_style()
    big = replace(cpu.scenes, img_size=64)
    rows = {bg: render_scenes(replace(big, backgrounds=(bg,)), "val", np.arange(6)) for bg in big.backgrounds}
    names = [f"{k + 1} object{'s' if k else ''}" for k in range(big.num_classes)]
    plots.scenes_grid(rows, names).savefig(out / "grid.png")
    plots.scene_labels(render_scenes(big, "val", [3]), 0, patch_size=8).savefig(out / "labels.png")
    table = "\n".join(f"| `{k}` | {s['img_size']} | {s['patch_size']} | {s['objects_mean']:.2f} | "
                      f"{100 * s['object_pixels']:.1f} % | {100 * s['background_patches']:.1f} % |"
                      for k, s in stats.items())
    kinds = "\n".join(f"| `{k}` | {v['images']} | {100 * v['background_patches']:.1f} % | "
                      f"{v['background_spread']:.3f} |" for k, v in stats["cpu"]["per_background"].items())
    classes = ", ".join(f"{100 * c:.1f} %" for c in stats["cpu"]["class_share"])
    (out / "README.md").write_text(_CARD.read_text().format(images=n, table=table, kinds=kinds, classes=classes,
                                                max_objects=cpu.scenes.max_objects, last_class=cpu.scenes.max_objects - 1,
                                                cpu_patch=cpu.model.patch_size))
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/scenes", help="folder of the card (default data/scenes)")
    args = ap.parse_args(argv)
    write_card(Path(args.out))
    print(f"wrote the data card to {args.out}")


if __name__ == "__main__":
    main()
