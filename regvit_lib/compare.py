"""Chapter 5: registers among the methods around them, on the same scenes with the same budget.

Every method is a variant of the profile's ViT (:mod:`regvit_lib.variants`, :mod:`regvit_lib.mamba`,
the attention kinds of :class:`~regvit_lib.model.Attention`), trained by the same loop with the same
recipe and seeds, cached like every run. Each trained run is then measured on the same validation
scenes (:func:`measure_run`, cached): parameters, forward FLOPs, test accuracy, linear-probe
segmentation and depth from the patch tokens, LOST object discovery, outliers (the book's rule) and
the strongest attention sink; throughput is timed with the models taking turns in one process
(:func:`throughput`). Test-time registers (:mod:`regvit_lib.testtime`) are tried on every run that
has attention and an MLP: a row where outliers exist, "not applicable" with the measured ratio where
none does.

``python -m regvit_lib.compare --profile cpu --out data/comparisons`` writes ``<profile>.json``, each
row stamped with its command, commit and code version; chapter 5 reads that file (:func:`load_or_run`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .analysis import OUTLIER_K, Features, collect, detect_outliers, lost_keys, peak_layer, tokens_at
from .cache import cached, code_version
from .config import HMHSA, AViT, ConfigError, Mamba, Memory, ModelConfig, RunConfig, TokenLearner, Victor, same_data
from .data import labelled, make_source, normalize
from .flops import count_flops
from .model import Block, Encoder, RegViT, count_parameters
from .probes import corloc, dense_probes, lost
from .profiles import Profile, add_arguments, from_arguments, get_profile
from .train import TRAIN_CODE, TrainedRun, run_code, train

__all__ = ["Method", "METHODS", "check_methods", "method_run", "comparison_runs", "measure_run", "throughput",
           "run_comparison", "method_table", "against_vit",
           "pretrained_test_time_registers", "load_or_run", "COMPARE_DIR", "SINK_MIN", "main"]

COMPARE_DIR = Path(__file__).resolve().parent.parent / "data" / "comparisons"
SINK_MIN = 0.25  # a head sending at least this share of its patch queries' attention to one slot has a sink
_MEASURE_CODE = ("analysis.py", "probes.py", "compare.py", "testtime.py", "flops.py")
# The code a stored comparison file depends on: its stamp, checked when the file is read.
_STAMP_CODE = TRAIN_CODE + ("variants.py", "mamba.py", "profiles.py", "timing.py") + _MEASURE_CODE


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a label, what kind of method it is, and how it changes the ViT."""

    label: str
    family: str  # "reference", "extra tokens", "fewer tokens", "adaptive depth", "state space", "sink-free", ...
    change: Callable[[ModelConfig], dict[str, Any]]  # ModelConfig fields to replace
    note: str = ""  # what was left out of the original


