"""Figures. Each function takes data from the library and returns a matplotlib Figure.

Only this module imports matplotlib. Nothing here calls ``plt.show``; a chapter displays or
glues the returned figure, and ``fig.savefig("x.pdf")`` gives a thesis-ready vector file (the
format follows the suffix).
"""

from __future__ import annotations

from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter
import torch
from torch import Tensor

from .config import ModelConfig
from .scenes import SceneBatch, background_patches

__all__ = ["use_style", "TOKEN_COLORS", "patch_grid", "token_layout", "register_overhead",
           "scenes_grid", "scene_labels", "training_curves", "norm_histogram", "norms_per_layer",
           "attention_maps", "neighbour_similarity", "emergence",
           "sinks_per_layer", "norms_vs_size", "register_ablation", "resolution_maps"]

# One colour per token kind, used by every figure of the book.
TOKEN_COLORS = {"cls": "#d62728", "reg": "#2ca02c", "patch": "#1f77b4"}


def use_style() -> None:
    """The book's one matplotlib theme."""
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 200,
            "savefig.bbox": "tight",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "font.size": 10,
            "axes.titlesize": 11,
            "legend.frameon": False,
        }
    )


def patch_grid(image: Tensor, patch_size: int, ax: plt.Axes | None = None) -> Figure:
    """An image ``(3, H, W)`` or ``(1, 3, H, W)`` with its patch grid and patch indices drawn on."""
    img = image.squeeze(0).permute(1, 2, 0).detach().cpu().numpy()
    H, W = img.shape[:2]
    fig, ax = _fig_ax(ax, (4.2, 4.2))
    ax.imshow(img, extent=(0, W, H, 0))
    for t in range(patch_size, W, patch_size):
        ax.axvline(t, color="white", lw=0.8)
    for t in range(patch_size, H, patch_size):
        ax.axhline(t, color="white", lw=0.8)
    g = W // patch_size
    if g <= 16:
        for i in range(g * (H // patch_size)):
            r, c = divmod(i, g)
            ax.text((c + 0.5) * patch_size, (r + 0.5) * patch_size, str(i + 1), color="white",
                    ha="center", va="center", fontsize=max(5, 9 - g // 3))
    ax.set_title(f"{H}×{W} px → {g * (H // patch_size)} patches of {patch_size}×{patch_size}")
    _bare(ax)
    return fig


def token_layout(cfg: ModelConfig, max_patches: int = 12, ax: plt.Axes | None = None) -> Figure:
    """The input sequence of a ViT: [CLS], registers (no position) and patches (+ position)."""
    kinds = ["cls"] * int(cfg.class_token) + ["reg"] * cfg.num_registers
    shown = min(cfg.num_patches, max_patches)
    kinds += ["patch"] * shown
    fig, ax = _fig_ax(ax, (max(6.0, 0.55 * (len(kinds) + 2)), 1.9))
    labels = {"cls": "[CLS]", "reg": "reg", "patch": "patch"}
    x = 0.0
    for i, kind in enumerate(kinds):
        ax.add_patch(Rectangle((x, 0), 0.9, 1, color=TOKEN_COLORS[kind], alpha=0.85))
        n = i - len(kinds) + shown + 1 if kind == "patch" else (i + 1 - int(cfg.class_token))
        text = labels[kind] if kind == "cls" else f"{labels[kind]}\n{n}"
        ax.text(x + 0.45, 0.5, text, ha="center", va="center", color="white", fontsize=7)
        ax.text(x + 0.45, -0.35, "+pos" if kind == "patch" else "no pos", ha="center", fontsize=6)
        x += 1.0
    if shown < cfg.num_patches:
        ax.text(x + 0.3, 0.5, f"… {cfg.num_patches} patches in all", va="center", fontsize=8)
        x += 3.0
    ax.set_xlim(-0.2, x + 0.2)
    ax.set_ylim(-0.6, 1.2)
    ax.axis("off")
    ax.set_title(
        f"{cfg.num_tokens} tokens = {int(cfg.class_token)} [CLS] + {cfg.num_registers} registers "
        f"+ {cfg.num_patches} patches"
    )
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
    ax.set_xlabel("number of registers")
    ax.set_ylabel("extra forward FLOPs (%)")
    ax.legend(fontsize=8)
    return fig


def _bare(ax: plt.Axes) -> None:
    """An axes for a picture: no ticks, no grid."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _image(ax: plt.Axes, img: Tensor) -> None:
    ax.imshow(img.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
    _bare(ax)


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
    for box, ok in zip(batch.boxes[index], batch.box_valid[index]):
        if ok:
            x0, y0, x1, y1 = box.tolist()
            axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.2, ec="white"))
    axes[0].set_title("image + boxes")
    axes[1].imshow(batch.seg[index].cpu().numpy(), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    axes[1].set_title("segmentation")
    dep = axes[2].imshow(batch.depth[index].cpu().numpy(), cmap="magma_r", vmin=0, vmax=1, interpolation="nearest")
    axes[2].set_title("depth")
    fig.colorbar(dep, ax=axes[2], shrink=0.8)
    if patch_size:
        g = batch.seg.shape[-1] // patch_size
        empty = background_patches(batch.seg[index : index + 1], patch_size).reshape(g, g)  # no object pixel
        _image(axes[3], batch.image[index])
        for gy, gx in empty.nonzero().tolist():
            axes[3].add_patch(Rectangle((gx * patch_size - 0.5, gy * patch_size - 0.5), patch_size, patch_size,
                                        fc="white", alpha=0.75, ec="none"))
        axes[3].set_title(f"{int(empty.sum())} of {g * g} patches ({patch_size} px)\nare background only (white)",
                          fontsize=9)
    for ax in axes[1:]:
        _bare(ax)
    return fig


def training_curves(curves: list[dict], layers: list[int] | None = None) -> Figure:
    """Validation accuracy and, per layer, the mean max/median patch-norm ratio over training.

    Args:
        curves: :attr:`regvit_lib.train.TrainedRun.curves`.
        layers: which blocks to draw (default: all).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.2), layout="constrained")
    steps = [c["step"] for c in curves]
    a.plot(steps, [c["val_acc"] for c in curves], marker="o", label="validation accuracy")
    a.set_xlabel("training step")
    a.set_ylabel("accuracy")
    depth = len(curves[0]["norms"])
    cmap = plt.get_cmap("viridis")
    for layer in layers if layers is not None else range(depth):
        b.plot(steps, [c["norms"][layer]["ratio_mean"] for c in curves], color=cmap(layer / max(depth - 1, 1)),
               label=f"block {layer}")
    b.set_xlabel("training step")
    b.set_ylabel("max / median patch norm\n(mean over images)")
    b.legend(fontsize=7, ncol=2)
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
    patch = norms["patch"].flatten()
    hi = float(torch.cat([v.flatten() for v in norms.values() if v.numel()]).max())
    bins = torch.linspace(0, hi * 1.02, 60).tolist()
    ax.hist(patch.tolist(), bins=bins, color=TOKEN_COLORS["patch"], alpha=0.8, label="patch tokens")
    for kind in ("cls", "reg"):
        if kind in norms and norms[kind].numel():
            ax.hist(norms[kind].flatten().tolist(), bins=bins, color=TOKEN_COLORS[kind], alpha=0.8,
                    label="[CLS]" if kind == "cls" else "registers")
    if k is not None:
        ax.axvline(k * float(patch.median()), color="black", ls="--", lw=1, label=f"{k:g} x median")
    ax.set_yscale("log")
    ax.set_xlabel("token norm")
    ax.set_ylabel("tokens")
    if label:
        ax.set_title(label)
    ax.legend(fontsize=8)
    return fig


def norms_per_layer(ratio_max: Tensor, share: Tensor | None = None, ax: plt.Axes | None = None) -> Figure:
    """Paper Fig. 4a: per layer, the largest patch norm over its image's median (and outlier share).

    Args:
        ratio_max: ``(B, L)`` per image and layer, max patch norm / median patch norm.
        share: optional ``(L,)`` share of outlier tokens per layer (right axis).
    """
    fig, ax = _fig_ax(ax, (5.0, 3.2))
    L = ratio_max.shape[1]
    layers = list(range(L))
    q = torch.quantile(ratio_max.float(), torch.tensor([0.1, 0.5, 0.9]), dim=0)
    ax.fill_between(layers, q[0].tolist(), q[2].tolist(), alpha=0.25, color=TOKEN_COLORS["patch"], label="10-90 %")
    ax.plot(layers, q[1].tolist(), marker="o", color=TOKEN_COLORS["patch"], label="median image")
    ax.set_xlabel("block")
    ax.set_ylabel("max / median patch norm")
    if share is not None:
        ax2 = ax.twinx()
        ax2.plot(layers, (100 * share).tolist(), color="black", ls="--", marker="x", label="outliers (%)")
        ax2.set_ylabel("outlier tokens (%)")
        ax2.grid(False)
    ax.legend(fontsize=8, loc="upper left")
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
        for r, (name, m) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(m[c].cpu().numpy(), cmap="viridis", interpolation="nearest")
            _bare(axes[r, c])
            if c == 0:
                axes[r, c].set_ylabel(name, fontsize=8)
    axes[0, 0].set_ylabel("image", fontsize=8)
    return fig


def neighbour_similarity(similarity: Tensor, outlier_mask: Tensor, ax: plt.Axes | None = None) -> Figure:
    """Paper Fig. 5a: cosine similarity to the 4 neighbours, normal vs outlier patches.

    Args:
        similarity: ``(B, N)`` from :func:`regvit_lib.analysis.neighbour_similarity`.
        outlier_mask: ``(B, N)`` bool.
    """
    fig, ax = _fig_ax(ax, (4.6, 3.0))
    bins = torch.linspace(float(similarity.min()), float(similarity.max()) + 1e-6, 40).tolist()
    ax.hist(similarity[~outlier_mask].tolist(), bins=bins, density=True, alpha=0.7,
            color=TOKEN_COLORS["patch"], label="normal")
    if outlier_mask.any():
        ax.hist(similarity[outlier_mask].tolist(), bins=bins, density=True, alpha=0.7, color="orange",
                label="outlier")
    ax.set_xlabel("cosine similarity to neighbours (patch embedding)")
    ax.set_ylabel("density")
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
    axes = sorted({r["axis"] for r in rows})
    colours = [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)] + ["black"] * 9  # no grey: the curves are grey
    for i, axis in enumerate(axes):
        pts = [r for r in rows if r["axis"] == axis]
        x = [r["train_flops"] for r in pts]
        a.scatter(x, [r["final_ratio_mean"] for r in pts], color=colours[i], label=axis, zorder=3)
        b.scatter(x, [r["final_sink_mass"] for r in pts], color=colours[i], label=axis, zorder=3)
    for r in rows:
        if r["axis"] in along:
            c = [p for p in r["curve"] if p["train_flops"] > 0]
            a.plot([p["train_flops"] for p in c], [p["ratio_mean"] for p in c], color="grey", lw=0.8, alpha=0.6)
            b.plot([p["train_flops"] for p in c], [p["sink_mass"] for p in c], color="grey", lw=0.8, alpha=0.6)
    if paper_ratio:
        a.axhline(paper_ratio, color="black", ls="--", lw=1, label=f"paper's outliers (~{paper_ratio:g}x)")
    for ax, ylabel in ((a, "max / median patch norm"), (b, "sink: attention mass on one key")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(ylabel)
    a.set_yscale("log")
    a.yaxis.set_major_locator(FixedLocator([1, 1.5, 2, 3, 5, 10]))
    a.yaxis.set_major_formatter(ScalarFormatter())
    a.yaxis.set_minor_formatter(NullFormatter())
    xs = [p["train_flops"] for r in rows for p in r["curve"] if p["train_flops"] > 0]
    for ax in (a, b):  # whole decades, so the axis always has labelled ticks
        ax.set_xlim(10 ** np.floor(np.log10(min(xs))), 10 ** np.ceil(np.log10(max(xs))))
    a.legend(fontsize=7, loc="center left", bbox_to_anchor=(0.0, 0.62), ncol=2)
    return fig


def sinks_per_layer(tables: dict[str, pd.DataFrame], ax: plt.Axes | None = None) -> Figure:
    """Per block, the attention share of the strongest sink, one line per model; the marker
    says which token the sink is (circle: a patch, square: [CLS], triangle: a register).

    Args:
        tables: model name -> :func:`regvit_lib.measure.sinks` table.
    """
    fig, ax = _fig_ax(ax, (5.0, 3.0))
    markers = {"patch": "o", "cls": "s", "reg": "^"}
    for i, (name, t) in enumerate(tables.items()):
        colour = f"C{i}"
        ax.plot(t["block"], t["sink_mass"], color=colour, label=name)
        for kind, marker in markers.items():
            sel = t["sink_on"] == kind
            ax.scatter(t["block"][sel], t["sink_mass"][sel], marker=marker, color=colour, s=40, zorder=3)
    for kind, marker in markers.items():  # a legend entry per token kind
        ax.scatter([], [], marker=marker, color="grey", label=f"sink on {'[CLS]' if kind == 'cls' else kind}")
    ax.set_xlabel("block")
    ax.set_ylabel("attention share of the strongest sink")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
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
    ax.set_xscale("log")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("max / median patch norm")
    ax2 = ax.twinx()
    ax2.plot(x, [100 * r["share"] for r in rows], marker="x", ls="--", color="black", label="outliers (%)")
    ax2.set_ylabel("outlier tokens (%)")
    ax2.grid(False)
    for xi, r in zip(x, rows):
        ax.annotate(r["name"], (xi, r["ratio_mean"]), fontsize=7, textcoords="offset points", xytext=(0, 6),
                    ha="center")
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="lower right")
    return fig


def register_ablation(grid: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """Paper Fig. 8: artifact maps on top (one image's patch-norm / median map per register
    count, first seed), and below the three probes against the number of registers (mean over
    seeds, bars: standard deviation when there are several seeds).

    Args:
        grid: :func:`regvit_lib.ablations.register_grid`; summary: its ``grid_summary``.
    """
    counts = list(summary["registers"])
    fig = plt.figure(figsize=(1.5 * max(len(counts), 4), 5.2), layout="constrained")
    top, bottom = cast(Any, fig.subfigures(2, 1, height_ratios=[1, 1.3]))
    maps = top.subplots(1, len(counts), squeeze=False)[0]
    first = grid.sort_values("seed").groupby("registers").first()
    hi = max(float(np.max(m)) for m in first["norm_map"])
    for ax, c in zip(maps, counts):
        im = ax.imshow(np.asarray(first.loc[c, "norm_map"]), cmap="magma", vmin=0, vmax=hi, interpolation="nearest")
        ax.set_title(f"{c} reg.", fontsize=8)
        _bare(ax)
    top.colorbar(im, ax=list(maps), shrink=0.8, label="norm / median")
    panels = bottom.subplots(1, 3)
    x = np.arange(len(counts))
    for ax, col, title in zip(panels, ("classification", "segmentation_miou", "depth_rmse"),
                              ("classification (acc)", "segmentation (mIoU)", "depth (RMSE, lower is better)")):
        sd = summary.get(f"{col} sd")
        ax.errorbar(x, summary[col], yerr=None if sd is None or sd.isna().all() else sd, marker="o", capsize=3,
                    color=TOKEN_COLORS["reg"])
        ax.set_xticks(x, [str(c) for c in counts])
        ax.set_xlabel("registers")
        ax.set_title(title, fontsize=9)
    return fig


def resolution_maps(study: pd.DataFrame) -> Figure:
    """App. A: the mean per-position norm / median map at each resolution, with and without
    antialiased interpolation of the position embedding."""
    sizes = sorted(study["img_size"].unique())
    fig, axes = plt.subplots(2, len(sizes), figsize=(2.4 * len(sizes), 4.6), layout="constrained", squeeze=False)
    for j, size in enumerate(sizes):
        for i, aa in enumerate((True, False)):
            row = study[(study["img_size"] == size) & (study["antialias"] == aa)].iloc[0]
            axes[i, j].imshow(np.asarray(row["mean_map"]), cmap="magma", interpolation="nearest")
            axes[i, j].set_title(f"{size} px, {'antialiased' if aa else 'no antialias'}\n"
                                 f"stripe {row['stripe']:.2f}", fontsize=8)
            _bare(axes[i, j])
    return fig


def _fig_ax(ax: plt.Axes | None, size: tuple[float, float]) -> tuple[Figure, plt.Axes]:
    if ax is not None:
        fig = ax.get_figure(root=True)
        assert isinstance(fig, Figure)
        return fig, ax
    fig, new_ax = plt.subplots(figsize=size, layout="constrained")
    return fig, new_ax
