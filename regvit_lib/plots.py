"""Figures. Each function takes data from the library and returns a matplotlib Figure.

Distributions over images, spreads over seeds and block x head grids are drawn with seaborn
(``boxenplot``, ``lineplot(errorbar="sd")``, ``heatmap``); images, maps and annotated layouts with
matplotlib. :func:`use_style` sets the book's one theme (seaborn's, with the book's palette).
Only this module and the interactive :mod:`regvit_lib.explorer` import matplotlib. Nothing here calls ``plt.show``; a chapter displays or
glues the returned figure, and ``fig.savefig("x.pdf")`` gives a thesis-ready vector file (the
format follows the suffix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter
import torch
from torch import Tensor

from .config import ModelConfig
from .scenes import SceneBatch, background_patches

__all__ = ["use_style", "TOKEN_COLORS", "patch_grid", "token_layout", "register_overhead", "scenes_grid",
           "scene_labels", "training_curves", "norm_histogram", "norms_per_layer", "attention_maps",
           "neighbour_similarity", "emergence", "sinks_per_layer", "norms_vs_size", "register_ablation",
           "resolution_maps", "accuracy_vs_flops", "summary_maps", "sink_heatmap", "verdict_grid"]

# One colour per token kind, used by every figure of the book.
TOKEN_COLORS = {"cls": "#d62728", "reg": "#2ca02c", "patch": "#1f77b4"}


# The book's palette: matplotlib's tab10, whose blue, green and red are the token colours above.
PALETTE = "tab10"


def use_style() -> None:
    """The book's one theme: seaborn's white grid with the book's palette, set once per chapter."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.85,
                  rc={"figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", "axes.spines.top": False,
                      "axes.spines.right": False, "grid.alpha": 0.4, "legend.frameon": False})


