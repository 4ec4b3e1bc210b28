"""Look at one model's tokens interactively (:class:`Explorer`, ipywidgets) or on paper (:func:`static_views`).

Both draw the same maps, from :func:`view_map`: for one image and one block, the patch-token
norms over the image's median (the artifact of the paper's Fig. 3), the attention of [CLS], of a
register or of a chosen patch to the patches (Fig. 2, Fig. 9), or the PCA colours of the patch
tokens (Fig. 1). Every map is computed by :mod:`regvit_lib.analysis`; this module only picks,
checks and draws. The explorer needs a kernel; the rendered site shows :func:`static_views`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import torch
from torch import Tensor, nn

from .analysis import Features, attention_to_patches, collect, norms_at, pca_rgb, tokens_at
from .config import ConfigError
from .plots import _image, _show
from .summaries import norm_ratio

__all__ = ["VIEWS", "Explorer", "ExplorerState", "explore", "static_views", "view_map", "views_for"]

VIEWS: dict[str, str] = {"norm": "token norm / image median", "cls": "attention of [CLS]",
                         "register": "attention of a register", "patch": "attention of a chosen patch",
                         "pca": "PCA colours of the patch tokens"}
_ATTENTION = ("cls", "register", "patch")
_CMAP = {"norm": "magma", "cls": "viridis", "register": "viridis", "patch": "viridis"}  # PCA is RGB
_UNIT = {"norm": "norm / median", "cls": "attention", "register": "attention", "patch": "attention"}
_TITLE = {"norm": "norm / median", "cls": "[CLS] attention", "register": "register {} attention",
          "patch": "patch {} attention", "pca": "PCA of the patches"}


def _unavailable(feats: Features, view: str) -> str | None:
    """Why ``feats`` cannot show ``view``; ``None`` when it can."""
    if view == "register" and not feats.cfg.num_registers:
        return "no registers"
    if view == "cls" and not feats.cfg.class_token:
        return "no [CLS] token"
    if view in _ATTENTION and feats.attn is None:
        return "no attention maps (collect with attn=True)"
    return None


def views_for(feats: Features) -> list[str]:
    """The views of :data:`VIEWS` that these features can show."""
    return [v for v in VIEWS if _unavailable(feats, v) is None]


def _index(name: str, value: object, n: int, what: str, from_end: bool = False) -> int:
    """``value`` as an index in ``0 .. n-1`` (``-n .. -1`` too, if ``from_end``); else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (-n if from_end else 0) <= value < n:
        ends = f" (or {-n}..-1 from the end)" if from_end else ""
        raise ConfigError(f"{name}={value!r} is out of range: {what}, so 0..{n - 1}{ends}")
    return int(value) % n


def view_map(feats: Features, image: int, block: int, view: str, head: int | None = None,
             query: int = 0) -> np.ndarray:
    """One view of one image at one block, as drawn by :class:`Explorer` and :func:`static_views`.

    Args:
        feats: from :func:`~regvit_lib.analysis.collect` with ``attn=True`` (``"norm"`` and
            ``"pca"`` need no attention).
        image: index into ``feats.images``.
        block: block index (``-1``: the last).
        view: a key of :data:`VIEWS`.
        head: attention head; ``None``: the mean over heads. Attention views only.
        query: the register index (``"register"``) or the row-major patch index (``"patch"``).

    Returns ``(g, g)``; ``(g, g, 3)`` in [0, 1] for ``"pca"``, whose PCA is fitted over all of
    ``feats``' images at that block (:func:`~regvit_lib.analysis.pca_rgb`). An unknown view, one
    the model cannot show, or an index out of range raises a :class:`ConfigError`.
    """
    if view not in VIEWS:
        raise ConfigError(f"unknown view {view!r}; known views: {list(VIEWS)}")
    if (why := _unavailable(feats, view)) is not None:
        raise ConfigError(f"view {view!r} cannot be shown: the model has {why}; it can show {views_for(feats)}")
    cfg, g, n_img, depth = feats.cfg, feats.grid, len(feats.images), feats.norms.shape[1]
    i = _index("image", image, n_img, f"there are {n_img} images")
    b = _index("block", block, depth, f"the model has {depth} blocks", from_end=True)
    if view == "norm":
        return norm_ratio(norms_at(feats, b)["patch"][i]).reshape(g, g).numpy()
    if view == "pca":
        return pca_rgb(tokens_at(feats, b)["patch"], g)[i].numpy()
    assert feats.attn is not None  # checked by _unavailable
    heads = feats.attn.shape[2]
    h = None if head is None else _index("head", head, heads, f"the model has {heads} heads (None: their mean)")
    f = feats if h is None else replace(feats, attn=feats.attn[:, :, h : h + 1])  # the mean of one head is that head
    if view == "cls":
        return attention_to_patches(f, "cls", b)[i].numpy()
    if view == "register":
        R = cfg.num_registers
        r = _index("query", query, R, f"the register view takes a register index; there are {R} registers")
        return attention_to_patches(f, r, b)[i].numpy()
    p = _index("query", query, cfg.num_patches, f"the patch view takes a row-major patch index; there are "
               f"{cfg.num_patches} patches ({g}x{g})")
    assert f.attn is not None
    P = cfg.num_prefix_tokens
    return f.attn[i, b].mean(0)[P + p, P:].reshape(g, g).numpy()  # a patch query: not in attention_to_patches