def _grid_half(cfg: ModelConfig) -> int:
    return max(1, cfg.grid_size // 2)


METHODS: dict[str, Method] = {
    "vit": Method("ViT", "reference", lambda c: {}),
    "registers": Method("ViT + 4 registers", "reference", lambda c: {"num_registers": 4}),
    "memory": Method("Memory tokens (4)", "extra tokens", lambda c: {"num_registers": 4, "variant": Memory()},
                     "head reads the mean of [CLS] and the memory tokens"),
    "tokenlearner": Method(
        "TokenLearner (S=8)", "fewer tokens",
        lambda c: {"class_token": False, "global_pool": "avg",
                   "variant": TokenLearner(tokens=min(8, c.num_patches - 1), block=c.depth // 2)},
        "v1.1 maps; dense probes read the last block with patches (half depth)"),
    "tokenlearner-fuser": Method(
        "TokenLearner + TokenFuser", "fewer tokens",
        lambda c: {"class_token": False, "global_pool": "avg",
                   "variant": TokenLearner(tokens=min(8, c.num_patches - 1), block=c.depth // 2, fuser=True)}),
    "avit": Method("A-ViT", "adaptive depth", lambda c: {"variant": AViT()},
                   "trained from scratch (A-ViT fine-tunes DeiT); prior: a plain Gaussian at 2/3 depth"),
    "vim": Method("Vim (middle [CLS])", "state space", lambda c: {"variant": Mamba()},
                  "pure-PyTorch scan, not the fused kernel; RMSNorm, no drop-path"),
    "mamba-r": Method("Mamba-R (4 registers)", "state space",
                      lambda c: {"class_token": False, "num_registers": 4, "global_pool": "avg", "variant": Mamba()},
                      "pure-PyTorch scan; head on all registers, no D/r reduction"),
    "off-by-one": Method("Softmax-off-by-one", "sink-free attention", lambda c: {"attention": "off_by_one"}),
    "kv-bias": Method("Key/value bias", "sink-free attention", lambda c: {"attention": "kv_bias"}),
    "gated": Method("Gated attention (head-wise)", "sink-free attention", lambda c: {"attention": "gated"}),
    "victor": Method("Victor-style (4 registers)", "fewer tokens",
                     lambda c: {"num_registers": 4, "variant": Victor(block=max(1, c.depth // 3))},
                     "moved from a VLM to a ViT; dense probes read the patches at the drop"),
    "hmhsa": Method("H-MHSA", "efficient attention",
                    lambda c: {"class_token": False, "global_pool": "avg",
                               "variant": HMHSA(window=_grid_half(c), pool=_grid_half(c))},
                    "single scale on ViT tokens: no conv MLP, no pyramid"),
}


def check_methods(names: Sequence[str] | None) -> list[str]:
    """The method names to run, in table order; an unknown name raises ``ValueError`` listing the known ones."""
    if names is None:
        return list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known methods: {list(METHODS)}")
    return [n for n in METHODS if n in names]


def method_run(profile: Profile, method: str, seed: int) -> RunConfig:
    """The profile's run with the ViT changed into ``method`` (validated: a bad setting raises ``ConfigError``)."""
    check_methods([method])
    return profile.run(seed=seed, **METHODS[method].change(profile.model))


def comparison_runs(profile: Profile, methods: Sequence[str] | None = None, seeds: int | None = None) -> list[RunConfig]:
    """Every run of the comparison: each method at the first ``seeds`` training seeds (default: the
    profile's seeds, so the ViT and register rows are the runs chapters 2 to 4 trained)."""
    seeds = profile.seeds if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ValueError(f"seeds must be an int >= 2 (a spread needs two), got {seeds!r}")
    return [method_run(profile, m, s) for m in check_methods(methods) for s in range(profile.seed, profile.seed + seeds)]


# --- measuring one trained run -------------------------------------------------------------------


def _sink(feats: Features) -> tuple[float, str, int | None]:
    """The strongest sink over the blocks that attend over the patches: ``(mass, holder, block)``.

    Per block and head, the patch queries' mean attention per key, plus the weight left for the
    "nothing" slot of softmax-off-by-one / the key-value bias (1 minus the row sum); the largest
    slot is the head's sink. Holder: ``cls``, ``register``, ``patch``, ``bias`` or ``none`` (below
    :data:`SINK_MIN`); ``n/a`` for a model without attention maps.
    """
    if feats.received is None or feats.received.shape[1] == 0:
        return math.nan, "n/a", None
    rec = feats.received  # (B, L, H, T)
    slots = torch.cat([rec, (1 - rec.sum(-1, keepdim=True)).clamp_min(0)], dim=-1)  # (B, L, H, T + 1)
    mass, where = slots.max(dim=-1)  # (B, L, H)
    per_block_head = mass.mean(0)  # (L, H)
    flat = int(per_block_head.argmax())
    block, head = divmod(flat, per_block_head.shape[1])
    m = float(per_block_head[block, head])
    key = int(torch.mode(where[:, block, head]).values)
    c, P, T = int(feats.cfg.class_token), feats.cfg.num_prefix_tokens, rec.shape[-1]
    holder = "bias" if key == T else "cls" if key < c else "register" if key < P else "patch"
    return m, holder if m >= SINK_MIN else "none", block


def _discovery_keys(model: Encoder, feats: Features) -> tuple[Tensor, str]:
    """LOST's features: the attention keys of the last block that attends over the patches, or the final
    patch tokens for a model without such keys (Vim, Mamba-R, H-MHSA)."""
    if isinstance(model, RegViT) and feats.received is not None and feats.received.shape[1]:
        block = feats.received.shape[1] - 1
        if isinstance(model.blocks[block], Block) and not model.blocks[block].attn.__class__.__name__.startswith("HM"):
            return lost_keys(model, feats, block), f"keys of block {block}"
    return tokens_at(feats, "final")["patch"], "final patch tokens"


def _avit_cost(model: Encoder, images: Tensor) -> dict[str, float]:
    """A-ViT with halted tokens removed: counted forward FLOPs per image and the mean depth a token ran."""
    from .variants import AViT as AViTModel

    assert isinstance(model, AViTModel)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flops = []
    dev = next(model.parameters()).device
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # the math path: the counter sees attention's matmuls
        for img in normalize(images.to(dev)):
            with FlopCounterMode(display=False) as counter:
                model.forward_dropped(img[None])
            flops.append(counter.get_total_flops())
        depth = model.forward_features(normalize(images.to(dev)))["depth"].float()
    return {"gflops": float(np.mean(flops)) / 1e9, "expected_depth": float(depth.mean()),
            "patch_depth": float(depth[:, model.num_prefix_tokens:].mean())}


def _summary_map(model: Encoder, feats: Features, images: int) -> tuple[list[Any], str]:
    """The picture of the small multiples: the last patch-attending block's attention of the summary token
    ([CLS], else the mean over queries), TokenLearner's mean map, or the patch-norm map without attention."""
    g = feats.grid
    P = feats.cfg.num_prefix_tokens
    if feats.attn is not None and feats.attn.shape[1]:
        a = feats.attn[:images, -1].mean(1)  # (b, T, T), mean over heads
        rows = a[:, 0, P:] if feats.cfg.class_token else a[:, P:, P:].mean(1)
        what = "[CLS] attention" if feats.cfg.class_token else "mean attention to each patch"
        return rows.reshape(-1, g, g).tolist(), what
    return feats.norms[:images, -1, P:].reshape(-1, g, g).tolist(), "patch-token norm (no attention map)"


def measure_run(run: RunConfig, images: int = 400, k: float = OUTLIER_K, maps: int = 3) -> dict[str, Any]:
    """Everything the table reads of one trained run (trained or loaded through the cache), cached.

    Args:
        images: validation scenes measured (the same for every run of a profile).
        k: the outlier rule (a patch token above ``k`` x its image's median norm).
        maps: images whose summary-token map is kept for the small multiples.
    """
    config = dict(run=run, images=images, k=k, maps=maps)
    return cached("compare-row", config, run_code(run.model) + _MEASURE_CODE,
                  lambda: _measure(train(run, progress=False), images, k, maps))


def _measure(done: TrainedRun, images: int, k: float, maps: int) -> dict[str, Any]:
    from .testtime import NoOutliers, find_register_neurons

    run, model = done.config, done.model
    data = run.data
    scenes = labelled(data, "val", np.arange(min(images, make_source(data).split_size("val"))))
    feats = collect(model, scenes.image, scenes.label, attn=True, batch_size=50)
    layer = peak_layer(feats)
    out = detect_outliers(feats, layer, k)
    dense = dense_probes(feats, scenes.seg, scenes.depth, scenes.seg_classes, seed=run.seed)
    keys, lost_on = _discovery_keys(model, feats)
    boxes = lost(keys, feats.grid, run.model.patch_size)
    located = math.nan if scenes.boxes is None or scenes.box_valid is None else \
        corloc(boxes, scenes.boxes, scenes.box_valid)  # NaN: no boxes in these images, "no labels"
    mass, holder, sink_block = _sink(feats)
    picture, what = _summary_map(model, feats, maps)
    row: dict[str, Any] = {
        "key": done.key, "seed": run.seed, "params": count_parameters(model), "gflops": count_flops(run.model) / 1e9,
        "test_acc": done.metrics["test_acc"], "segmentation_miou": dense.segmentation_miou,
        "depth_rmse": dense.depth_rmse, "corloc": located, "lost_on": lost_on,
        "outlier_share": out.share, "ratio_mean": float(out.ratio.amax(-1).mean()), "outlier_block": layer,
        "blocks_with_patches": int(feats.norms.shape[1]), "sink_mass": mass, "sink_on": holder,
        "sink_block": sink_block, "map": picture, "map_of": what, "train_seconds": done.metrics["train_seconds"],
    }
    if isinstance(run.model.variant, AViT):
        row |= _avit_cost(model, scenes.image[:32])
    ttr: dict[str, Any] = {"applicable": False, "why": "no MLP neurons to move (not a ViT with attention)"}
    if type(model) is RegViT:
        try:
            found = find_register_neurons(model, scenes.image[:200], k=k)
            ttr = {"applicable": True, "neurons": [list(n) for n in found.neurons], **_with_ttr(model, found, scenes, k)}
        except NoOutliers as e:
            ttr = {"applicable": False, "why": str(e)}
    row["test_time_registers"] = ttr
    return row


def _with_ttr(model: RegViT, found: Any, scenes: Any, k: float, images: int | None = None) -> dict[str, Any]:
    """The outlier and sink columns of ``model`` with test-time registers in its pass (the first ``images``),
    at the block where the outliers were detected without them."""
    from .testtime import test_time_registers

    with test_time_registers(model, found):
        feats = collect(model, scenes.image[:images], attn="received", batch_size=50)
    out = detect_outliers(feats, found.detect_block, k)
    mass, holder, _ = _sink(feats)
    return {"outlier_share": out.share, "ratio_mean": float(out.ratio.amax(-1).mean()), "sink_mass": mass,
            "sink_on": holder}


def pretrained_test_time_registers(profile: Profile, choice: bool | str = True, images: int = 64,
                                   k: float = OUTLIER_K) -> tuple[pd.DataFrame, str]:
    """Test-time registers on the profile's pretrained models without registers (DINOv2, DeiT-III),
    where their weights can be had: per model, the outliers and sink without and with the test-time
    register, or ``not applicable`` with the measured ratio. Cached per model, scenes and rule.

    Returns:
        The rows, and ``""`` or the sentence saying why the pretrained models were skipped.
    """
    from .measure import pretrained_subjects
    from .profiles import has_registers
    from .testtime import NoOutliers, find_register_neurons

    subjects, note = pretrained_subjects(profile, choice)
    rows = []
    for s in subjects:
        if has_registers(s.name):
            continue

        def compute(s: Any = s) -> dict[str, Any]:
            n = min(images, len(s.batch))
            before = detect_outliers(s.feats, s.layer, k)  # every image of the subject
            row: dict[str, Any] = {"model": s.name, "images": n, "outliers_before": before.share,
                                   "ratio_before": float(before.ratio.amax(-1).mean())}
            try:
                found = find_register_neurons(s.model, s.batch.image[:n], k=k)
            except NoOutliers as e:
                return row | {"test-time registers": f"not applicable: {e}"}
            after = _with_ttr(s.model, found, s.batch, k, n)
            return row | {"test-time registers": f"applied: {len(found.neurons)} neurons, detected at block "
                                                  f"{found.detect_block}", "outliers_after": after["outlier_share"],
                          "ratio_after": after["ratio_mean"]}
        rows.append(cached("ttr-pretrained", dict(subject=s.key, images=images, k=k), _MEASURE_CODE, compute))
    return pd.DataFrame(rows), note


# --- speed ----------------------------------------------------------------------------------------


def throughput(models: dict[str, Encoder], images: Tensor, batch: int = 64, rounds: int = 5,
               single: int = 16) -> dict[str, dict[str, float]]:
    """Forward images per second of each model, the models taking turns in this process (same threads,
    same moment): at ``batch`` images, and one image at a time over ``single`` images (A-ViT with its
    halted tokens removed, the only way it saves compute). ``images``: the scenes to time on (A-ViT's
    halting depends on the image), in [0, 1]; the first ``batch`` are used."""
    from .timing import alternate
    from .variants import AViT as AViTModel

    dev = next(next(iter(models.values())).parameters()).device
    x = images[:batch].to(dev)
    ones = normalize(x[:single])

    def batched(m: Encoder) -> Callable[[], object]:
        return lambda: m(normalize(x))

    def one_by_one(m: Encoder) -> Callable[[], object]:
        step = m.forward_dropped if isinstance(m, AViTModel) else m
        return lambda: [step(img[None]) for img in ones]

    with torch.no_grad():
        fns = [batched(m) for m in models.values()]
        big = alternate(fns, rounds, dev)
        small = alternate([one_by_one(m) for m in models.values()], rounds, dev)
    return {name: {"img_s": batch / float(np.median(b)), "img_s_batch1": single / float(np.median(s))}
            for name, b, s in zip(models, big, small)}


# --- the whole comparison -------------------------------------------------------------------------


def run_comparison(profile: Profile, methods: Sequence[str] | None = None, seeds: int | None = None, images: int = 400,
                   k: float = OUTLIER_K, workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (in parallel, through the cache) and measure every method; time them taking turns.

    Returns:
        ``rows`` (one per method and seed), ``speed`` (per method), ``device``, ``threads``, ``seconds``.
    """
    from .prepare import train_all

    t0 = time.perf_counter()
    names = check_methods(methods)
    runs = comparison_runs(profile, names, seeds)
    seeds = len(runs) // len(names)
    images = min(images, make_source(profile.data).split_size("val"))
    train_all(runs, workers=workers, progress=progress)
    rows = []
    for i, (name, run) in enumerate(zip([n for n in names for _ in range(seeds)], runs)):
        if progress:
            print(f"measuring {name} seed {run.seed} ({i + 1} of {len(runs)})", file=sys.stderr, flush=True)
        rows.append({"method": name, "label": METHODS[name].label, "family": METHODS[name].family,
                     **measure_run(run, images, k)})
    first = {name: train(run, progress=False).model for name, run in zip(names, runs[::seeds])}
    speed = throughput(first, make_source(profile.data).batch("val", np.arange(min(64, images)))[0])
    return {"profile": profile.name, "data": profile.data_spec, "seeds": seeds, "images": images, "k": k, "rows": rows, "speed": speed,
            "device": str(next(first[names[0]].parameters()).device), "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0,
            "notes": {n: METHODS[n].note for n in names}}


def _pm(values: Sequence[float], digits: int) -> str:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return "n/a"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def method_table(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per method (mean ± sd over seeds), in table order, plus one row per model where
    test-time registers apply (and a row saying where they do not)."""
    rows = pd.DataFrame(doc["rows"])
    out = []
    for name, g in rows.groupby("method", sort=False):
        sp = doc["speed"].get(name, {})
        avit = "expected_depth" in g and g["expected_depth"].notna().any()
        holders = g["sink_on"].value_counts()
        out.append({
            "method": g["label"].iloc[0], "family": g["family"].iloc[0], "seeds": len(g),
            "params (k)": f"{g['params'].iloc[0] / 1e3:.0f}",
            "GFLOPs": _pm(g["gflops"], 4) + (" (at its depth)" if avit else ""),
            "img/s": f"{sp.get('img_s', math.nan):.0f}", "img/s, batch 1": f"{sp.get('img_s_batch1', math.nan):.0f}",
            "test acc": _pm(g["test_acc"], 3), "seg mIoU": _pm(g["segmentation_miou"], 3),
            "depth RMSE": _pm(g["depth_rmse"], 3), "LOST CorLoc": _pm(g["corloc"], 3),
            "outliers (%)": _pm(100 * g["outlier_share"], 2), "max/median": _pm(g["ratio_mean"], 2),
            "sink mass": _pm(g["sink_mass"], 2),
            "sink on": "/".join(f"{h}" + (f" ({n})" if len(holders) > 1 else "") for h, n in holders.items()),
            "depth run": _pm(g["expected_depth"], 2) if avit else "",
        })
    ttr = [(r["label"], r["seed"], r["test_time_registers"]) for r in doc["rows"]]
    applied = [(label, t) for label, _, t in ttr if t.get("applicable")]
    if applied:
        for label in dict.fromkeys(label for label, _ in applied):
            ts = [t for lab, t in applied if lab == label]
            out.append({"method": f"Test-time registers on {label}", "family": "no retraining", "seeds": len(ts),
                        "outliers (%)": _pm([100 * t["outlier_share"] for t in ts], 2),
                        "max/median": _pm([t["ratio_mean"] for t in ts], 2),
                        "sink mass": _pm([t["sink_mass"] for t in ts], 2), "sink on": ts[0]["sink_on"]})
    none = [r for r in doc["rows"] if not r["test_time_registers"]["applicable"]
            and r["test_time_registers"].get("why", "").startswith("no outliers")]
    if none:
        out.append({"method": "Test-time registers", "family": "no retraining", "seeds": len(none),
                    "max/median": f"≤ {max(r['ratio_mean'] for r in none):.2f}",
                    "sink on": f"not applicable: no outliers in {len(none)} runs of "
                               f"{len(dict.fromkeys(r['label'] for r in none))} models"})
    return pd.DataFrame(out).fillna("")


# Columns :func:`against_vit` compares, and which way is better.
_COMPARED = {"test_acc": ("test accuracy", True), "segmentation_miou": ("segmentation mIoU", True),
             "depth_rmse": ("depth RMSE", False), "corloc": ("LOST CorLoc", True),
             "sink_mass": ("sink mass", False), "ratio_mean": ("max/median norm", False)}


def against_vit(doc: dict[str, Any], reference: str = "vit") -> pd.DataFrame:
    """Each method against the plain ViT, per column: ``better`` / ``worse`` when the difference of the
    seed means exceeds the sum of the seeds' standard deviations (:func:`regvit_lib.claims.above`),
    else ``within spread``; ``n/a`` where the method has nothing to measure, and for the artifact
    columns of a method that drops its patches early (its maximum over fewer, earlier blocks is not
    comparable with the ViT's over all of them)."""
    from .claims import above

    rows = pd.DataFrame(doc["rows"])
    ref = rows[rows["method"] == reference]
    if ref.empty:
        raise ValueError(f"the comparison has no {reference!r} rows to compare against")
    out = []
    for name, g in rows[rows["method"] != reference].groupby("method", sort=False):
        rec: dict[str, Any] = {"method": g["label"].iloc[0]}
        for col, (label, higher_is_better) in _COMPARED.items():
            a, b = [float(v) for v in g[col]], [float(v) for v in ref[col]]
            early = col in ("sink_mass", "ratio_mean") and g["blocks_with_patches"].min() < ref["blocks_with_patches"].max()
            if all(math.isnan(v) for v in a) or early:
                rec[label] = "n/a"
            elif above(a, b):
                rec[label] = "better" if higher_is_better else "worse"
            elif above(b, a):
                rec[label] = "worse" if higher_is_better else "better"
            else:
                rec[label] = "within spread"
        out.append(rec)
    frame = pd.DataFrame(out)
    # sink mass and norm ratio: "better" means lower, i.e. less of an artifact
    return frame.rename(columns={"sink mass": "sink mass (lower)", "max/median norm": "max/median norm (lower)"})


def load_or_run(profile: str | Profile, rerun: bool = False, folder: Path | str = COMPARE_DIR,
                **kwargs: Any) -> dict[str, Any]:
    """The comparison of ``profile``: the stored ``<folder>/<profile>.json`` unless ``rerun`` or there is
    none made on the profile's data (then computed now, through the cache; ``kwargs`` go to
    :func:`run_comparison`). Every image folder's profile is ``<profile>-folder``: a file made on
    another folder is not this comparison."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    path = Path(folder) / f"{prof.name}.json"
    if path.is_file() and not rerun:
        import warnings

        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a readable comparison ({e}); remake it with "
                             f"python -m regvit_lib.compare --profile {prof.base} --data {prof.data_spec} "
                             "or pass rerun=True") from e
        if not same_data(doc.get("data", "scenes"), prof.data_spec):
            return load_or_run(prof, True, folder, **kwargs)
        doc["source"] = str(path)
        if doc.get("code") not in (None, code_version(_STAMP_CODE)):
            warnings.warn(f"{path} was made by other code ({doc.get('code')}, now {code_version(_STAMP_CODE)}); "
                          "it is shown as stored: rerun=True, or python -m regvit_lib.compare, remakes it", stacklevel=2)
        return doc
    doc = run_comparison(prof, progress=False, **kwargs)
    doc["source"] = "this build (computed now, through the cache)"
    return doc


def main(argv: list[str] | None = None) -> None:
    from .emergence import git_commit

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap, "cpu")
    ap.add_argument("--out", default=str(COMPARE_DIR.relative_to(Path.cwd()) if COMPARE_DIR.is_relative_to(Path.cwd())
                                          else COMPARE_DIR), help="folder for <profile>.json")
    ap.add_argument("--methods", nargs="+", default=None, help=f"default: all of {list(METHODS)}")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds per method (default: the profile's)")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--k", type=float, default=OUTLIER_K)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    prof = from_arguments(ap, args)
    try:
        check_methods(args.methods)
        runs = comparison_runs(prof, args.methods, args.seeds)  # every setting checked before any compute
    except (ConfigError, ValueError) as e:
        ap.error(str(e))
    from .prepare import train_together

    if not train_together(runs):
        return  # torchrun: the other processes helped train; rank 0 measures and writes
    command = "python -m regvit_lib.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = run_comparison(prof, args.methods, args.seeds, args.images, args.k, args.workers)
    stamp = {"command": command, "commit": git_commit(),
             "code": code_version(_STAMP_CODE)}
    doc = {**stamp, **doc, "rows": [{**r, **stamp} for r in doc["rows"]]}
    path = Path(args.out) / f"{prof.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path} in {doc['seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