def patch_grid(image: Tensor, patch_size: int, ax: plt.Axes | None = None) -> Figure:
    """An image ``(3, H, W)`` or ``(1, 3, H, W)`` with its patch grid and patch indices drawn on."""
    img = image.squeeze(0).permute(1, 2, 0).detach().cpu().numpy()
    H, W = img.shape[:2]
    fig, ax = _fig_ax(ax, (4.2, 4.2))
    _show(ax, img, extent=(0, W, H, 0), interpolation=None)  # None: matplotlib's default smoothing
    for line, end in ((ax.axvline, W), (ax.axhline, H)):
        for t in range(patch_size, end, patch_size):
            line(t, color="white", lw=0.8)
    g = W // patch_size
    if g <= 16:
        for r, c in np.ndindex(H // patch_size, g):
            ax.text((c + 0.5) * patch_size, (r + 0.5) * patch_size, str(r * g + c + 1), color="white",
                    ha="center", va="center", fontsize=max(5, 9 - g // 3))
    ax.set_title(f"{H}×{W} px → {g * (H // patch_size)} patches of {patch_size}×{patch_size}")
    return fig


def token_layout(cfg: ModelConfig, max_patches: int = 12, ax: plt.Axes | None = None) -> Figure:
    """The input sequence of a ViT: [CLS], registers (no position) and patches (+ position)."""
    shown = min(cfg.num_patches, max_patches)
    kinds = ["cls"] * int(cfg.class_token) + ["reg"] * cfg.num_registers + ["patch"] * shown
    fig, ax = _fig_ax(ax, (max(6.0, 0.55 * (len(kinds) + 2)), 1.9))
    for i, kind in enumerate(kinds):
        ax.add_patch(Rectangle((i, 0), 0.9, 1, color=TOKEN_COLORS[kind], alpha=0.85))
        text = "[CLS]" if kind == "cls" else f"{kind}\n{i + 1 - kinds.index(kind)}"  # numbered within its kind
        ax.text(i + 0.45, 0.5, text, ha="center", va="center", color="white", fontsize=7)
        ax.text(i + 0.45, -0.35, "+pos" if kind == "patch" else "no pos", ha="center", fontsize=6)
    x = len(kinds) + (3.0 if shown < cfg.num_patches else 0.0)  # room for the "… N patches" note
    if shown < cfg.num_patches:
        ax.text(len(kinds) + 0.3, 0.5, f"… {cfg.num_patches} patches in all", va="center", fontsize=8)
    ax.set(xlim=(-0.2, x + 0.2), ylim=(-0.6, 1.2), title=f"{cfg.num_tokens} tokens = {int(cfg.class_token)} [CLS] "
           f"+ {cfg.num_registers} registers + {cfg.num_patches} patches")
    ax.axis("off")
    return fig


def register_overhead(table: pd.DataFrame, paper: dict[int, float] | None = None,
                      ax: plt.Axes | None = None) -> Figure:
    """FLOPs overhead (%) against the number of registers, one line per model.

    Args:
        table: output of :func:`regvit_lib.flops.register_overhead_table`.
        paper: the paper's stated overheads, {registers: percent}, drawn as markers.
    """
    fig, ax = _fig_ax(ax, (5.0, 3.4))
    for model, rows in table.groupby("model", sort=False):
        ax.plot(rows["registers"], rows["flops_overhead_pct"], marker="o", label=model)
    if paper:
        ax.scatter(list(paper), list(paper.values()), marker="x", s=60, color="black", zorder=5,
                   label="paper (App. B, bound)")
    ax.set(xlabel="number of registers", ylabel="extra forward FLOPs (%)")
    ax.legend(fontsize=8)
    return fig


def _show(ax: plt.Axes, data: Any, **kwargs: Any) -> Any:
    """``imshow`` (unsmoothed unless ``interpolation`` says otherwise) on an axes with no ticks and no grid;
    returns the image, for a colour bar."""
    im = ax.imshow(data, **{"interpolation": "nearest", **kwargs})
    ax.set(xticks=[], yticks=[])
    ax.grid(False)
    return im


def _image(ax: plt.Axes, img: Tensor) -> None:
    _show(ax, img.permute(1, 2, 0).clamp(0, 1).cpu().numpy())


def scenes_grid(batches: dict[str, SceneBatch], class_names: list[str], cols: int = 6) -> Figure:
    """Rows of scenes, one row per named batch (e.g. one per background kind), titled by class.

    Args:
        batches: row name -> rendered scenes (the first ``cols`` of each are shown).
        class_names: the name of each class index, for the titles.
        cols: scenes per row.
    """
    fig, axes = plt.subplots(len(batches), cols, figsize=(1.45 * cols, 1.55 * len(batches)),
                             layout="constrained", squeeze=False)
    for row, (name, batch) in zip(axes, batches.items()):
        for i, ax in enumerate(row):
            _image(ax, batch.image[i])
            ax.set_title(class_names[int(batch.label[i])], fontsize=8)
        row[0].set_ylabel(name)
    return fig


def scene_labels(batch: SceneBatch, index: int = 0, patch_size: int | None = None) -> Figure:
    """One scene and its labels: image with boxes, segmentation, depth, background patches.

    Args:
        batch: rendered scenes.
        index: which scene of the batch.
        patch_size: if given, a fourth panel marks the patches that hold no object pixel.
    """
    n = 4 if patch_size else 3
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), layout="constrained")
    _image(axes[0], batch.image[index])
    for x0, y0, x1, y1 in batch.boxes[index][batch.box_valid[index]].tolist():
        axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.2, ec="white"))
    _show(axes[1], batch.seg[index].cpu().numpy(), cmap="tab10", vmin=0, vmax=9)
    dep = _show(axes[2], batch.depth[index].cpu().numpy(), cmap="magma_r", vmin=0, vmax=1)
    fig.colorbar(dep, ax=axes[2], shrink=0.8)
    for ax, title in zip(axes, ("image + boxes", "segmentation", "depth")):
        ax.set_title(title)
    if patch_size:
        g = batch.seg.shape[-1] // patch_size
        empty = background_patches(batch.seg[index : index + 1], patch_size).reshape(g, g)  # no object pixel
        _image(axes[3], batch.image[index])
        for gy, gx in empty.nonzero().tolist():
            axes[3].add_patch(Rectangle((gx * patch_size - 0.5, gy * patch_size - 0.5), patch_size, patch_size,
                                        fc="white", alpha=0.75, ec="none"))
        axes[3].set_title(f"{int(empty.sum())} of {g * g} patches ({patch_size} px)\nare background only (white)",
                          fontsize=9)
    return fig