def _check_images(images: Tensor, names: Sequence[str] | None) -> list[str]:
    """The images' names (default ``image i``), after checking ``images`` is ``(B, 3, H, W)`` with ``B >= 1``."""
    if images.ndim != 4 or images.shape[1] != 3 or not len(images):
        raise ConfigError(f"images must be (B, 3, H, W) in [0, 1] with B >= 1, got shape {tuple(images.shape)}")
    out = [f"image {i}" for i in range(len(images))] if names is None else [str(n) for n in names]
    if len(out) != len(images):
        raise ConfigError(f"image_names has {len(out)} names for {len(images)} images")
    return out


class ExplorerState(NamedTuple):
    """What the explorer shows: model name, image index, block, head (``None``: mean), view, query."""

    model: str
    image: int
    block: int
    head: int | None
    view: str
    query: int


class Explorer:
    """Widgets over one figure: an image and one :func:`view_map` of it, with a colour bar.

    Args:
        models: name -> model (a :class:`~regvit_lib.model.RegViT` or a timm ViT); each is run
            once, when first chosen, with attention kept.
        images: ``(B, 3, H, W)`` in [0, 1]; resized to each model's input size when it differs.
        image_names: one name per image (default ``image i``).

    ``controls`` holds the widgets (``model``, ``image``, ``block``, ``head``, ``view``, ``query``);
    their ranges follow the model (depth, heads, views it can show) and the view (registers or
    patches). ``widget`` is what a notebook displays; ``fig`` is redrawn into an ``Output`` on
    every change, its artists updated in place.
    """

    def __init__(self, models: Mapping[str, nn.Module], images: Tensor, image_names: Sequence[str] | None = None):
        import ipywidgets as W

        if not models:
            raise ConfigError(f"models is empty ({models!r}); give at least one name -> model")
        self.models, self.images = dict(models), images.detach().cpu()
        self.image_names = _check_images(self.images, image_names)
        self._feats: dict[str, Features] = {}
        self.controls: dict[str, Any] = {
            "model": W.Dropdown(options=list(self.models), description="model"),
            "image": W.Dropdown(options=[(n, i) for i, n in enumerate(self.image_names)], description="image"),
            "view": W.ToggleButtons(options=list(VIEWS), tooltips=list(VIEWS.values()), description="view"),
            "block": W.IntSlider(value=0, min=0, max=0, description="block"),
            "head": W.Dropdown(options=["mean"], description="head"),
            "query": W.IntSlider(value=0, min=0, max=0, description="query"),
        }
        self.fig, (ax_img, self._ax) = plt.subplots(1, 2, figsize=(7.6, 3.5), layout="constrained")
        plt.close(self.fig)  # shown only through the Output, never by the inline backend as well
        _image(ax_img, self.images[0])
        self._img = ax_img.images[-1]
        self._marker = ax_img.add_patch(Rectangle((0, 0), 1, 1, fill=False, ec="red", lw=1.5, visible=False))
        self._im = _show(self._ax, np.zeros((1, 1)))
        self._cbar = self.fig.colorbar(self._im, ax=self._ax, shrink=0.85)
        self._map = np.zeros((1, 1))
        self.output = W.Output()
        c = self.controls
        self.widget = W.VBox([W.HBox([c["model"], c["image"], c["head"]]), c["view"],
                              W.HBox([c["block"], c["query"]]), self.output])
        self._busy = False
        for w in c.values():
            w.observe(self._changed, names="value")
        self._follow_model()
        self._render()

    def __repr__(self) -> str:
        return f"Explorer(models={list(self.models)}, images={len(self.images)}, state={tuple(self.state())})"
    def features(self, model: str) -> Features:
        """The features of one model over the images: collected once, with attention."""
        if model not in self._feats:
            self._feats[model] = collect(self.models[model], _at_input_size(self.images, self.models[model]), attn=True)
        return self._feats[model]

    def state(self) -> ExplorerState:
        """What the controls say now."""
        c = self.controls
        head = c["head"].value
        return ExplorerState(c["model"].value, int(c["image"].value), int(c["block"].value),
                             None if head == "mean" else int(head), c["view"].value, int(c["query"].value))

    def current_map(self) -> np.ndarray:
        """The array the map shows now."""
        return self._map
    def _changed(self, change: dict[str, Any]) -> None:
        if self._busy:  # a range being adjusted below; the render follows
            return
        self._busy = True
        try:
            if change["owner"] is self.controls["model"]:
                self._follow_model()
            elif change["owner"] is self.controls["view"]:
                self._follow_view()
        finally:
            self._busy = False
        self._render()

    def _follow_model(self) -> None:
        """Block range, heads and views of the chosen model."""
        c, f = self.controls, self.features(self.controls["model"].value)
        c["block"].max = f.norms.shape[1] - 1
        heads = 0 if f.attn is None else f.attn.shape[2]
        head = c["head"].value
        c["head"].options = ["mean", *range(heads)]
        c["head"].value = head if head == "mean" or head < heads else "mean"
        view, views = c["view"].value, views_for(f)
        c["view"].options, c["view"].tooltips = views, [VIEWS[v] for v in views]
        c["view"].value = view if view in views else "norm"
        self._follow_view()

    def _follow_view(self) -> None:
        """The query slider: registers for the register view, patches for the patch view, else off."""
        c, cfg = self.controls, self.features(self.controls["model"].value).cfg
        view = c["view"].value
        n = {"register": cfg.num_registers, "patch": cfg.num_patches}.get(view, 0)
        c["query"].max, c["query"].disabled = max(n - 1, 0), n == 0
        c["query"].description = view if n else "query"

    def _render(self) -> None:
        from IPython import get_ipython
        from IPython.display import clear_output, display

        s, f = self.state(), self.features(self.controls["model"].value)
        m, g = view_map(f, s.image, s.block, s.view, s.head, s.query), f.grid
        self._map = m
        shown = f.images[s.image]  # at the model's input size
        H, W = shown.shape[-2:]
        self._img.set_data(shown.permute(1, 2, 0).clamp(0, 1).numpy())
        self._img.set_extent((-0.5, W - 0.5, H - 0.5, -0.5))
        self._img.axes.set_title(f"{s.model}: {self.image_names[s.image]}", fontsize=9)
        row, col = divmod(s.query, g)
        self._marker.set(xy=(col * W / g - 0.5, row * H / g - 0.5), width=W / g, height=H / g,
                         visible=s.view == "patch")
        self._im.set_data(m)
        self._im.set_extent((-0.5, g - 0.5, g - 0.5, -0.5))
        scalar = m.ndim == 2
        if scalar:
            self._im.set_cmap(_CMAP[s.view])
            self._im.set_clim(float(m.min()), max(float(m.max()), float(m.min()) + 1e-12))
            self._cbar.set_label(_UNIT[s.view])
        self._cbar.ax.set_visible(scalar)
        head = "" if s.view in ("norm", "pca") else f", {'mean of heads' if s.head is None else f'head {s.head}'}"
        self._ax.set_title(f"{_TITLE[s.view].format(s.query)}, block {s.block}{head}", fontsize=9)
        if get_ipython() is not None:  # a kernel (or IPython) to show it; a script or test only updates the figure
            with self.output:
                clear_output(wait=True)
                display(self.fig)


