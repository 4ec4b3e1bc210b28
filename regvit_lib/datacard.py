"""Write the data card of the scenes data set: ``python -m regvit_lib.datacard [--out data/scenes]``.

Renders the picture grids with :mod:`regvit_lib.plots` and measures every number of the card
with :func:`regvit_lib.data.scene_stats`, for the data of the ``cpu`` and ``gpu`` profiles. The
card (``README.md``), its figures and ``stats.json`` are all written by this module.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from .data import render_scenes, scene_stats

__all__ = ["write_card"]

_CARD = """# Data card: procedural scenes

*Written by `python -m regvit_lib.datacard` (code: `regvit_lib/data.py`); do not edit by hand.*

**What.** Images of a few flat-coloured objects (circle, square, triangle, cross; diamond and
ring on request), each alone in its own cell of a jittered grid, on a large background of one
of four kinds: `flat` colour, smooth `gradient`, low-frequency `noise`, striped `texture`.
Optionally, objects carry stripes (`object_texture`).

**Why.** *Vision Transformers Need Registers* finds its high-norm tokens on patches that look
like their neighbours: redundant background. No data set can be downloaded on the machines
that build this book, so the generator makes exactly that, and the background kind is the
knob that sets how redundant the background is.

**Labels, per image.**
- class: the number of objects, 1 to {max_objects}, as classes 0 to {last_class} (`task="count"`). No single patch
  decides it: it needs global information. `task="majority"` asks which shape is most
  numerous instead.
- segmentation: 0 on the background, 1 + shape index on object pixels.
- depth: the background lies at 1.0 and each object at a depth in [0.2, 0.8]. Nearer objects
  are drawn larger, so depth can be inferred from the image.
- boxes: the tight box of each object's pixels, (x0, y0, x1, y1) with x1 and y1 exclusive.

**Determinism and splits.** Every random number is a hash of (data seed, split, index, slot),
so an image depends only on these, in any batch order and on any device. `train`, `val` and
`test` hash different keys and never share an image (tested).

**Knobs** (`ScenesConfig`): `img_size`, `task`, `shapes`, `max_per_shape`, `backgrounds`,
`object_size`, `object_texture`, split sizes, `seed`.

## Measured on {images} `val` scenes

| profile | px | patch | objects / image | object pixels | background-only patches |
|---|---|---|---|---|---|
{table}

Background-only patches by kind (`cpu` data, patch {cpu_patch}); "spread" is the mean
per-image standard deviation of background pixel values (0 = perfectly flat):

| background | images | background-only patches | spread |
|---|---|---|---|
{kinds}

Class shares (`cpu` data): {classes}.

The grid shows six `val` scenes at 64 px, each rendered with every background kind (one row
per kind, titled by class). Objects and background are drawn from separate random numbers,
so only the background changes down a column.

![scenes by background kind](grid.png)

![one scene and its labels](labels.png)
"""


def write_card(out: Path, n: int = 2_000) -> dict[str, dict]:
    """Write ``README.md``, ``grid.png``, ``labels.png`` and ``stats.json`` into ``out``."""
    from . import plots
    from .profiles import get_profile

    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for name in ("cpu", "gpu"):
        prof = get_profile(name)
        stats[name] = scene_stats(prof.data, prof.model.patch_size, n=n)
    cpu = get_profile("cpu")
    plots.use_style()
    big = replace(cpu.data, img_size=64)
    rows = {bg: render_scenes(replace(big, backgrounds=(bg,)), "val", np.arange(6)) for bg in big.backgrounds}
    fig = plots.scenes_grid(rows, [f"{k + 1} object{'s' if k else ''}" for k in range(big.num_classes)])
    fig.savefig(out / "grid.png")
    fig = plots.scene_labels(render_scenes(big, "val", [3]), 0, patch_size=8)
    fig.savefig(out / "labels.png")
    table = "\n".join(
        f"| `{k}` | {s['img_size']} | {s['patch_size']} | {s['objects_mean']:.2f} | "
        f"{100 * s['object_pixels']:.1f} % | {100 * s['background_patches']:.1f} % |"
        for k, s in stats.items())
    kinds = "\n".join(f"| `{k}` | {v['images']} | {100 * v['background_patches']:.1f} % | {v['background_spread']:.3f} |"
                      for k, v in stats["cpu"]["per_background"].items())
    classes = ", ".join(f"{100 * c:.1f} %" for c in stats["cpu"]["class_share"])
    (out / "README.md").write_text(_CARD.format(images=n, table=table, kinds=kinds, classes=classes,
                                                max_objects=cpu.data.max_objects, last_class=cpu.data.max_objects - 1,
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