def training_curves(runs: Sequence[list[dict]], layers: list[int] | None = None) -> Figure:
    """Validation accuracy and, per block, the mean max/median patch-norm ratio over training:
    the mean over seeds, with a band of one standard deviation when there are several.

    Args:
        runs: one :attr:`regvit_lib.train.TrainedRun.curves` per training seed.
        layers: which blocks to draw (default: all).
    """
    if not runs or not runs[0]:
        raise ValueError("training_curves needs at least one run with recorded curves")
    depth = len(runs[0][0]["norms"])
    shown = list(range(depth)) if layers is None else layers
    frame = pd.DataFrame([{"seed": i, "step": c["step"], "accuracy": c["val_acc"], "block": b,
                           "ratio": c["norms"][b]["ratio_mean"]} for i, curves in enumerate(runs) for c in curves
                          for b in shown])
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.2), layout="constrained")
    sns.lineplot(frame[frame["block"] == shown[0]], x="step", y="accuracy", errorbar="sd", marker="o", ax=a)
    a.set(xlabel="training step", ylabel="validation accuracy", ylim=(0, 1))
    sns.lineplot(frame, x="step", y="ratio", hue="block", palette="viridis", errorbar="sd", ax=b)
    b.set(xlabel="training step", ylabel="max / median patch norm\n(mean over images)")
    b.set_ylim(bottom=1)  # the largest norm of an image is never below its median
    b.legend(title="block", fontsize=7, ncol=2)
    if len(runs) > 1:
        a.set_title(f"{len(runs)} seeds: mean ± sd", fontsize=9)
    return fig


def norm_histogram(norms: dict[str, Tensor], k: float | None = None, ax: plt.Axes | None = None,
                   label: str | None = None) -> Figure:
    """Paper Fig. 3 / Fig. 7: the distribution of token norms, patch tokens vs [CLS] / registers.

    Args:
        norms: ``{"patch": (...), "cls": (...), "reg": (...)}`` norms of one layer (any shapes).
        k: draw the outlier rule's cut, ``k`` x the median patch norm.
        ax: draw into this axes (e.g. to put two models side by side).
        label: a title.
    """
    fig, ax = _fig_ax(ax, (5.0, 3.2))
    hi = float(torch.cat([v.flatten() for v in norms.values() if v.numel()]).max())
    bins = torch.linspace(0, hi * 1.02, 60).tolist()
    for kind, name in (("patch", "patch tokens"), ("cls", "[CLS]"), ("reg", "registers")):
        if kind == "patch" or (kind in norms and norms[kind].numel()):  # patches always get their histogram
            ax.hist(norms[kind].flatten().tolist(), bins=bins, color=TOKEN_COLORS[kind], alpha=0.8, label=name)
    if k is not None:
        ax.axvline(k * float(norms["patch"].median()), color="black", ls="--", lw=1, label=f"{k:g} x median")
    ax.set(yscale="log", xlabel="token norm", ylabel="tokens")
    if label:
        ax.set_title(label)
    ax.legend(fontsize=8)
    return fig


def norms_per_layer(ratio_max: Tensor, share: Tensor | None = None, ax: plt.Axes | None = None) -> Figure:
    """Paper Fig. 4a: per block, the distribution over images of the largest patch norm over the image's
    median (one boxen per block), and the share of outlier tokens (right axis).

    Args:
        ratio_max: ``(B, L)`` per image and block, max patch norm / median patch norm.
        share: optional ``(L,)`` share of outlier tokens per block.
    """
    fig, ax = _fig_ax(ax, (5.0, 3.2))
    B, L = ratio_max.shape
    frame = pd.DataFrame({"block": np.tile(np.arange(L), B), "ratio": ratio_max.float().flatten().numpy()})
    sns.boxenplot(frame, x="block", y="ratio", color=TOKEN_COLORS["patch"], ax=ax, showfliers=False)
    ax.set(xlabel="block", ylabel="max / median patch norm")
    ax.set_ylim(bottom=1)  # a largest norm is never below its median
    if L > 16:  # a 40-block model: label every fifth block
        ax.xaxis.set_major_locator(FixedLocator(list(range(0, L, 5))))
    if share is not None:
        _outlier_axis(ax, list(range(L)), (100 * share).tolist()).legend(fontsize=8, loc="upper left")
    return fig


