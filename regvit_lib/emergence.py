"""The emergence study: at what scale and with what recipe do artifacts appear here?

``python -m regvit_lib.emergence --profile cpu --out data/emergence`` trains (or reads from the
cache) every point of the study and writes one small JSON file; every row is stamped with the
code version of the cache key, the git commit and the command that made it
(``--axes objective`` re-runs one axis and keeps the file's other rows with their stamps): per
run, its configuration hash, compute, accuracy, and at every evaluation the per-layer summaries
recorded by the training loop -- the per-image max/median patch-norm ratio, the share of patch tokens above
``k`` x their image's median, and the attention-sink mass, kind and position stability.

Each *axis* varies one thing around the profile's recipe (``profile.run()``):

* ``compute``   -- training steps x1/2, x1, x2, x4;
* ``seeds``     -- the compute axis (x1, x2, x4) again with two more seeds;
* ``tokens``    -- patch 8 (16 tokens) vs patch 4 (64 tokens) at the same image size;
* ``pooling``   -- [CLS] vs average pooling (the sinks seen outside the project needed avg);
* ``optimiser`` -- weight decay 0.3; peak learning rate x2.5;
* ``shape``     -- width x depth at about the same compute (wider-shallower, narrower-deeper);
* ``data``      -- scenes with only flat / only noise / only striped backgrounds, and
  FractalDB-style fractals on black (92 % of the canvas exactly black); only when the profile
  studies the scenes (``--data cifar10:DIR`` runs every other axis on those images);
* ``objective`` -- the small DINO of :mod:`regvit_lib.selfsup` (no labels; accuracy by k-NN),
  without and with 4 registers: DINOv2's objective, where the paper's artifacts are strongest;
* ``registers`` -- 4 registers, with [CLS] and with average pooling.

Norm ratios are taken over blocks 1 and up: block 0 reacts to the raw contrast of the input.
"""

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analysis import collect, top_token_placement
from .cache import Store, cached, code_version
from .config import ConfigError, FractalConfig, RunConfig, ScenesConfig, same_data
from .profiles import PROFILES, Profile, add_arguments, from_arguments, get_profile
from .data import labelled, make_source
from .scenes import background_patches
from .summaries import RATIO_BINS, studied_block
from .train import TRAIN_CODE, TrainedRun, run_store, train

__all__ = ["study_points", "run_study", "study_row", "study_table", "load_study", "stored_study", "study_for", "stored_elsewhere", "headline",
           "headline_texts", "COMPUTE_AXES", "STUDY_DIR", "main"]

# The axes along which only the compute (and the seed) changes: the study's compute axis.
COMPUTE_AXES = ("baseline", "compute", "seeds")
# The code a study row depends on: its run's and the summaries read from it.
_ROW_CODE = TRAIN_CODE + ("analysis.py", "emergence.py")
# Where the stored study results live (committed; see data/README.md).
STUDY_DIR = Path(__file__).resolve().parents[1] / "data" / "emergence"


