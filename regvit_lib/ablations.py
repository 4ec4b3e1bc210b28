"""Chapter 4's ablations: how many registers (the paper's Fig. 8), and position embeddings at
another resolution (its App. A).

**Registers.** :func:`register_grid` trains (through the cache) the profile's model with
0, 1, 2, 4, 8 and 16 registers for each of the profile's seeds and measures on each the
artifact (outlier share, max/median norm ratio, strongest sink), the three probes of Table 2,
LOST CorLoc, the counted FLOPs and the parameters. Every row is a cached measurement
(:func:`regvit_lib.cache.cached`), so rebuilding the chapter reads JSON files.
:func:`register_throughput` measures the training-speed cost of the extra tokens with the models
taking turns step by step (a shared machine drifts; alternating cancels it).

**Resolution.** A ViT's position embedding is a grid of vectors; at another input size it is
resized by bicubic interpolation (timm's ``resample_abs_pos_embed``). The paper (App. A) traces
striped outlier patterns in its first models to interpolating *without antialiasing*;
:func:`at_resolution` builds the model at a new size with or without it, and
:func:`resolution_study` measures the artifact there.
Antialiasing only changes a *downsampling* (a smaller grid); upsampling is the same either way.
"""

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .analysis import OUTLIER_K, collect, detect_outliers, peak_layer, positive_control
from .cache import cached
from .config import DataConfig, RunConfig
from .profiles import Profile
from .data import make_source, normalize
from .flops import count_flops
from .measure import dense_table, load_subject, norm_report, object_discovery, sinks
from .model import RegViT, build_model
from .timing import alternate, training_step
from .probes import probe_summary
from .train import TRAIN_CODE, TrainedRun, train

__all__ = ["positive_control_report", "grid_runs", "register_grid", "grid_summary", "register_throughput",
           "at_resolution", "resolution_study", "grid_texts"]

# The code a grid row depends on: the trained run's and the measurements'.
_GRID_CODE = TRAIN_CODE + ("analysis.py", "probes.py", "measure.py", "flops.py", "ablations.py")


def _register_row(profile: Profile, registers: int, seed: int, images: int, k: float) -> dict[str, Any]:
    s = load_subject(profile, registers=registers, images=images, seed=seed)
    assert s.run is not None
    r, dense, sink = norm_report(s, k), dense_table([s]).iloc[0], sinks(s).iloc[-1]  # the last block's sink
    return {"registers": registers, "seed": seed, "params": s.params, "gflops": count_flops(s.model.cfg) / 1e9,
            "test_acc": s.run.metrics["test_acc"], "layer": r["layer"], "share": r["share"],
            "ratio_mean": r["ratio_mean"], "ratio_max": r["ratio_max"],
            **{key: float(dense[key]) for key in ("classification", "segmentation_miou", "depth_rmse")},
            "corloc": float(object_discovery([s]).iloc[0]["corloc"]), "sink_mass": float(sink["sink_mass"]),
            "sink_on": str(sink["sink_on"]), "train_seconds": s.run.metrics["train_seconds"],
            "norm_map": detect_outliers(s.feats, s.layer, k).ratio[0].reshape(s.feats.grid, -1).tolist()}  # one image


def positive_control_report(run: TrainedRun, data: DataConfig, images: int, layer: int,
                            seed: int = 0) -> dict[str, Any]:
    """The planted positive control on a trained run over the first ``images`` validation images of
    ``data`` (at most the split's), cached per run, images, block and seed (:func:`regvit_lib.analysis.positive_control`).

    Returns:
        ``natural_share`` (the rule's share of natural outliers at ``layer``), ``found_all``
        (whether the rule finds exactly the planted tokens) and ``probes``: ``natural`` and
        ``planted``, the probe records (:func:`regvit_lib.probes.probe_summary`) of each pass.
    """
    def compute() -> dict[str, Any]:
        source = make_source(data)
        image, label = source.batch("val", np.arange(min(images, source.split_size("val"))))
        natural, planted, positions = positive_control(run.vit, image, label, layer)
        found = {"natural": detect_outliers(natural, layer), "planted": detect_outliers(planted, layer)}
        return {"natural_share": found["natural"].share,
                "found_all": found["planted"].positions() == [sorted(p) for p in positions.tolist()],
                "probes": {name: probe_summary(f, found[name], layer, seed)
                           for name, f in (("natural", natural), ("planted", planted))}}
    return cached("positive-control", dict(run=run.key, data=data, images=images, layer=layer, seed=seed), _GRID_CODE,
                  compute)