def attention_maps(images: Tensor, maps: dict[str, Tensor], cols: int = 4) -> Figure:
    """Paper Fig. 2 / Fig. 9: images, then one row per map: attention of a query token to the
    patches, or PCA feature maps.

    Args:
        images: ``(B, 3, H, W)``; the first ``cols`` are shown.
        maps: row name -> ``(B, g, g)`` maps drawn with a colour scale (e.g. ``"[CLS]"``,
            ``"register 0"``), or ``(B, g, g, 3)`` RGB maps (:func:`regvit_lib.analysis.pca_rgb`).
    """
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), layout="constrained", squeeze=False)
    for c in range(cols):
        _image(axes[0, c], images[c])
        for r, m in enumerate(maps.values(), start=1):
            _show(axes[r, c], m[c].cpu().numpy(), cmap="viridis")
    for ax, name in zip(axes[:, 0], ["image", *maps]):
        ax.set_ylabel(name, fontsize=8)
    return fig


def neighbour_similarity(similarity: Tensor, outlier_mask: Tensor, ax: plt.Axes | None = None) -> Figure:
    """Paper Fig. 5a: cosine similarity to the 4 neighbours, normal vs outlier patches.

    Args:
        similarity: ``(B, N)`` from :func:`regvit_lib.analysis.neighbour_similarity`.
        outlier_mask: ``(B, N)`` bool.
    """
    fig, ax = _fig_ax(ax, (4.6, 3.0))
    bins = torch.linspace(float(similarity.min()), float(similarity.max()) + 1e-6, 40).tolist()
    for mask, colour, label in ((~outlier_mask, TOKEN_COLORS["patch"], "normal"), (outlier_mask, "orange", "outlier")):
        if label == "normal" or mask.any():  # the normal patches always get their histogram
            ax.hist(similarity[mask].tolist(), bins=bins, density=True, alpha=0.7, color=colour, label=label)
    ax.set(xlabel="cosine similarity to neighbours (patch embedding)", ylabel="density")
    ax.legend(fontsize=8)
    return fig


