"""Data for the book: procedural "scenes", real photographs, and torchvision data sets.

**Scenes** (:func:`render_scenes`) are the default data. No data set can be downloaded here,
and the phenomenon of the paper lives on *redundant background patches* (Darcet et al. 2024,
Sec. 2.2: outliers sit on patches that look like their neighbours), so the generator makes
exactly what the study needs, with every label its evaluations use:

* a few objects (circle, square, triangle, diamond, cross, ring), each alone in its own cell of
  a jittered grid, so objects never overlap and every label is exact;
* a large background whose redundancy is a knob: ``flat`` colour, smooth ``gradient``,
  low-frequency ``noise``, or a striped ``texture``;
* a class label that needs *global* information, never readable from one patch:
  ``task="count"`` (default), **how many objects** there are (1 to ``max_objects``); or
  ``task="majority"``, **which shape is most numerous** -- the majority shape appears ``m``
  times (2 <= m <= ``max_per_shape``) and every other shape strictly fewer times. Counting
  is the default because a small ViT learns it within the ``cpu`` budget (41 % validation
  accuracy over 9 classes after 300 steps, against 31 % over 4 classes for the majority task);
* a segmentation mask (0 = background, ``1 + shape`` on object pixels), a depth map (objects
  at depths in [0.2, 0.8], nearer objects drawn larger as in a perspective view; background
  at 1.0), and one box per object.

Every random number is a hash of ``(data seed, split, image index, slot)`` (SplitMix64), so an
image depends only on its seed, split and index: any batch can be re-rendered in any order, on
any device, and the splits (``train``/``val``/``test`` hash different keys) never share an
image. Rendering is vectorised over the batch in torch, so it also runs on a GPU.

**Real data** (:class:`ImageData`) goes through the same batch interface: CIFAR-10, STL-10 and
Imagenette through torchvision when a download is possible, or any folder of images laid out
``root/<split>/<class>/<image>``. Real data sets carry class labels only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .config import ConfigError, _check_choice, _check_int

__all__ = [
    "SHAPES", "BACKGROUNDS", "SPLITS", "ScenesConfig", "SceneBatch", "render_scenes",
    "FractalConfig", "render_fractals", "ImageData", "DataConfig", "DataSource", "make_source", "batch_indices", "sample_photo",
    "normalize", "IMAGENET_MEAN", "IMAGENET_STD", "scene_stats",
]

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
BACKGROUNDS = ("flat", "gradient", "noise", "texture")
Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)

_NOISE_GRID = 4  # low-frequency noise: a 4 x 4 grid of random colours, smoothly upsampled


@dataclass(frozen=True)
class ScenesConfig:
    """The procedural scenes data set. Two equal configs render identical images.

    The number of objects is decided by the label scheme: ``len(shapes) - 1`` minority shapes
    with 0..m-1 copies each plus ``m`` copies of the majority shape, so at most
    ``max_per_shape + (len(shapes) - 1) * (max_per_shape - 1)`` objects, one per grid cell.
    """

    img_size: int = 32
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")  # class i = shapes[i]
    task: Literal["count", "majority"] = "count"  # the class label: see the module docstring
    max_per_shape: int = 3  # the majority shape appears 2..max_per_shape times
    backgrounds: tuple[str, ...] = BACKGROUNDS  # each image draws one kind uniformly
    object_size: tuple[float, float] = (0.45, 0.9)  # object radius, as a fraction of half a cell
    object_texture: float = 0.0  # probability that an object is striped
    train_size: int = 50_000
    val_size: int = 2_000
    test_size: int = 2_000
    seed: int = 0  # identity of the data set (independent of the training seed)
    kind: Literal["scenes"] = "scenes"

    def __post_init__(self) -> None:
        _check_int("img_size", self.img_size, 8)
        _check_int("max_per_shape", self.max_per_shape, 2)
        _check_int("seed", self.seed, 0)
        for split in SPLITS:
            _check_int(f"{split}_size", getattr(self, f"{split}_size"), 1)
        for name, values, known in (("shapes", self.shapes, SHAPES), ("backgrounds", self.backgrounds, BACKGROUNDS)):
            if not isinstance(values, tuple) or not values:
                raise ConfigError(f"{name} must be a non-empty tuple, got {values!r}")
            bad = [v for v in values if v not in known]
            if bad or len(set(values)) != len(values):
                raise ConfigError(f"{name} must be distinct values from {known}, got {values!r}")
        if len(self.shapes) < 2:
            raise ConfigError(f"the majority task needs >= 2 shapes, got {self.shapes!r}")
        lo, hi = self.object_size
        if not 0.1 <= lo <= hi <= 1.0:
            raise ConfigError(f"object_size must satisfy 0.1 <= lo <= hi <= 1, got {self.object_size!r}")
        if not 0.0 <= self.object_texture <= 1.0:
            raise ConfigError(f"object_texture must be in [0, 1], got {self.object_texture!r}")
        _check_choice("kind", self.kind, Literal["scenes"])
        _check_choice("task", self.task, Literal["count", "majority"])
        if self.cell_size < 5:
            raise ConfigError(
                f"img_size={self.img_size} leaves {self.cell_size:.1f}-pixel grid cells for "
                f"{self.max_objects} objects; use a larger image or fewer objects (>= 5 px per cell)"
            )

    @property
    def num_classes(self) -> int:
        return len(self.shapes) if self.task == "majority" else self.max_objects

    @property
    def max_objects(self) -> int:
        return self.max_per_shape + (len(self.shapes) - 1) * (self.max_per_shape - 1)

    @property
    def grid(self) -> int:
        """Cells per side of the object grid."""
        return math.ceil(math.sqrt(self.max_objects))

    @property
    def cell_size(self) -> float:
        return self.img_size / self.grid

    def split_size(self, split: str) -> int:
        _check_choice("split", split, Split)
        return int(getattr(self, f"{split}_size"))


class SceneBatch(NamedTuple):
    """A rendered batch. ``K`` is :attr:`ScenesConfig.max_objects`; unused slots are invalid."""

    image: Tensor  # (B, 3, H, W) float in [0, 1]
    label: Tensor  # (B,) int64: index of the most numerous shape
    seg: Tensor  # (B, H, W) int64: 0 background, 1 + shape index on object pixels
    depth: Tensor  # (B, H, W) float: object depth in [0.2, 0.8], background 1.0
    boxes: Tensor  # (B, K, 4) float (x0, y0, x1, y1) in pixels, x1/y1 exclusive
    box_label: Tensor  # (B, K) int64: shape index of each object, -1 for unused slots
    box_valid: Tensor  # (B, K) bool
    background: Tensor  # (B,) int64: index into ScenesConfig.backgrounds


# --- counter-based random numbers ------------------------------------------------------------


def _mix64(z: Any) -> Any:
    """SplitMix64's finaliser: a bijection of uint64 that scrambles every bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniforms(seed: int, split: str, indices: np.ndarray, n: int) -> np.ndarray:
    """``(len(indices), n)`` uniforms in [0, 1): a pure function of (seed, split, index, slot)."""
    with np.errstate(over="ignore"):
        key = _mix64(np.uint64(seed) * np.uint64(3) + np.uint64(SPLITS.index(split)) + np.uint64(1))
        z = _mix64(indices.astype(np.uint64) ^ key)[:, None]
        z = _mix64(z + np.arange(1, n + 1, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class _Draws:
    """Hands out columns of a uniform matrix in order, so each knob has its own slots."""

    def __init__(self, u: np.ndarray) -> None:
        self.u, self.i = u, 0

    def take(self, k: int = 1) -> np.ndarray:
        out = self.u[:, self.i : self.i + k]
        self.i += k
        return out if k > 1 else out[:, 0]


def _num_draws(cfg: ScenesConfig) -> int:
    K, C = cfg.max_objects, cfg.grid**2
    return 2 + (len(cfg.shapes) - 1) + 1 + K + C + 7 * K + 9 + 3 * _NOISE_GRID**2


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Vectorised HSV -> RGB; inputs (...,), output (..., 3)."""
    k = (torch.tensor([5.0, 3.0, 1.0], device=h.device) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


# --- scene layout (per image, in numpy: tiny) --------------------------------------------------


def _layout(cfg: ScenesConfig, d: _Draws) -> dict[str, np.ndarray]:
    """Which shapes go in which cells, and each object's pose, colour and depth."""
    B, S, K, G = d.u.shape[0], len(cfg.shapes), cfg.max_objects, cfg.grid
    label = np.minimum((d.take() * S).astype(np.int64), S - 1)
    m = 2 + np.minimum((d.take() * (cfg.max_per_shape - 1)).astype(np.int64), cfg.max_per_shape - 2)
    # Minority shapes: each of the other S-1 shapes appears 0..m-1 times (strictly fewer than m).
    others = np.minimum((d.take(S - 1).reshape(B, S - 1) * m[:, None]).astype(np.int64), m[:, None] - 1)
    counts = np.zeros((B, S), dtype=np.int64)
    counts[np.arange(B), label] = m
    other_ids = (label[:, None] + 1 + np.arange(S - 1)[None, :]) % S
    np.put_along_axis(counts, other_ids, others, axis=1)
    # Slot k holds shape `shape[b, k]` while k < n_objects: shapes in order, slots past n unused.
    slot = np.arange(K)[None, :]
    ends = np.cumsum(counts, axis=1)  # (B, S)
    shape = (slot[:, :, None] >= ends[:, None, :]).sum(-1)  # (B, K): first s with k < ends[s]
    valid = slot < ends[:, -1:]
    if cfg.task == "count":  # 1..K objects of random shapes; the label is the count - 1
        n = 1 + np.minimum((d.take() * K).astype(np.int64), K - 1)
        valid = slot < n[:, None]
        shape = np.minimum((d.take(K).reshape(B, K) * S).astype(np.int64), S - 1)
        label = n - 1
    else:
        d.take(1 + K)  # keep the draws of the later knobs in the same slots for both tasks
    shape = np.where(valid, shape, -1)
    # A random cell per slot: the first K cells of a random permutation of the G*G cells.
    cell = np.argsort(d.take(G * G).reshape(B, G * G), axis=1)[:, :K]
    cx_u, cy_u, depth_u, hue, sat, val, tex = (d.take(K).reshape(B, K) for _ in range(7))
    depth = 0.2 + 0.6 * depth_u
    lo, hi = cfg.object_size
    half = cfg.cell_size / 2
    radius = half * (hi - (hi - lo) * (depth - 0.2) / 0.6)  # nearer objects are drawn larger
    # Centre anywhere in the cell that keeps the whole object inside it: objects never touch.
    cx = (cell % G) * cfg.cell_size + radius + cx_u * (cfg.cell_size - 2 * radius)
    cy = (cell // G) * cfg.cell_size + radius + cy_u * (cfg.cell_size - 2 * radius)
    return dict(label=label, shape=shape, valid=valid, cx=cx, cy=cy, radius=radius, depth=depth,
                hue=hue, sat=0.55 + 0.45 * sat, val=0.65 + 0.35 * val,
                striped=tex < cfg.object_texture)


def _inside(shape: Tensor, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Pixel-in-shape tests for objects of radius ``r`` centred at ``dx = dy = 0`` (y points down).

    Every shape fits in the disc of radius ``r``, which is what keeps objects in their cells.
    """
    ax, ay, d2 = dx.abs(), dy.abs(), dx * dx + dy * dy
    tests = {
        "circle": d2 <= r * r,
        "square": torch.maximum(ax, ay) <= 0.7 * r,
        "triangle": (dy >= -r) & (dy <= 0.5 * r) & (ax <= 0.577 * (dy + r)),
        "diamond": ax + ay <= r,
        "cross": ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r)),
        "ring": (d2 <= r * r) & (d2 >= 0.3 * r * r),
    }
    out = torch.zeros_like(d2, dtype=torch.bool)
    for s, name in enumerate(SHAPES):
        out |= (shape == s) & tests[name]
    return out


def _background(cfg: ScenesConfig, d: _Draws, device: torch.device) -> tuple[Tensor, np.ndarray]:
    """``(B, 3, H, W)`` backgrounds (flat, gradient, low-frequency noise or stripes), and their kinds."""
    B, H = d.u.shape[0], cfg.img_size
    kind = np.minimum((d.take() * len(cfg.backgrounds)).astype(np.int64), len(cfg.backgrounds) - 1)
    c1, c2 = 0.1 + 0.5 * d.take(3), 0.1 + 0.5 * d.take(3)  # muted colours, (B, 3)
    angle, freq = 2 * np.pi * d.take(), 2.0 + 4.0 * d.take()  # direction; stripes per image
    noise = d.take(3 * _NOISE_GRID**2).reshape(B, 3, _NOISE_GRID, _NOISE_GRID)
    grid = torch.arange(H, device=device, dtype=torch.float32) + 0.5
    out = torch.empty(B, 3, H, H, device=device)
    for i, name in enumerate(cfg.backgrounds):
        sel = np.nonzero(kind == i)[0]
        if not sel.size:
            continue

        def t(a: np.ndarray) -> Tensor:
            return torch.as_tensor(a[sel], dtype=torch.float32, device=device)

        a = t(c1)[:, :, None, None]  # (b, 3, 1, 1)
        if name in ("gradient", "texture"):
            cos, sin = torch.cos(t(angle))[:, None, None], torch.sin(t(angle))[:, None, None]
            u = (cos * grid[None, None, :] + sin * grid[None, :, None]) / H  # (b, H, W)
            lo, hi = u.amin((1, 2), keepdim=True), u.amax((1, 2), keepdim=True)
            w = (u - lo) / (hi - lo) if name == "gradient" else 0.5 + 0.5 * torch.sin(2 * np.pi * t(freq)[:, None, None] * u)
            out[sel] = a + (t(c2)[:, :, None, None] - a) * w[:, None]
        elif name == "noise":
            smooth = F.interpolate(t(noise), size=(H, H), mode="bicubic", align_corners=True)
            out[sel] = a + 0.6 * (smooth.clamp(0, 1) - 0.5)
        else:  # flat
            out[sel] = a.expand(-1, -1, H, H)
    return out.clamp(0.0, 1.0), kind


def _checked_indices(cfg: "ScenesConfig | FractalConfig", split: str,
                     indices: Sequence[int] | np.ndarray | Tensor, what: str) -> np.ndarray:
    """``indices`` as a flat int64 array, each checked to lie in ``[0, split size)``."""
    n = cfg.split_size(split)
    idx = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][0]
        raise IndexError(f"{what} index {bad} is outside the {split!r} split of size {n}")
    return idx


def render_scenes(
    cfg: ScenesConfig, split: str, indices: Sequence[int] | np.ndarray | Tensor,
    device: str | torch.device = "cpu",
) -> SceneBatch:
    """Render the scenes ``indices`` of ``split``: images and all their labels.

    Args:
        cfg: the data set.
        split: ``train``, ``val`` or ``test``; the three never share an image.
        indices: image indices in ``[0, split size)``; any order, repeats allowed.
        device: where to render (the layout is drawn on the CPU, the pixels where asked).

    Returns:
        A :class:`SceneBatch`. Pixels depend only on ``(cfg, split, index)``.

    Raises:
        ConfigError: unknown split; IndexError: an index outside the split.
    """
    idx = _checked_indices(cfg, split, indices, "scene")
    dev = torch.device(device)
    d = _Draws(_uniforms(cfg.seed, split, idx, _num_draws(cfg)))
    lay = _layout(cfg, d)
    image, kind = _background(cfg, d, dev)
    B, K, H, G = idx.size, cfg.max_objects, cfg.img_size, cfg.grid
    b, k = np.nonzero(lay["valid"])  # one entry per object drawn

    def t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.as_tensor(a, dtype=dtype, device=dev)

    # Each object is drawn in a window over its own cell (objects never leave their cell).
    w = math.ceil(cfg.cell_size) + 1
    cell = (lay["cy"][b, k] // cfg.cell_size) * G + lay["cx"][b, k] // cfg.cell_size
    ox = t(np.floor((cell % G) * cfg.cell_size), torch.int64)[:, None] + torch.arange(w, device=dev)  # (n, w)
    oy = t(np.floor((cell // G) * cfg.cell_size), torch.int64)[:, None] + torch.arange(w, device=dev)
    dx = (ox + 0.5 - t(lay["cx"][b, k])[:, None])[:, None, :]  # (n, 1, w)
    dy = (oy + 0.5 - t(lay["cy"][b, k])[:, None])[:, :, None]  # (n, w, 1)
    shape_ids = np.array([SHAPES.index(s) for s in cfg.shapes], dtype=np.int64)  # class -> SHAPES
    shape = t(shape_ids[lay["shape"][b, k]], torch.int64)[:, None, None]
    mask = _inside(shape, dx, dy, t(lay["radius"][b, k])[:, None, None])  # (n, w, w)
    mask &= (ox < H)[:, None, :] & (oy < H)[:, :, None]
    # Optional stripes on an object: brightness 0.6 / 1.0 in bands at an angle set by its hue.
    angle = t(lay["hue"][b, k] * 7.0)[:, None, None]
    bands = torch.sin(1.5 * (torch.cos(angle) * dx + torch.sin(angle) * dy)) > 0
    shade = torch.where(t(lay["striped"][b, k], torch.bool)[:, None, None] & ~bands, 0.6, 1.0)  # (n, w, w)
    colour = _hsv_to_rgb(t(lay["hue"][b, k]), t(lay["sat"][b, k]), t(lay["val"][b, k]))  # (n, 3)
    # Paste: objects never overlap, so plain assignment composes the scene.
    o, py, px = mask.nonzero(as_tuple=True)  # one entry per object pixel
    bb, yy, xx = t(b, torch.int64)[o], oy[o, py], ox[o, px]
    image[bb, :, yy, xx] = colour[o] * shade[o, py, px][:, None]
    seg = torch.zeros(B, H, H, dtype=torch.int64, device=dev)
    seg[bb, yy, xx] = t(lay["shape"][b, k] + 1, torch.int64)[o]
    depth = torch.ones(B, H, H, device=dev)
    depth[bb, yy, xx] = t(lay["depth"][b, k])[o]
    # Boxes of the drawn pixels: first and last row/column of the window that hold the object.
    ar = torch.arange(w, device=dev)
    rows, cols = mask.any(2), mask.any(1)  # (n, w)
    x0 = torch.where(cols, ar, w).amin(1)
    x1 = torch.where(cols, ar, -1).amax(1) + 1
    y0 = torch.where(rows, ar, w).amin(1)
    y1 = torch.where(rows, ar, -1).amax(1) + 1
    boxes = torch.zeros(B, K, 4, device=dev)
    bt, kt = t(b, torch.int64), t(k, torch.int64)
    boxes[bt, kt] = torch.stack([x0 + ox[:, 0], y0 + oy[:, 0], x1 + ox[:, 0], y1 + oy[:, 0]], 1).float()
    box_valid = torch.zeros(B, K, dtype=torch.bool, device=dev)
    box_valid[bt, kt] = mask.flatten(1).any(1)
    return SceneBatch(
        image=image.clamp(0.0, 1.0), label=t(lay["label"], torch.int64), seg=seg, depth=depth,
        boxes=boxes, box_label=t(lay["shape"], torch.int64), box_valid=box_valid,
        background=t(kind, torch.int64),
    )


def scene_stats(cfg: ScenesConfig, patch_size: int, split: str = "val", n: int = 2_000) -> dict[str, Any]:
    """What a data card reports, measured on ``n`` scenes of ``split``.

    Returns:
        ``class_share`` (share of each class), ``objects_mean`` (objects per image),
        ``object_pixels`` (share of pixels on objects), and per background kind
        ``background_patches`` (share of ``patch_size`` patches holding no object pixel) and
        ``background_spread`` (mean per-image std of background pixel values: 0 = flat).
    """
    n = min(n, cfg.split_size(split))
    out = render_scenes(cfg, split, np.arange(n))
    g = cfg.img_size // patch_size
    obj = out.seg[:, : g * patch_size, : g * patch_size] > 0
    empty = ~obj.reshape(n, g, patch_size, g, patch_size).any(4).any(2)  # (n, g, g)
    kinds = out.background.cpu().numpy()
    bg = out.seg == 0
    spread = torch.stack([out.image[b][:, bg[b]].std(1).mean() if bg[b].sum() > 1 else torch.tensor(0.0)
                          for b in range(n)])
    per_kind = {
        name: {"images": int((kinds == i).sum()),
               "background_patches": float(empty[torch.as_tensor(kinds == i)].float().mean()),
               "background_spread": float(spread[torch.as_tensor(kinds == i)].mean())}
        for i, name in enumerate(cfg.backgrounds) if (kinds == i).any()
    }
    return {
        "images": n, "split": split, "img_size": cfg.img_size, "patch_size": patch_size,
        "num_classes": cfg.num_classes,
        "class_share": (torch.bincount(out.label, minlength=cfg.num_classes).float() / n).tolist(),
        "objects_mean": float(out.box_valid.sum(1).float().mean()),
        "object_pixels": float(obj.float().mean()),
        "background_patches": float(empty.float().mean()),
        "per_background": per_kind,
    }


# --- formula-driven fractals (FractalDB-style) ----------------------------------------------------


@dataclass(frozen=True)
class FractalConfig:
    """Iterated-function-system fractals on black, FractalDB-style (Kataoka et al. 2020).

    Each class is one random IFS: ``maps`` affine maps ``p -> A p + b`` with contractive ``A``,
    drawn from ``(seed, class)``. An image of a class renders ``points`` points of its attractor
    (the chaos game, run in parallel chains), with every coefficient jittered by up to
    ``jitter`` (relative), in one random bright colour, fitted into the frame. Almost all of the
    canvas is exactly black: the most redundant background there is. Like the scenes, an image
    is a pure function of (seed, split, index) and the splits never share an image.
    """

    img_size: int = 32
    num_classes: int = 10
    maps: int = 3  # affine maps per IFS
    points: int = 600  # attractor points drawn per image
    jitter: float = 0.05  # per-image relative perturbation of the IFS coefficients
    train_size: int = 50_000
    val_size: int = 2_000
    test_size: int = 2_000
    seed: int = 0
    kind: Literal["fractals"] = "fractals"

    def __post_init__(self) -> None:
        for name, minimum in (("img_size", 8), ("num_classes", 2), ("maps", 2), ("points", 16), ("seed", 0),
                              ("train_size", 1), ("val_size", 1), ("test_size", 1)):
            _check_int(name, getattr(self, name), minimum)
        if not 0.0 <= self.jitter < 0.5:
            raise ConfigError(f"jitter must be in [0, 0.5), got {self.jitter!r}")
        _check_choice("kind", self.kind, Literal["fractals"])

    def split_size(self, split: str) -> int:
        _check_choice("split", split, Split)
        return int(getattr(self, f"{split}_size"))


def _ifs(cfg: FractalConfig, labels: np.ndarray, jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the (jittered) maps of its class: ``A`` (B, M, 2, 2), ``b`` (B, M, 2)."""
    M = cfg.maps
    # The class's IFS: a hash of (seed, class) only, shared by all splits ("test" keys ignored).
    u = _uniforms(cfg.seed + 7_919, "test", np.arange(cfg.num_classes), 6 * M).reshape(cfg.num_classes, M, 6)
    A = (2 * u[..., :4] - 1).reshape(cfg.num_classes, M, 2, 2)
    # Contractive: scale each map to a spectral norm in [0.3, 0.8].
    norm = np.linalg.norm(A, ord=2, axis=(2, 3))[..., None, None]
    A = A / norm * (0.3 + 0.5 * u[..., 4:5, None])
    b = 2 * u[..., 4:6] - 1
    A = A[labels] * (1 + cfg.jitter * (2 * jitter[:, : 4 * M].reshape(-1, M, 2, 2) - 1))
    b = b[labels] * (1 + cfg.jitter * (2 * jitter[:, 4 * M : 6 * M].reshape(-1, M, 2) - 1))
    return A, b


def render_fractals(cfg: FractalConfig, split: str, indices: Sequence[int] | np.ndarray | Tensor,
                    device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Images ``(B, 3, H, W)`` in [0, 1] and class labels ``(B,)`` of fractal images."""
    idx = _checked_indices(cfg, split, indices, "fractal")
    B, M, Pn, H = idx.size, cfg.maps, cfg.points, cfg.img_size
    d = _Draws(_uniforms(cfg.seed, split, idx, 1 + 6 * M + 3 + 2 * Pn + 12 * Pn))
    labels = np.minimum((d.take() * cfg.num_classes).astype(np.int64), cfg.num_classes - 1)
    A, b = _ifs(cfg, labels, d.take(6 * M).reshape(B, 6 * M))
    colour = 0.5 + 0.5 * d.take(3).reshape(B, 3)
    dev = torch.device(device)
    At, bt = torch.as_tensor(A, dtype=torch.float32, device=dev), torch.as_tensor(b, dtype=torch.float32, device=dev)
    p = torch.as_tensor(2 * d.take(2 * Pn).reshape(B, Pn, 2) - 1, dtype=torch.float32, device=dev)
    choice = torch.as_tensor(np.minimum((d.take(12 * Pn).reshape(B, 12, Pn) * M).astype(np.int64), M - 1), device=dev)
    rows = torch.arange(B, device=dev)[:, None]
    for t in range(12):  # the chaos game, one step for every chain at once
        m = choice[:, t]  # (B, Pn)
        p = (At[rows, m] @ p[..., None])[..., 0] + bt[rows, m]
    lo, hi = p.amin(1, keepdim=True), p.amax(1, keepdim=True)
    scale = (hi - lo).amax(-1, keepdim=True).clamp_min(1e-6)
    p = (p - lo - (hi - lo - scale) / 2) / scale  # fit the longer side into [0, 1]
    xy = (p * (H - 2) + 1).round().long().clamp(0, H - 1)  # one-pixel margin
    canvas = torch.zeros(B, H * H, device=dev)
    canvas.scatter_(1, xy[..., 1] * H + xy[..., 0], 1.0)
    image = canvas.reshape(B, 1, H, H) * torch.as_tensor(colour, dtype=torch.float32, device=dev)[:, :, None, None]
    return image, torch.as_tensor(labels, device=dev)


# --- real images --------------------------------------------------------------------------------

RealName = Literal["cifar10", "stl10", "imagenette", "folder"]


@dataclass(frozen=True)
class ImageData:
    """A real image data set, read through torchvision (class labels only).

    ``cifar10``, ``stl10`` and ``imagenette`` are downloaded into ``root`` when ``download`` is
    true and a network is there. ``folder`` reads ``root/<split>/<class>/<image>`` (any format
    PIL opens); a missing ``test`` folder falls back to ``val``. For CIFAR-10 and STL-10 the
    validation split is the last ``val_size`` images of the training set; Imagenette's ``val``
    serves as both ``val`` and ``test``. Images are resized (antialiased) to ``img_size``.
    """

    name: RealName = "folder"
    root: str = "data/images"
    img_size: int = 32
    val_size: int = 1_000
    download: bool = False
    kind: Literal["images"] = "images"

    def __post_init__(self) -> None:
        _check_choice("name", self.name, RealName)
        _check_int("img_size", self.img_size, 8)
        _check_int("val_size", self.val_size, 0)
        _check_choice("kind", self.kind, Literal["images"])


DataConfig = ScenesConfig | FractalConfig | ImageData


class DataSource:
    """The one interface the training loop and the probes use: sizes, classes, batches."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def split_size(self, split: str) -> int:
        raise NotImplementedError

    def batch(self, split: str, indices: np.ndarray, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """Images ``(B, 3, H, W)`` in [0, 1] and labels ``(B,)`` for these indices of ``split``."""
        raise NotImplementedError


class _GeneratedSource(DataSource):
    """A data set rendered by code (scenes or fractals): images and labels from a render function."""

    cfg: ScenesConfig | FractalConfig

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def split_size(self, split: str) -> int:
        return self.cfg.split_size(split)

    def batch(self, split: str, indices: np.ndarray, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        if isinstance(self.cfg, ScenesConfig):
            out = render_scenes(self.cfg, split, indices, device)
            return out.image, out.label
        return render_fractals(self.cfg, split, indices, device)


class _ImageSource(DataSource):
    cfg: ImageData

    def __init__(self, cfg: ImageData) -> None:
        super().__init__(cfg)
        # Split name -> (torchvision data set, offset, length).
        self._splits: dict[str, tuple[Any, int, int]] = {}
        self._classes = 0

    def _load(self, split: str) -> tuple[Any, int, int]:
        _check_choice("split", split, Split)
        if split not in self._splits:
            self._splits.update(self._open())
        return self._splits[split]

    def _open(self) -> dict[str, tuple[Any, int, int]]:
        import torchvision  # noqa: F401  (regvit_lib/_compat.py has run: importable on CPU torch)
        from torchvision import datasets, transforms

        c = self.cfg
        tf = transforms.Compose([
            transforms.Resize(c.img_size, antialias=True), transforms.CenterCrop(c.img_size),
            transforms.ToTensor(),
        ])
        root = Path(c.root).expanduser()
        try:
            if c.name == "folder":
                def folder(split: str) -> Any:
                    path = root / split
                    if not path.is_dir():
                        raise FileNotFoundError(f"image folder {path} does not exist")
                    return datasets.ImageFolder(str(path), transform=tf)
                train, val = folder("train"), folder("val")
                test = folder("test") if (root / "test").is_dir() else val
                parts = {"train": (train, 0, len(train)), "val": (val, 0, len(val)), "test": (test, 0, len(test))}
                classes = train.classes
            elif c.name == "imagenette":
                train = datasets.Imagenette(str(root), split="train", size="160px", download=c.download, transform=tf)
                val = datasets.Imagenette(str(root), split="val", size="160px", download=c.download, transform=tf)
                parts = {"train": (train, 0, len(train)), "val": (val, 0, len(val)), "test": (val, 0, len(val))}
                classes = train.classes
            else:
                if c.name == "cifar10":
                    train = datasets.CIFAR10(str(root), train=True, download=c.download, transform=tf)
                    test = datasets.CIFAR10(str(root), train=False, download=c.download, transform=tf)
                else:
                    train = datasets.STL10(str(root), split="train", download=c.download, transform=tf)
                    test = datasets.STL10(str(root), split="test", download=c.download, transform=tf)
                n = len(train) - c.val_size
                if n < 1:
                    raise ConfigError(f"val_size={c.val_size} leaves no training images of {len(train)}")
                parts = {"train": (train, 0, n), "val": (train, n, c.val_size), "test": (test, 0, len(test))}
                classes = train.classes
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
            raise FileNotFoundError(
                f"{c.name} is not in {root} ({e}); pass download=True on a machine with a network"
            ) from e
        self._classes = len(classes)
        return parts

    @property
    def num_classes(self) -> int:
        self._load("train")
        return self._classes

    def split_size(self, split: str) -> int:
        return self._load(split)[2]

    def batch(self, split: str, indices: np.ndarray, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        ds, offset, n = self._load(split)
        items = []
        for i in np.asarray(indices, dtype=np.int64).reshape(-1):
            if not 0 <= i < n:
                raise IndexError(f"image index {i} is outside the {split!r} split of size {n}")
            items.append(ds[offset + int(i)])
        images = torch.stack([x for x, _ in items]).to(device)
        labels = torch.tensor([y for _, y in items], dtype=torch.int64, device=device)
        return images, labels


def make_source(cfg: DataConfig) -> DataSource:
    """The :class:`DataSource` of a data config (scenes, fractals or real images)."""
    if isinstance(cfg, (ScenesConfig, FractalConfig)):
        return _GeneratedSource(cfg)
    if isinstance(cfg, ImageData):
        return _ImageSource(cfg)
    raise ConfigError(f"unknown data config {cfg!r}")


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The indices of training batch ``step``: epochs of seeded permutations, read in order.

    A pure function of its arguments, so a resumed run reads exactly the batches an
    uninterrupted one would have.
    """
    pos = step * batch_size + np.arange(batch_size)
    epoch, within = pos // n, pos % n
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epoch):
        sel = epoch == e
        out[sel] = _permutation(n, seed, int(e))[within[sel]]
    return out


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: Tensor) -> Tensor:
    """Images in [0, 1] to the model's input: ImageNet mean/std per channel, as timm and DINOv2."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype)[:, None, None]
    return (images - mean) / std


# --- one real photograph (chapter 1) ---------------------------------------------------------


def sample_photo(img_size: int, name: str = "grace_hopper.jpg") -> Tensor:
    """A photograph from matplotlib's sample data, as a float image in [0, 1].

    Args:
        img_size: output side in pixels (centre square crop, then antialiased resize).
        name: a file in matplotlib's ``sample_data`` folder.

    Returns:
        Tensor of shape ``(1, 3, img_size, img_size)``.
    """
    if img_size < 1:
        raise ValueError(f"img_size must be >= 1, got {img_size!r}")
    path = files("matplotlib") / "mpl-data" / "sample_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"no sample image {name!r} in matplotlib's sample_data ({path})")
    with Image.open(str(path)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    img = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W)
    h, w = img.shape[1:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = img[:, top : top + s, left : left + s].unsqueeze(0)  # (1, 3, s, s)
    out = F.interpolate(img, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0)
