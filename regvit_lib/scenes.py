"""The procedural scenes: the book's default data, rendered on the fly with every label.

No data set can be downloaded where this book is built, and the paper's phenomenon lives on
*redundant background patches* (Darcet et al. 2024, Sec. 2.2), so the generator makes exactly
what the study needs (:class:`~regvit_lib.config.ScenesConfig` holds the knobs):

* a few objects (circle, square, triangle, diamond, cross, ring), each alone in its own cell of
  a jittered grid, so objects never overlap and every label is exact;
* a large background whose redundancy is a knob: ``flat`` colour, smooth ``gradient``,
  low-frequency ``noise``, or a striped ``texture``;
* a class label that needs *global* information: how many objects there are (``task="count"``,
  the default: a small ViT learns it within the ``cpu`` budget), or which shape is most numerous;
* a segmentation mask (0 = background, ``1 + shape`` on object pixels), a depth map (objects
  at depths in [0.2, 0.8], nearer objects drawn larger; background at 1.0), one box per object.

Every random number is a hash of ``(data seed, split, image index, slot)`` (SplitMix64), so an
image depends only on its seed, split and index: any batch can be re-rendered in any order, on
any device, and the splits never share an image. Rendering is vectorised over the batch in
torch, so it also runs on a GPU. :func:`background_patches` says which patches hold no object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import SHAPES, SPLITS, FractalConfig, ScenesConfig

__all__ = ["SceneBatch", "render_scenes", "scene_stats", "background_patches"]

_NOISE_GRID = 4  # low-frequency noise: a 4 x 4 grid of random colours, smoothly upsampled

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



def background_patches(seg: Tensor, patch: int) -> Tensor:
    """``(B, N)`` bool: the ``patch`` x ``patch`` patches that hold no object pixel (``seg == 0`` throughout).

    ``seg`` is ``(B, H, W)``: a scene's segmentation, or any map that is 0 off the objects.
    """
    B, H, _ = seg.shape
    g = H // patch
    obj = seg[:, : g * patch, : g * patch] > 0
    return ~obj.reshape(B, g, patch, g, patch).any(4).any(2).reshape(B, g * g)


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
    empty = background_patches(out.seg, patch_size)  # (n, N)
    kinds = torch.as_tensor(out.background.cpu().numpy())
    bg = out.seg == 0
    spread = torch.stack([out.image[b][:, bg[b]].std(1).mean() if bg[b].sum() > 1 else torch.tensor(0.0)
                          for b in range(n)])
    per_kind = {
        name: {"images": int((kinds == i).sum()), "background_patches": float(empty[kinds == i].float().mean()),
               "background_spread": float(spread[kinds == i].mean())}
        for i, name in enumerate(cfg.backgrounds) if (kinds == i).any()
    }
    return {
        "images": n, "split": split, "img_size": cfg.img_size, "patch_size": patch_size,
        "num_classes": cfg.num_classes,
        "class_share": (torch.bincount(out.label, minlength=cfg.num_classes).float() / n).tolist(),
        "objects_mean": float(out.box_valid.sum(1).float().mean()),
        "object_pixels": float((out.seg > 0).float().mean()),
        "background_patches": float(empty.float().mean()),
        "per_background": per_kind,
    }