def emergence(rows: list[dict], along: tuple[str, ...] = (), paper_ratio: float | None = 10.0) -> Figure:
    """The emergence study on a compute axis: norm ratio and sink mass of every run.

    Left: the largest per-image max/median patch-norm ratio (mean over images, best block >= 1)
    at the end of each run; the runs of the axes ``along`` are also drawn over their training. Right: the
    attention mass of the strongest sink. ``paper_ratio``: the ~10x of the paper's outliers.

    Args:
        rows: :func:`regvit_lib.emergence.run_study` rows (or ``load_study(...)["rows"]``).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.6), layout="constrained")
    colours = [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)] + ["black"] * 9  # no grey: the curves are grey
    for colour, axis in zip(colours, sorted({r["axis"] for r in rows})):
        pts = [r for r in rows if r["axis"] == axis]
        for ax, key in ((a, "final_ratio_mean"), (b, "final_sink_mass")):
            ax.scatter([r["train_flops"] for r in pts], [r[key] for r in pts], color=colour, label=axis, zorder=3)
    for r in (r for r in rows if r["axis"] in along):
        c = [p for p in r["curve"] if p["train_flops"] > 0]
        for ax, key in ((a, "ratio_mean"), (b, "sink_mass")):
            ax.plot([p["train_flops"] for p in c], [p[key] for p in c], color="grey", lw=0.8, alpha=0.6)
    if paper_ratio:
        a.axhline(paper_ratio, color="black", ls="--", lw=1, label=f"paper's outliers (~{paper_ratio:g}x)")
    xs = [p["train_flops"] for r in rows for p in r["curve"] if p["train_flops"] > 0]
    decades = (10 ** np.floor(np.log10(min(xs))), 10 ** np.ceil(np.log10(max(xs))))  # always labelled ticks
    for ax, ylabel in ((a, "max / median patch norm"), (b, "sink: attention mass on one key")):
        ax.set(xscale="log", xlabel="training FLOPs", ylabel=ylabel, xlim=decades)
        ax.xaxis.set_minor_formatter(NullFormatter())
    a.set_yscale("log")
    a.yaxis.set(major_locator=FixedLocator([1, 1.5, 2, 3, 5, 10]), major_formatter=ScalarFormatter(),
                minor_formatter=NullFormatter())
    a.legend(fontsize=7, loc="center left", bbox_to_anchor=(0.0, 0.62), ncol=2)
    return fig


def sinks_per_layer(tables: dict[str, pd.DataFrame | list[pd.DataFrame]], ax: plt.Axes | None = None) -> Figure:
    """Per block, the attention share of the strongest sink, one line per model (mean over seeds, band:
    one standard deviation); the marker says which token the sink is in most seeds (circle: a patch,
    square: [CLS], triangle: a register).

    Args:
        tables: model name -> one :func:`regvit_lib.measure.sinks` table, or one per seed.
    """
    fig, ax = _fig_ax(ax, (5.0, 3.0))
    markers = {"patch": "o", "cls": "s", "reg": "^"}
    for i, (name, t) in enumerate(tables.items()):
        seeds = pd.concat(t if isinstance(t, list) else [t])
        sns.lineplot(seeds, x="block", y="sink_mass", errorbar="sd", color=f"C{i}", label=name, ax=ax)
        g = seeds.groupby("block").agg(mass=("sink_mass", "mean"), on=("sink_on", lambda v: v.mode().iloc[0]))
        for kind, marker in markers.items():
            sel = g[g["on"] == kind]
            ax.scatter(sel.index, sel["mass"], marker=marker, color=f"C{i}", s=40, zorder=3)
    for kind, marker in markers.items():  # a legend entry per token kind
        ax.scatter([], [], marker=marker, color="grey", label=f"sink on {'[CLS]' if kind == 'cls' else kind}")
    ax.set(xlabel="block", ylabel="attention share of the strongest sink", ylim=(0, 1))
    ax.legend(fontsize=7)
    return fig


def sink_heatmap(grids: dict[str, pd.DataFrame]) -> Figure:
    """Block x head: the share of the patch queries' attention that each head's strongest key takes,
    one panel per model on one colour scale (0-1), each cell marked with that key's kind
    (C: [CLS], R: a register, p: a patch) unless the grid is too large to read (a pretrained ViT-g).

    Args:
        grids: model name -> :func:`regvit_lib.measure.sink_heads` table (``block``, ``head``,
            ``sink_mass``, ``sink_on``).
    """
    n = len(grids)
    heads = max(int(g["head"].max()) + 1 for g in grids.values())
    fig, axes = plt.subplots(1, n, figsize=(0.5 * heads * n + 1.8 * n, 3.2), layout="constrained", squeeze=False)
    letter = {"cls": "C", "reg": "R", "patch": "p"}
    for k, (ax, (name, g)) in enumerate(zip(axes[0], grids.items())):
        mass = g.pivot(index="block", columns="head", values="sink_mass")
        on = g.pivot(index="block", columns="head", values="sink_on").map(letter.get)
        sns.heatmap(mass, vmin=0, vmax=1, cmap="magma", annot=on if on.size <= 300 else False, fmt="", ax=ax,
                    cbar=k == n - 1,
                    annot_kws={"fontsize": 7}, cbar_kws={"label": "sink's share of attention"})
        ax.set_title(name, fontsize=9)
    return fig


def norms_vs_size(rows: list[dict], ax: plt.Axes | None = None) -> Figure:
    """Paper Fig. 4c: outlier share and max/median norm ratio against model size.

    Args:
        rows: ``{"params", "share", "ratio_mean", "name"}`` per model.
    """
    fig, ax = _fig_ax(ax, (5.0, 3.0))
    rows = sorted(rows, key=lambda r: r["params"])
    x = [r["params"] / 1e6 for r in rows]
    ax.plot(x, [r["ratio_mean"] for r in rows], marker="o", color=TOKEN_COLORS["patch"],
            label="max / median norm (mean over images)")
    ax.set(xscale="log", xlabel="parameters (M)", ylabel="max / median patch norm")
    ax2 = _outlier_axis(ax, x, [100 * r["share"] for r in rows])
    for xi, r in zip(x, rows):
        ax.annotate(r["name"], (xi, r["ratio_mean"]), fontsize=7, textcoords="offset points", xytext=(0, 6),
                    ha="center")
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="lower right")
    return fig


def register_ablation(grid: pd.DataFrame) -> Figure:
    """Paper Fig. 8: artifact maps on top (one image's patch-norm / median map per register
    count, first seed), and below the three probes against the number of registers (mean over
    seeds, band: one standard deviation).

    Args:
        grid: :func:`regvit_lib.ablations.register_grid`, one row per register count and seed.
    """
    counts = sorted(grid["registers"].unique())
    fig = plt.figure(figsize=(1.5 * max(len(counts), 4), 5.2), layout="constrained")
    top, bottom = cast(Any, fig.subfigures(2, 1, height_ratios=[1, 1.3]))
    maps = top.subplots(1, len(counts), squeeze=False)[0]
    first = grid.sort_values("seed").groupby("registers").first()
    hi = max(float(np.max(m)) for m in first["norm_map"])
    for ax, c in zip(maps, counts):
        im = _show(ax, np.asarray(first.loc[c, "norm_map"]), cmap="magma", vmin=0, vmax=hi)
        ax.set_title(f"{c} reg.", fontsize=8)
    top.colorbar(im, ax=list(maps), shrink=0.8, label="norm / median")
    evenly = grid.assign(position=grid["registers"].map({c: i for i, c in enumerate(counts)}))  # 0, 1, 4, 16 evenly
    for ax, col, title in zip(bottom.subplots(1, 3), ("classification", "segmentation_miou", "depth_rmse"),
                              ("classification (acc)", "segmentation (mIoU)", "depth (RMSE, lower is better)")):
        sns.lineplot(evenly, x="position", y=col, errorbar="sd", marker="o", color=TOKEN_COLORS["reg"], ax=ax)
        ax.set(xticks=range(len(counts)), xticklabels=[str(c) for c in counts], xlabel="registers", ylabel="")
        ax.set_title(title, fontsize=9)
    return fig


def resolution_maps(study: pd.DataFrame) -> Figure:
    """App. A: the mean per-position norm / median map at each resolution, with and without
    antialiased interpolation of the position embedding (of the study's first seed)."""
    sizes = sorted(study["img_size"].unique())
    fig, axes = plt.subplots(2, len(sizes), figsize=(2.4 * len(sizes), 4.6), layout="constrained", squeeze=False)
    for j, size in enumerate(sizes):
        for i, aa in enumerate((True, False)):
            row = study[(study["img_size"] == size) & (study["antialias"] == aa)].iloc[0]
            _show(axes[i, j], np.asarray(row["mean_map"]), cmap="magma")
            axes[i, j].set_title(f"{size} px, {'antialiased' if aa else 'no antialias'}\n"
                                 f"stripe {row['stripe']:.2f}", fontsize=8)
    return fig


def accuracy_vs_flops(rows: pd.DataFrame, ax: plt.Axes | None = None) -> Figure:
    """Chapter 5: test accuracy against forward GFLOPs per image, one point per method (mean, with the
    seeds' sd as bars), coloured by the strongest sink's mass; hollow grey: no attention map to measure.

    Args:
        rows: one row per method and seed with ``label``, ``gflops``, ``test_acc``, ``sink_mass``.
    """
    fig, ax = _fig_ax(ax, (7.5, 4.6))
    g = rows.groupby("label", sort=False).agg(gflops=("gflops", "mean"), acc=("test_acc", "mean"),
                                              acc_sd=("test_acc", "std"), flops_sd=("gflops", "std"),
                                              sink=("sink_mass", "mean"))
    norm = plt.Normalize(0.0, 1.0)
    cmap = plt.get_cmap("viridis")
    for label, r in g.iterrows():
        has = bool(np.isfinite(r["sink"]))
        ax.errorbar(r["gflops"], r["acc"], xerr=np.nan_to_num(r["flops_sd"]), yerr=np.nan_to_num(r["acc_sd"]),
                    fmt="o", ms=8, color=cmap(norm(r["sink"])) if has else "grey", mfc=None if has else "none",
                    ecolor="0.6", elinewidth=1, capsize=2)
    _label_points(ax, [(str(label), r["gflops"], r["acc"]) for label, r in g.iterrows()])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="strongest sink: share of attention")
    ax.set(xlabel="forward GFLOPs per image (A-ViT: at the depth it learned)", ylabel="test accuracy")
    return fig