def study_points(profile: Profile) -> list[tuple[str, str, RunConfig]]:
    """``(axis, label, run)`` for every point of the study at this profile's scale."""
    base = profile.run()
    m, t, d = base.model, base.train, profile.data

    def with_model(**kw: Any) -> RunConfig:
        return replace(base, model=replace(m, **kw))

    def with_train(**kw: Any) -> RunConfig:
        return replace(base, train=replace(t, **kw))

    def with_steps(f: float, seed: int) -> RunConfig:  # x1: the profile's own run, whose cache is shared
        steps = int(t.steps * f)
        every = max(1, steps // 6)
        scaled = with_train(steps=steps, warmup_steps=max(1, int(t.warmup_steps * f)), eval_every=every,
                            checkpoint_every=every)
        return replace(base if f == 1 else scaled, seed=seed)

    patch, wide, narrow = 2 * m.patch_size, int(m.embed_dim * 1.5), m.embed_dim // 2 + m.embed_dim // 4
    data_axis: list[tuple[str, str, RunConfig]] = []
    if isinstance(d, ScenesConfig):  # the data axis varies the scenes; on real images or fractals there is none
        frac = FractalConfig(img_size=d.img_size, num_classes=10, train_size=d.train_size, val_size=d.val_size,
                             test_size=d.test_size)
        data_axis = [*[("data", f"{bg} backgrounds only", replace(base, data=replace(d, backgrounds=(bg,))))
                       for bg in ("flat", "noise", "texture")],
                     ("data", "fractals on black", replace(base, data=frac, model=replace(m, num_classes=10)))]
    # DINO's learning rate is lower than the supervised one (DINO: 5e-4 per 256 images); at the
    # profile's supervised rate, 2e-3, the small DINO drifted towards uniform attention.
    dino = replace(t, objective="dino", lr=min(t.lr, 5e-4))
    return [
        ("baseline", "profile recipe", base),
        *[("compute", f"steps x{f:g}", with_steps(f, base.seed)) for f in (0.5, 2, 4)],
        # Two more seeds of the compute axis: is a trend a trend, or one seed's luck?
        *[("seeds", f"steps x{f:g}, seed {seed}", with_steps(f, seed))
          for seed in (base.seed + 1, base.seed + 2) for f in (1, 2, 4)],
        ("tokens", f"patch {patch} ({(m.img_size // patch) ** 2} tokens)", with_model(patch_size=patch)),
        ("pooling", "average pooling", with_model(global_pool="avg")),
        ("optimiser", "weight decay 0.3", with_train(weight_decay=0.3)),
        ("optimiser", "peak lr x2.5", with_train(lr=t.lr * 2.5)),
        ("shape", f"wider, shallower ({wide} x {m.depth // 2})", with_model(embed_dim=wide, depth=m.depth // 2 or 1)),
        ("shape", f"narrower, deeper ({narrow} x {m.depth * 2})",
         with_model(embed_dim=narrow, depth=m.depth * 2, num_heads=m.num_heads // 2 or 1)),
        *data_axis,
        ("objective", "DINO self-distillation", replace(base, model=replace(m, num_classes=0), train=dino)),
        ("objective", "DINO, 4 registers", replace(base, model=replace(m, num_classes=0, num_registers=4), train=dino)),
        ("registers", "4 registers", with_model(num_registers=4)),
        ("registers", "4 registers, average pooling", with_model(num_registers=4, global_pool="avg")),
    ]


def _share_above(hist: list[int], k: float) -> float:
    """Share of tokens whose norm is above ``k`` x their image's median (bin resolution)."""
    h = np.asarray(hist, dtype=float)
    return float(h[RATIO_BINS[:-1] >= np.log2(k) - 1e-9].sum() / max(h.sum(), 1.0))


def _record_summary(rec: dict[str, Any], k: float) -> dict[str, Any]:
    norms, sinks = rec["norms"], rec["sinks"]
    best = studied_block([layer["ratio_mean"] for layer in norms])
    layers = norms[1:] or norms  # blocks 1.. (block 0 reacts to input contrast)
    s = max(range(len(sinks)), key=lambda i: sinks[i]["mass"])
    return {**{key: rec[key] for key in ("step", "train_flops", "val_acc")}, "ratio_mean": norms[best]["ratio_mean"],
            "ratio_mean_layer": best, "ratio_max": max(layer["ratio_max"] for layer in layers),
            "outlier_share": max(_share_above(layer["hist"], k) for layer in layers), "sink_mass": sinks[s]["mass"],
            "sink_layer": s, "sink_kind": max(sinks[s]["kind"], key=sinks[s]["kind"].get),
            "sink_fixed": sinks[s]["fixed"],
            "reg_norm": max((layer["reg"] for layer in layers if layer["reg"] is not None), default=None)}


def placement(run: TrainedRun, layer: int, n_images: int = 256) -> dict[str, float]:
    """Where the largest-norm patch token of each image sits (threshold-free, Fig. 5a).

    Returns:
        ``top_on_background`` (share of images whose largest-norm patch token in ``layer`` lies
        on a background patch), ``background_patches`` (the base rate: share of all patches
        that are background; both NaN on photographs, which have no object labels),
        ``top_similarity`` / ``all_similarity`` (mean cosine similarity to the 4 neighbours after
        the patch embedding, of those tokens / of all patches).
    """
    data = run.config.data
    batch = labelled(data, "val", np.arange(min(n_images, make_source(data).split_size("val"))))
    feats = collect(run.model, batch.image, batch.label, attn=False)
    fg = batch.foreground  # the scenes' objects, the fractals' drawn pixels; photographs: none (NaN)
    return top_token_placement(feats, None if fg is None else background_patches(fg, run.config.model.patch_size),
                               layer)


def run_study(profile: Profile, root: Path | str | None = None, progress: bool = False, k: float = 4.0,
              axes: set[str] | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """Train or load every point of the study (or those of the given ``axes``); a row per point
    (:func:`study_row`). The runs not in the cache train first, in parallel
    (:func:`regvit_lib.prepare.train_all` with ``workers``)."""
    from .prepare import train_all

    points = [p for p in study_points(profile) if axes is None or p[0] in axes]
    t = time.perf_counter()
    fresh = {r["key"] for r in train_all([run for _, _, run in points], workers, root, progress) if not r["cached"]}
    print(f"trained {len(fresh)} runs in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rows = []
    for axis, label, run in points:
        trained = train(run, root=root, progress=False)
        r = study_row(axis, label, trained, k) | {"cached": trained.key not in fresh}
        rows.append(r)
        print(f"{axis:10s} {label:40s} ratio {r['final_ratio_mean']:.2f} sink {r['final_sink_mass']:.2f} "
              f"({r['final_sink_kind']}) acc {r['test_acc']:.3f} train {r['train_seconds']:.0f} s", file=sys.stderr)
    return rows


def study_row(axis: str, label: str, trained: TrainedRun, k: float) -> dict[str, Any]:
    """One point of the study from its trained run: its final evaluation (``final_*``), where its
    largest tokens sit (:func:`placement`) and the ``curve`` of those summaries over training."""
    final = _record_summary(trained.curves[-1], k)
    r: dict[str, Any] = {"axis": axis, "label": label, "key": trained.key[:24]}
    r |= {name: trained.metrics[name] for name in ("params", "train_flops", "test_acc", "train_seconds", "device")}
    r |= {f"final_{a}": b for a, b in final.items()} | placement(trained, final["ratio_mean_layer"])
    r["curve"] = [_record_summary(rec, k) for rec in trained.curves]
    return r


def study_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The study as a table of snake_case records: one per run, the final evaluation's numbers."""
    return pd.DataFrame([
        {"axis": r["axis"], "run": r["label"], "params_m": r["params"] / 1e6, "train_pflops": r["train_flops"] / 1e15,
         "test_acc": r["test_acc"], "ratio_mean": r["final_ratio_mean"], "ratio_max": r["final_ratio_max"],
         "outlier_share": r["final_outlier_share"], "sink_mass": r["final_sink_mass"], "sink_on": r["final_sink_kind"],
         "sink_fixed": r["final_sink_fixed"], "top_on_background": r["top_on_background"],
         "background_patches": r["background_patches"]} for r in rows])


def load_study(path: Path | str) -> dict[str, Any]:
    """A study file written by :func:`main` (``data/emergence/<profile>.json``)."""
    return json.loads(Path(path).read_text())


def stored_study(profile: str, folder: Path | str = STUDY_DIR, root: Path | str | None = None,
                 data: str | None = None) -> tuple[dict[str, Any], Path]:
    """The stored study of ``profile``, or of ``cpu`` when there is none for it (e.g. ``smoke``), with
    every row whose run is in this build's cache (the same key: configuration and code) rebuilt
    from that run, so that a chapter never shows two numbers for one run: training on another
    machine gives other numbers (floating-point order), and the run trained here is the one the
    other chapters show.

    Args:
        data: the data option the study must have been made on (``Profile.data_spec``); a file made
            on other images (another ``folder``: every folder's profile is ``<profile>-folder``) is
            not this study. ``None``: any.

    Returns:
        The document and the file it came from; the document's ``"profile"`` says which scale
        the numbers belong to, ``"command"`` how they were made, and ``"replaced"`` lists the
        labels of the rows rebuilt from this build's runs (each such row has ``"source": "this
        build"``, the others ``"stored"``).
    """
    folder = Path(folder)
    base, _, label = profile.partition("-")  # "cpu-cifar10": cpu's model and recipe on other images
    fallback = () if label else (folder / "cpu.json",)  # the scenes' study stands in only for scenes
    for path in (folder / f"{profile}.json", *fallback):
        if path.is_file():
            doc = load_study(path)
            if data is None or same_data(doc.get("data", "scenes"), data):
                break
    else:
        how = f" --data {data or (label if label == 'fractals' else label + ':DIR')}" if label else ""
        raise FileNotFoundError(f"no stored study of {profile!r}{f' on {data}' if data else ''} in {folder}; run: "
                                f"python -m regvit_lib.emergence --profile {base}{how}")
    try:  # the study's own profile and data ("cpu-cifar10" is cpu on cifar10:DIR)
        made = get_profile(doc["profile"].split("-", 1)[0], doc.get("data"))
        runs = {label: run for _, label, run in study_points(made)}
    except FileNotFoundError:  # its images are not on this machine: every row is shown as stored
        runs = {}
    rows, replaced = [], []
    for r in doc["rows"]:
        store = run_store(runs[r["label"]], root) if r["label"] in runs else None
        if store is not None and store.key[:24] == r["key"] and store.result_path.is_file():
            run, axis, label = runs[r["label"]], r["axis"], r["label"]
            rebuilt = cached("study-row", dict(run=run, axis=axis, label=label, k=doc["k"]), _ROW_CODE,
                             lambda: study_row(axis, label, train(run, root=root, progress=False), doc["k"]), root)
            r = {**r, **rebuilt, "source": "this build"}
            replaced.append(r["label"])
        rows.append({"source": "stored", **r})
    return {**doc, "rows": rows, "replaced": replaced}, path


def stored_elsewhere(folder: Path | str, shown: str) -> list[tuple[dict[str, Any], Path]]:
    """Every result file stored in ``folder`` (``<profile>.json``) but the one of profile ``shown``: what
    readers with more hardware or other images committed (``gpu.json``, ``colab.json``,
    ``cpu-cifar10.json``), each read as stored, in name order. A file that is not valid JSON is named
    in the error, not skipped."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a readable result file ({e}); remake it with its command") from e
        if doc.get("profile") != shown:
            out.append((doc, path))
    return out


def study_for(profile: Profile, rerun: bool = False, folder: Path | str = STUDY_DIR,
              root: Path | str | None = None) -> tuple[dict[str, Any], str]:
    """What chapter 4 shows: the stored study of ``profile`` (:func:`stored_study`), or the study run
    now (through the cache) when ``rerun`` or when none is stored for its data (a profile made on
    real images: :meth:`~regvit_lib.profiles.Profile.with_data`).

    Returns:
        The document (``profile``, ``command``, ``rows``; ``replaced`` when stored) and a sentence
        saying where it came from.
    """
    if not rerun:
        try:
            doc, path = stored_study(profile.name, folder, root, profile.data_spec)
            return doc, f"{path.name} in {Path(folder).name}/, {len(doc['replaced'])} rows from this build's own runs"
        except FileNotFoundError:
            if profile.name in PROFILES:  # a stored study belongs to every scenes profile: a lost file is an error
                raise
    rows = run_study(profile, root)
    return ({"profile": profile.name, "data": profile.data_spec, "command": "emergence.run_study in this build",
             "rows": rows, "replaced": []}, "this build (run now, through the cache: none was stored for its data)"
            if not rerun else "this build (rerun_study=True)")


def headline(rows: list[dict[str, Any]], paper_ratio: float = 10.0, sink_level: float = 0.5) -> dict[str, Any]:
    """The numbers a reader wants from the study, computed from its rows.

    Returns:
        ``best_ratio`` (largest final max/median ratio, mean over images) with its ``run`` and
        ``layer``; ``best_ratio_any`` (over single images); ``best_share`` (largest outlier
        share) with ``share_run`` and where that run's largest tokens sit
        (``share_on_background`` against ``share_background_patches``); ``best_sink`` (largest
        sink mass) with ``sink_run``, ``sink_kind``, ``sink_fixed``; ``max_flops``; where the best run's
        largest tokens sit
        (``top_on_background`` against the base rate ``background_patches``, ``top_similarity``
        against ``all_similarity``) and ``max_top_on_background`` over all runs (in run
        ``max_top_run``, whose ratio is ``max_top_ratio``); and from the compute axis (with its
        other seeds) ``slope`` (ratio gained per 10x compute) and its standard error
        ``slope_se`` (``None`` below 3 points),
        ``flops_to_paper`` (the compute at which a straight line in log compute would reach
        ``paper_ratio``; ``None`` if the ratio does not grow), and ``by_compute``: per compute,
        the seeds' mean and standard deviation of the ratio, ``seed_sd`` the largest of those
        deviations (``None`` with one seed); ``sink_onset``: the fewest training FLOPs at which
        any compute run's strongest sink took at least ``sink_level`` of the attention (``None``
        if none did), with ``sink_onset_step``.
    """
    best, sink, most, on_bg = (max(rows, key=itemgetter(col)) for col in
                               ("final_ratio_mean", "final_sink_mass", "final_outlier_share", "top_on_background"))
    comp = sorted((r for r in rows if r["axis"] in COMPUTE_AXES), key=itemgetter("train_flops"))
    flops = np.array([r["train_flops"] for r in comp])
    x, y = np.log10(flops), np.array([r["final_ratio_mean"] for r in comp])
    slope, icpt = np.polyfit(x, y, 1) if len(set(x)) >= 2 else (0.0, float(y.mean()) if len(y) else 0.0)
    resid = y - (slope * x + icpt)  # the slope's standard error (ordinary least squares), from 3 points up:
    slope_se = (float(np.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean()))))
                if len(set(x)) >= 2 and len(x) >= 3 else None)
    by_compute = [{"train_flops": f, "seeds": int(len(v)), "ratio_mean": float(np.mean(v)),
                   "ratio_sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}
                  for f in sorted({r["train_flops"] for r in comp}) for v in [y[flops == f]]]
    sds = [c["ratio_sd"] for c in by_compute if c["ratio_sd"] is not None]
    sunk = [p for r in comp for p in r["curve"] if p["sink_mass"] >= sink_level] if comp and "curve" in comp[0] else []
    onset = min(sunk, key=itemgetter("train_flops")) if sunk else None
    return {"best_ratio": best["final_ratio_mean"], "run": best["label"], "layer": best["final_ratio_mean_layer"],
            "best_ratio_any": max(r["final_ratio_max"] for r in rows), "best_share": most["final_outlier_share"],
            "share_run": most["label"], "share_on_background": most["top_on_background"],
            "share_background_patches": most["background_patches"], "best_sink": sink["final_sink_mass"],
            "sink_run": sink["label"], "sink_kind": sink["final_sink_kind"], "sink_fixed": sink["final_sink_fixed"],
            "max_flops": max(r["train_flops"] for r in rows), "top_on_background": best["top_on_background"],
            "background_patches": best["background_patches"], "top_similarity": best["top_similarity"],
            "all_similarity": best["all_similarity"], "max_top_on_background": on_bg["top_on_background"],
            "max_top_run": on_bg["label"], "max_top_ratio": on_bg["final_ratio_mean"], "slope": float(slope),
            "slope_se": slope_se,
            "flops_to_paper": float(10 ** ((paper_ratio - icpt) / slope)) if slope > 1e-6 else None,
            "by_compute": by_compute, "seed_sd": max(sds) if sds else None,
            "sink_onset": None if onset is None else onset["train_flops"],
            "sink_onset_step": None if onset is None else onset["step"]}


_NO_MASKS = "not measured where they sit: these images have no object labels"


def headline_texts(h: dict[str, Any], k: float = 4.0) -> dict[str, str]:
    """The study's numbers as the chapter prints them (name -> text), from :func:`headline`."""
    verdict = "No run develops high-norm outliers."
    if not (h["best_share"] == 0 and h["best_ratio"] < k):
        on_background = h["share_on_background"] > h["share_background_patches"]
        where = (_NO_MASKS if math.isnan(h["share_on_background"]) else
                 "on background, where the paper's outliers sit" if on_background
                 else "but its largest tokens lie on objects, not on the redundant background where the paper's "
                      "outliers sit")
        verdict = (f"The most tokens above {k:g} times their image's median are in {h['share_run']}: "
                   f"{100 * h['best_share']:.2f} % of its patch tokens, {where}.")
    extrapolation = "never: the ratio does not grow with compute"
    if h["flops_to_paper"] is not None:
        extrapolation = f"at {h['flops_to_paper']:.0e} training FLOPs"
        if h["slope_se"] is not None and h["slope"] < 2 * h["slope_se"]:
            extrapolation += (f", a number that means little: the slope, {h['slope']:+.2f} per tenfold compute, is "
                              f"within two standard errors ({h['slope_se']:.2f} each) of zero")
    return {"best_ratio": f"{h['best_ratio']:.2f}", "best_run": h["run"], "best_layer": str(h["layer"]),
            "best_ratio_any": f"{h['best_ratio_any']:.2f}", "best_share": f"{100 * h['best_share']:.2f}",
            "best_sink": f"{h['best_sink']:.2f}", "sink_run": h["sink_run"], "sink_kind": h["sink_kind"],
            "sink_fixed": f"{100 * h['sink_fixed']:.0f}", "max_flops": f"{h['max_flops']:.1e}",
            "slope": f"{h['slope']:+.2f}", "k": f"{k:g}", "top_bg": f"{100 * h['top_on_background']:.0f}",
            "base_bg": f"{100 * h['background_patches']:.0f}", "top_sim": f"{h['top_similarity']:.2f}",
            "all_sim": f"{h['all_similarity']:.2f}", "max_top_bg": f"{100 * h['max_top_on_background']:.0f}",
            "placement": _NO_MASKS if math.isnan(h["top_on_background"]) else
                         "objects, the non-redundant patches; the paper's outliers sit on redundant background"
                         if h["top_on_background"] < h["background_patches"] else
                         "background, more often than chance: where the paper's outliers sit",
            "verdict": verdict, "slope_se": "n/a" if h["slope_se"] is None else f"{h['slope_se']:.2f}",
            "max_top_run": h["max_top_run"], "max_top_ratio": f"{h['max_top_ratio']:.2f}",
            "max_top_kind": "a background token that stands out a little, not an outlier" if h["max_top_ratio"] < k
                            else "an outlier on background, as in the paper",
            "seed_sd": "n/a (one seed)" if h["seed_sd"] is None else f"{h['seed_sd']:.2f}",
            "sink_onset": "never" if h["sink_onset"] is None else f"{h['sink_onset']:.1e}",
            "sink_onset_step": str(h["sink_onset_step"]), "extrapolation": extrapolation}


def git_commit() -> str | None:
    """The checkout's commit, if the library runs from a git checkout (for the record)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    except OSError:
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap, "cpu")
    ap.add_argument("--out", default="data/emergence", help="folder for <profile>.json")
    ap.add_argument("--k", type=float, default=4.0, help="outlier rule: k x the image's median norm")
    ap.add_argument("--workers", type=int, default=None, help="parallel training processes (default: one per core)")
    ap.add_argument("--axes", nargs="+", default=None, help="only these axes (default: all); with an "
                    "existing file, its rows of these axes are replaced and the others kept")
    args = ap.parse_args(argv)
    prof = from_arguments(ap, args)
    points = study_points(prof)
    known, axes = {a for a, _, _ in points}, None if args.axes is None else set(args.axes)
    if axes is not None and not axes <= known:
        ap.error(f"unknown axes {sorted(axes - known)}; known: {sorted(known)}")
    from .prepare import train_together

    if not train_together([run for a, _, run in points if axes is None or a in axes]):
        return  # torchrun: the other processes helped train; rank 0 measures and writes
    command = "python -m regvit_lib.emergence " + " ".join(argv if argv is not None else sys.argv[1:])
    stamp = {"code": code_version(TRAIN_CODE), "commit": git_commit(), "command": command}
    rows = [{**r, **stamp} for r in run_study(prof, k=args.k, axes=axes, workers=args.workers, progress=True)]
    path = Path(args.out) / f"{prof.name}.json"
    if axes is not None and path.is_file():  # keep the other axes' rows, each with its own stamp
        old = load_study(path)
        if old.get("k") != args.k:
            ap.error(f"{path} was made with k={old.get('k')}, not {args.k}; re-run all axes")
        kept = [{**{key: old.get(key) for key in stamp}, **r} for r in old["rows"] if r["axis"] not in axes]
        order = [label for _, label, _ in points]  # study order; unknown labels last
        rows = sorted(kept + rows, key=lambda r: order.index(r["label"]) if r["label"] in order else len(order))
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": command, "profile": prof.name, "data": prof.data_spec, "k": args.k, **stamp, "rows": rows,
           "code_versions": sorted({r["code"] for r in rows})}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
