"""Figures. Each function takes data from the library and returns a matplotlib Figure.

Only this module imports matplotlib. Nothing here calls ``plt.show``; a chapter displays or
glues the returned figure, and ``fig.savefig("x.pdf")`` gives a thesis-ready vector file.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from .config import ModelConfig
from .data import SceneBatch

__all__ = ["use_style", "TOKEN_COLORS", "patch_grid", "token_layout", "register_overhead",
           "scenes_grid", "scene_labels", "training_curves"]

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
        H = batch.seg.shape[-1]
        g = H // patch_size
        obj = (batch.seg[index][: g * patch_size, : g * patch_size] > 0).reshape(g, patch_size, g, patch_size)
        empty = ~obj.any(3).any(1)  # (g, g): patches without an object pixel
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


def _fig_ax(ax: plt.Axes | None, size: tuple[float, float]) -> tuple[Figure, plt.Axes]:
    if ax is not None:
        fig = ax.get_figure(root=True)
        assert isinstance(fig, Figure)
        return fig, ax
    fig, new_ax = plt.subplots(figsize=size, layout="constrained")
    return fig, new_ax