def _label_points(ax: plt.Axes, points: list[tuple[str, float, float]], size: float = 7.0) -> None:
    """Name each point with the first of four nearby spots whose text box overlaps no label placed before."""
    ax.figure.canvas.draw()  # the data-to-pixel transform is fixed from here
    placed: list[tuple[float, float, float, float]] = []
    for text, x, y in points:
        px, py = ax.transData.transform((x, y))
        w, h = 0.62 * size * len(text), 1.4 * size  # the text box in pixels, roughly
        for dx, dy, ha in ((7, 2, "left"), (7, -h, "left"), (-7, 2, "right"), (-7, -h, "right")):
            x0 = px + dx - (w if ha == "right" else 0)
            box = (x0, py + dy, x0 + w, py + dy + h)
            if not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx * 72 / ax.figure.dpi, dy * 72 / ax.figure.dpi),
                    fontsize=size, ha=ha)


def summary_maps(images: Tensor, maps: dict[str, tuple[Sequence[Any], str]]) -> Figure:
    """Chapter 5's small multiples: the same images, then one row per method with its map of each.

    Args:
        images: ``(b, 3, H, W)``.
        maps: method label -> (``(b, g, g)`` nested lists, what the map shows).
    """
    cols = len(images)
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 2.4, 1.0 * rows), layout="constrained",
                             squeeze=False)
    for c in range(cols):
        _image(axes[0, c], images[c])
        for r, (m, _) in enumerate(maps.values(), start=1):
            _show(axes[r, c], np.asarray(m[c], dtype=float), cmap="viridis")
    axes[0, 0].set_ylabel("image", fontsize=7)
    for r, (label, (_, what)) in enumerate(maps.items(), start=1):
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        axes[r, -1].yaxis.set_label_position("right")
        axes[r, -1].set_ylabel(what, fontsize=6, rotation=0, ha="left", va="center")
    return fig