def _at_input_size(images: Tensor, model: nn.Module) -> Tensor:
    """``images`` resized (antialiased) to the model's input size when it differs: one set of photographs
    serves our 32 px models and a pretrained 224 px one alike."""
    cfg = getattr(model, "cfg", None)
    size = int(cfg.img_size if cfg is not None else getattr(model, "patch_embed").img_size[0])  # ours, or timm's
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


def explore(models: Mapping[str, nn.Module], images: Tensor, image_names: Sequence[str] | None = None) -> Explorer:
    """An :class:`Explorer`, displayed (in a notebook)."""
    from IPython.display import display

    ex = Explorer(models, images, image_names)
    display(ex.widget)
    return ex


def static_views(models: Mapping[str, nn.Module], images: Tensor, blocks: Sequence[int],
                 views: Sequence[str] = ("norm", "cls", "register", "pca"), head: int | None = None,
                 query: int = 0, image_names: Sequence[str] | None = None) -> Figure:
    """The explorer on paper: small multiples of :func:`view_map`.

    Rows: the inputs, then one row per (model, block); columns: each view over every image. A
    scalar view has one colour scale over all its cells (a colour bar below it); a view a model
    cannot show (the register view without registers) is left blank with a note.

    Args:
        models: name -> model, as for :class:`Explorer`.
        images: ``(b, 3, H, W)`` in [0, 1]; a few (2-3): the figure stays under 11 inches wide, and
            the PCA colours are fitted over these images.
        blocks: the blocks shown of every model (``-1``: its last).
        views: keys of :data:`VIEWS`.
        head: attention head of the attention views; ``None``: the mean over heads.
        query: the register (register view) or patch (patch view) whose attention is drawn.
    """
    names = _check_images(images, image_names)
    if unknown := [v for v in views if v not in VIEWS]:
        raise ConfigError(f"unknown view(s) {unknown}; known views: {list(VIEWS)}")
    if not models or not blocks or not views:
        raise ConfigError(f"static_views needs models, blocks and views; got {list(models)}, {list(blocks)}, "
                          f"{list(views)}")
    feats = {name: collect(m, _at_input_size(images, m), attn=True) for name, m in models.items()}
    rows = [(name, b) for name in feats for b in blocks]
    n, cols = len(images), len(views) * len(images)
    cell = min(1.2, 9.4 / cols)
    fig, axes = plt.subplots(1 + len(rows), cols, figsize=(1.4 + cell * cols, 0.9 + cell * (1 + len(rows))),
                             layout="constrained", squeeze=False)
    for v, view in enumerate(views):
        maps = {}
        for r, (name, b) in enumerate(rows, start=1):
            for k in range(n):
                if (why := _unavailable(feats[name], view)) is None:
                    maps[r, v * n + k] = view_map(feats[name], k, b, view, head, query)
                else:
                    ax = axes[r, v * n + k]  # left blank: a square frame with the reason
                    ax.set(xticks=[], yticks=[], box_aspect=1)
                    ax.grid(False)
                    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=6, wrap=True, transform=ax.transAxes)
        scalar = [m for m in maps.values() if m.ndim == 2] or [np.zeros(1)]
        lo, hi = min(float(m.min()) for m in scalar), max(float(m.max()) for m in scalar)
        im = [_show(axes[rc], m, cmap=_CMAP.get(view), vmin=lo, vmax=max(hi, lo + 1e-12)) for rc, m in maps.items()]
        for k in range(n):
            _image(axes[0, v * n + k], images[k])
            # the view's name once, over the middle image of its group; every image its own name
            axes[0, v * n + k].set_title(f"{_TITLE[view].format(query)}\n{names[k]}" if k == n // 2 else f"\n{names[k]}",
                                         fontsize=7)
        if view != "pca" and im:
            fig.colorbar(im[-1], ax=list(axes[1:, v * n : (v + 1) * n].ravel()), location="bottom", shrink=0.9,
                         aspect=12, label=_UNIT[view])
    axes[0, 0].set_ylabel("input", fontsize=7, rotation=0, ha="right", va="center")
    for r, (name, b) in enumerate(rows, start=1):
        depth = feats[name].norms.shape[1]
        axes[r, 0].set_ylabel(f"{name}\nblock {_index('block', b, depth, f'{name} has {depth} blocks', True)}",
                              fontsize=7, rotation=0, ha="right", va="center")
    return fig