def grid_runs(profile: Profile, counts: tuple[int, ...] | None = None,
              seeds: list[int] | None = None) -> list[tuple[int, int, RunConfig]]:
    """``(registers, seed, run)`` of every point of the register grid: the profile's run with each
    count of ``counts`` (default its ``register_counts``) for each of ``seeds`` (default its seeds).

    Raises:
        ValueError: a count that is not an int >= 0.
    """
    counts = profile.register_counts if counts is None else counts
    if bad := [c for c in counts if isinstance(c, bool) or not isinstance(c, int) or c < 0]:
        raise ValueError(f"register counts must be ints >= 0, got {bad}")
    seeds = list(profile.all_seeds) if seeds is None else list(seeds)
    return [(c, s, profile.run(seed=s, num_registers=c)) for c in counts for s in seeds]


def register_grid(profile: Profile, counts: tuple[int, ...] | None = None, seeds: list[int] | None = None,
                  images: int = 400, k: float = OUTLIER_K, progress: bool = True) -> pd.DataFrame:
    """One row per (register count, seed) of :func:`grid_runs`: the artifact, the probes, FLOPs, parameters.

    Args:
        profile: the book's profile (model, data, recipe).
        counts: register counts (non-negative ints; default the profile's ``register_counts``).
        seeds: training seeds (default: the profile's ``seeds`` seeds from its ``seed``).
        images: validation images measured per model.
        k: the outlier rule.
        progress: a progress bar over the runs (most of the time is training, on a first build).
    """
    jobs = tqdm(grid_runs(profile, counts, seeds), desc="register grid", disable=not progress)
    return pd.DataFrame([cached("register-grid", dict(run=run, images=images, k=k), _GRID_CODE,
                                lambda: _register_row(profile, c, s, images, k)) for c, s, run in jobs])