# One colour per verdict of regvit_lib.claims (and "not measured": no chapter recorded it).
VERDICT_COLORS = {"reproduced": "#2ca02c", "partly": "#bcbd22", "not at this scale": "#d9d9d9", "no labels": "#c6dbef",
                  "not measured": "#ffffff"}


def verdict_grid(rows: pd.DataFrame) -> Figure:
    """The conclusion at a glance: one row per claim, one column per model the verdicts stand on (the
    profile's models, each pretrained model), each cell coloured by its verdict.

    Args:
        rows: :func:`regvit_lib.conclusion.claims_rows`.
    """
    order = list(VERDICT_COLORS)
    unknown = set(rows["verdict"]) - set(order)
    if unknown:
        raise ValueError(f"verdict(s) {sorted(unknown)} have no colour; known: {order}")
    rows = rows.assign(where=np.where(rows["scale"] == "pretrained", rows["model"], "ours (" + rows["scale"] + ")"))
    codes = rows.pivot_table(index="id", columns="where", values="verdict", aggfunc="first", sort=False)
    codes = codes.reindex(list(dict.fromkeys(rows["id"])))
    fig, ax = plt.subplots(figsize=(1.2 + 1.5 * codes.shape[1], 0.26 * len(codes) + 0.8), layout="constrained")
    sns.heatmap(codes.map(lambda v: order.index(v) if isinstance(v, str) else np.nan), ax=ax, cbar=False,
                vmin=-0.5, vmax=len(order) - 0.5, cmap=plt.matplotlib.colors.ListedColormap(list(VERDICT_COLORS.values())),
                linewidths=0.5, linecolor="0.7", annot=codes.fillna(""), fmt="", annot_kws={"fontsize": 7})
    ax.set(xlabel="", ylabel="claim")
    ax.tick_params(axis="both", rotation=0)
    return fig


def _outlier_axis(ax: plt.Axes, x: Sequence[float], percent: Sequence[float]) -> plt.Axes:
    """A right-hand axis over ``ax`` with the share of outlier tokens (%) as a dashed black line."""
    ax2 = ax.twinx()
    ax2.plot(x, percent, color="black", ls="--", marker="x", label="outliers (%)")
    ax2.set_ylabel("outlier tokens (%)")
    ax2.set_ylim(0, max(1.0, 1.15 * max(percent, default=0.0)))  # a share is never negative; 0 sits on the floor
    ax2.grid(False)
    return ax2


def _fig_ax(ax: plt.Axes | None, size: tuple[float, float]) -> tuple[Figure, plt.Axes]:
    if ax is None:
        return plt.subplots(figsize=size, layout="constrained")
    return cast(Figure, ax.get_figure(root=True)), ax
