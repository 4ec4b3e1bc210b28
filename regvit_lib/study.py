"""The emergence study: at what scale and with what recipe do artifacts appear here?

``python -m regvit_lib.study --profile cpu --out data/emergence`` trains (or reads from the
cache) every point of the study and writes one small JSON file: per run, its configuration
hash, compute, accuracy, and at every evaluation the per-layer summaries recorded by the
training loop -- the per-image max/median patch-norm ratio, the share of patch tokens above
``k`` x their image's median, and the attention-sink mass, kind and position stability.

Each *axis* varies one thing around the profile's recipe (``profile.run()``):

* ``compute``   -- training steps x1/2, x1, x2, x4;
* ``tokens``    -- patch 8 (16 tokens) vs patch 4 (64 tokens) at the same image size;
* ``pooling``   -- [CLS] vs average pooling (the sinks seen outside the project needed avg);
* ``optimiser`` -- weight decay 0.3; peak learning rate x2.5;
* ``shape``     -- width x depth at about the same compute (wider-shallower, narrower-deeper);
* ``data``      -- scenes with only flat / only noise / only striped backgrounds, and
  FractalDB-style fractals on black (92 % of the canvas exactly black);
* ``registers`` -- 4 registers, with [CLS] and with average pooling.

Norm ratios are taken over blocks 1 and up: block 0 reacts to the raw contrast of the input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .data import FractalConfig
from .profiles import Profile, get_profile
from .summaries import RATIO_BINS
from .train import RunConfig, TrainedRun, train

__all__ = ["study_points", "summarize", "run_study", "main"]


def study_points(profile: Profile) -> list[tuple[str, str, RunConfig]]:
    """``(axis, label, run)`` for every point of the study at this profile's scale."""
    base = profile.run()
    m, t, d = base.model, base.train, profile.data

    def with_train(**kw: Any) -> RunConfig:
        return replace(base, train=replace(t, **kw))

    pts: list[tuple[str, str, RunConfig]] = [("baseline", "profile recipe", base)]
    for f in (0.5, 2, 4):
        steps = int(t.steps * f)
        pts.append(("compute", f"steps x{f:g}", with_train(
            steps=steps, warmup_steps=max(1, int(t.warmup_steps * f)), eval_every=max(1, steps // 6),
            checkpoint_every=max(1, steps // 6))))
    pts.append(("tokens", f"patch {2 * m.patch_size} ({(m.img_size // (2 * m.patch_size)) ** 2} tokens)",
                replace(base, model=replace(m, patch_size=2 * m.patch_size))))
    pts.append(("pooling", "average pooling", replace(base, model=replace(m, global_pool="avg"))))
    pts.append(("optimiser", "weight decay 0.3", with_train(weight_decay=0.3)))
    pts.append(("optimiser", "peak lr x2.5", with_train(lr=t.lr * 2.5)))
    pts.append(("shape", f"wider, shallower ({int(m.embed_dim * 1.5)} x {m.depth // 2})",
                replace(base, model=replace(m, embed_dim=int(m.embed_dim * 1.5), depth=max(1, m.depth // 2),
                                            num_heads=m.num_heads))))
    pts.append(("shape", f"narrower, deeper ({m.embed_dim // 2 + m.embed_dim // 4} x {m.depth * 2})",
                replace(base, model=replace(m, embed_dim=m.embed_dim // 2 + m.embed_dim // 4, depth=m.depth * 2,
                                            num_heads=m.num_heads // 2 or 1))))
    for bg in ("flat", "noise", "texture"):
        pts.append(("data", f"{bg} backgrounds only", replace(base, data=replace(d, backgrounds=(bg,)))))
    frac = FractalConfig(img_size=d.img_size, num_classes=10, train_size=d.train_size, val_size=d.val_size,
                         test_size=d.test_size)
    pts.append(("data", "fractals on black", replace(base, data=frac, model=replace(m, num_classes=10))))
    pts.append(("registers", "4 registers", replace(base, model=replace(m, num_registers=4))))
    pts.append(("registers", "4 registers, average pooling",
                replace(base, model=replace(m, num_registers=4, global_pool="avg"))))
    return pts


def _share_above(hist: list[int], k: float) -> float:
    """Share of tokens whose norm is above ``k`` x their image's median (bin resolution)."""
    h = np.asarray(hist, dtype=float)
    left = RATIO_BINS[:-1]
    return float(h[left >= np.log2(k) - 1e-9].sum() / max(h.sum(), 1.0))


def _record_summary(rec: dict[str, Any], k: float) -> dict[str, Any]:
    layers = rec["norms"][1:] or rec["norms"]  # blocks 1.. (block 0 reacts to input contrast)
    best = max(range(len(layers)), key=lambda i: layers[i]["ratio_mean"])
    sinks = rec["sinks"]
    s = max(range(len(sinks)), key=lambda i: sinks[i]["mass"])
    return {
        "step": rec["step"], "train_flops": rec["train_flops"], "val_acc": rec["val_acc"],
        "ratio_mean": layers[best]["ratio_mean"], "ratio_mean_layer": best + (len(rec["norms"]) > 1),
        "ratio_max": max(layer["ratio_max"] for layer in layers),
        "outlier_share": max(_share_above(layer["hist"], k) for layer in layers),
        "sink_mass": sinks[s]["mass"], "sink_layer": s, "sink_kind": max(sinks[s]["kind"], key=sinks[s]["kind"].get),
        "sink_fixed": sinks[s]["fixed"],
        "reg_norm": max((layer["reg"] for layer in layers if layer["reg"] is not None), default=None),
    }


def summarize(run: TrainedRun, k: float = 4.0) -> dict[str, Any]:
    """One row of the study: the final evaluation's summary, plus its curve over training."""
    return {"key": run.key[:24], "params": run.metrics["params"], "train_flops": run.metrics["train_flops"],
            "test_acc": run.metrics["test_acc"], "train_seconds": run.metrics["train_seconds"],
            "device": run.metrics["device"], **{f"final_{a}": b for a, b in _record_summary(run.curves[-1], k).items()},
            "curve": [_record_summary(rec, k) for rec in run.curves]}


def run_study(profile: Profile, root: Path | str | None = None, progress: bool = False,
              k: float = 4.0) -> list[dict[str, Any]]:
    """Train or load every point of the study; one summary row per point."""
    rows = []
    for axis, label, run in study_points(profile):
        t = time.perf_counter()
        trained = train(run, root=root, progress=progress)
        rows.append({"axis": axis, "label": label, "cached": trained.cached,
                     "call_seconds": time.perf_counter() - t, **summarize(trained, k)})
        r = rows[-1]
        took = "cached" if trained.cached else f"{r['call_seconds']:.0f} s"
        print(f"{axis:10s} {label:40s} ratio {r['final_ratio_mean']:.2f} sink {r['final_sink_mass']:.2f} "
              f"({r['final_sink_kind']}) acc {r['test_acc']:.3f} {took}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", default="data/emergence", help="folder for <profile>.json")
    ap.add_argument("--k", type=float, default=4.0, help="outlier rule: k x the image's median norm")
    args = ap.parse_args(argv)
    prof = get_profile(args.profile)
    rows = run_study(prof, k=args.k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python -m regvit_lib.study " + " ".join(argv if argv is not None else sys.argv[1:]),
           "profile": prof.name, "k": args.k, "rows": rows}
    (out / f"{prof.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / f'{prof.name}.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