def grid_summary(grid: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every number, one row per register count."""
    numbers = grid.drop(columns=["seed", "sink_on", "norm_map"]).groupby("registers")
    mean = numbers.mean()
    flops_pct = 100 * (mean["gflops"] / mean["gflops"].iloc[0] - 1)
    return mean.join(numbers.std(ddof=1).add_suffix("_sd")).assign(seeds=numbers.size(), flops_pct=flops_pct).reset_index()


def register_throughput(profile: Profile, counts: tuple[int, ...] | None = None, rounds: int = 6,
                        batch: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Training images/s of the profile's model with each register count (default: its grid's), taking turns.

    Each round times one training step of every model in turn (the order rotating by round);
    the median over rounds is kept. Cached per machine kind (device and thread count).
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    b, cfg = batch or profile.train.batch_size, profile.model
    counts = profile.register_counts if counts is None else counts
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    config = {"model": cfg, "counts": list(counts), "rounds": rounds, "batch": b, "device": name}

    def compute() -> dict[str, Any]:
        x = torch.randn(b, cfg.in_chans, cfg.img_size, cfg.img_size, device=dev)
        y = torch.randint(cfg.num_classes, (b,), device=dev)
        steps = [training_step(build_model(replace(cfg, num_registers=c), device=dev).train(), x, y, amp=False)
                 for c in counts]
        rates = [b / float(np.median(t)) for t in alternate(steps, rounds, dev)]
        return {"device": name, "img_per_s": dict(zip(map(str, counts), rates)),
                "slowdown_pct": {str(c): 100 * (rates[0] / r - 1) for c, r in zip(counts, rates)}}

    return cached("register-throughput", config, TRAIN_CODE + ("timing.py", "ablations.py"), compute)


def at_resolution(model: RegViT, img_size: int, antialias: bool = True) -> RegViT:
    """The same weights at another input size, the position embedding resized (bicubic).

    Raises:
        ConfigError: ``img_size`` is not a multiple of the patch size (from the model config).
    """
    from timm.layers import resample_abs_pos_embed

    cfg = replace(model.cfg, img_size=img_size)
    new = build_model(cfg, device=next(model.parameters()).device)
    state = model.state_dict()
    pos = resample_abs_pos_embed(state["pos_embed"], [cfg.grid_size] * 2, num_prefix_tokens=0, antialias=antialias)
    new.load_state_dict({**state, "pos_embed": pos})
    assert isinstance(new, RegViT)
    return new.eval()


def resolution_study(profile: Profile, sizes: tuple[int, ...], images: int = 200, k: float = OUTLIER_K,
                     registers: int = 0) -> pd.DataFrame:
    """The profile's model (every seed) evaluated at other input sizes, position embedding resized with
    and without antialiasing: per (seed, size, antialias), the outlier share, max/median ratio,
    accuracy, and ``stripe`` -- how much of the mean norm map's variation lies along rows or columns.

    ``stripe`` is the variance of the row means plus that of the column means over the variance
    of the whole map of mean per-position norm ratios (1 for perfect stripes, ~2/g for noise).
    Cached per runs, images, sizes and rule.
    """
    runs = [profile.run(seed=seed, num_registers=registers) for seed in profile.all_seeds]
    config = dict(runs=runs, data=profile.data, sizes=list(sizes), images=images, k=k)
    return pd.DataFrame(cached("resolution-study", config, _GRID_CODE, lambda: {"rows": _resolution_rows(
        runs, profile.data, sizes, images, k)})["rows"])


def _resolution_rows(runs: list[RunConfig], data: DataConfig, sizes: tuple[int, ...], images: int,
                     k: float) -> list[dict[str, Any]]:
    idx = np.arange(min(images, make_source(data).split_size("val")))
    rows = []
    for run_config in runs:
        run, seed = train(run_config, progress=False), run_config.seed  # from the cache when trained before
        for size in sizes:
            image, label = make_source(replace(data, img_size=size)).batch("val", idx)  # re-rendered or resized
            for aa in (True, False):
                m = at_resolution(run.vit, size, antialias=aa)
                feats = collect(m, image, label, attn=False)
                layer, g = peak_layer(feats), m.cfg.grid_size
                out = detect_outliers(feats, layer, k)
                mean_map = out.ratio.mean(0).reshape(g, g)
                stripe = float(mean_map.mean(0).var() + mean_map.mean(1).var()) / (float(mean_map.var()) or 1e-12)
                with torch.no_grad():
                    acc = float((m(normalize(image)).argmax(-1) == label).float().mean())
                rows.append({"seed": seed, "img_size": size, "grid": g, "antialias": aa, "layer": layer,
                             "share": out.share, "ratio_mean": float(out.ratio.amax(-1).mean()), "stripe": stripe,
                             "accuracy": acc, "mean_map": mean_map.tolist()})
    return rows


def grid_texts(summary: pd.DataFrame, speed: dict[str, Any]) -> dict[str, str]:
    """The register grid's numbers as the chapter prints them (name -> text)."""
    def best(col: str, lowest: bool = False) -> str:  # the register count with the best mean
        if summary[col].isna().all():
            return "no count (these images have no labels for it)"
        n = int(summary.loc[summary[col].idxmin() if lowest else summary[col].idxmax(), "registers"])
        return f"{n} register{'' if n == 1 else 's'}"

    def joined(col: str, fmt: str, scale: float = 1.0) -> str:  # mean (± sd over seeds) per count
        return ", ".join(format(scale * v, fmt) + ("" if n < 2 else f" ± {format(scale * sd, fmt)}")
                         for v, sd, n in zip(summary[col], summary[f"{col}_sd"], summary["seeds"]))

    return {"abl_seeds": str(int(summary["seeds"].min())), "abl_shares": joined("share", ".2f", 100.0),
            "abl_ratios": joined("ratio_mean", ".2f"), "abl_sinks": joined("sink_mass", ".2f"),
            "abl_counts": ", ".join(str(int(c)) for c in summary["registers"]),
            "abl_best_miou": best("segmentation_miou"), "abl_best_rmse": best("depth_rmse", lowest=True),
            "abl_best_acc": best("classification"), "abl_flops16": f"{summary['flops_pct'].iloc[-1]:.1f}",
            "abl_speed_device": speed["device"],
            "abl_speed": ", ".join(f"{v:+.1f}" for v in speed["slowdown_pct"].values())}
