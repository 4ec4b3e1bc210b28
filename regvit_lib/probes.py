"""Probes: small models trained on frozen tokens to ask what the tokens know.

Every probe is linear and deterministic (scikit-learn's logistic regression for classifiers,
ridge for regressions, on standardised features), fitted on one set of images and scored on
another. Which paper result each one serves:

* :func:`local_probes` -- Fig. 5b: predicting a token's *position* and reconstructing its
  *pixels*, trained on normal tokens, scored on normal vs outlier tokens;
* :func:`single_token_probe` -- Table 1: classifying the image from one token (a random normal
  patch token, a random outlier token, [CLS], a register);
* :func:`dense_probes` -- Table 2: classification from [CLS], segmentation mIoU and depth RMSE
  from patch tokens;
* :func:`lost` and :func:`corloc` -- Table 3: unsupervised object discovery with LOST.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from .analysis import Features, Outliers, tokens_at
from .model import patchify

__all__ = ["probe_summary", "split_images", "local_probes", "single_token_probe", "mean_iou", "rmse",
           "dense_probes", "lost", "corloc", "DenseResult"]


# --- linear models ------------------------------------------------------------------------------


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mu) / sd for x in (train, *others)]


def _classifier(x: Tensor, y: Tensor, weight_decay: float = 1e-3) -> Callable[[Tensor], Tensor]:
    """Multinomial logistic regression: mean cross-entropy + ``weight_decay * ||W||^2`` (bias free).

    Returns a function from features to class indices (``y``'s labels). scikit-learn fits a binary
    problem as one vector ``v = w1 - w0``; softmax's optimum has ``||w0||^2 + ||w1||^2 = ||v||^2 / 2``,
    hence ``C`` twice as large there.
    """
    if len(classes := y.unique()) == 1:
        return lambda z: classes.expand(len(z))
    C = 1 / (weight_decay * len(x) * (1 if len(classes) == 2 else 2))
    from sklearn.linear_model import LogisticRegression  # here: a cached build never fits a probe

    clf = LogisticRegression(C=C, max_iter=10_000, tol=1e-6).fit(x.double().numpy(), y.numpy())
    return lambda z: torch.from_numpy(clf.predict(z.double().numpy()))


def _ridge(x: Tensor, y: Tensor, alpha: float = 1e-2) -> Callable[[Tensor], Tensor]:
    """Ridge regression with penalty ``alpha * n * ||W||^2`` (intercept free); returns its predictor."""
    from sklearn.linear_model import Ridge

    reg = Ridge(alpha=alpha * len(x)).fit(x.double().numpy(), y.double().numpy())
    return lambda z: torch.from_numpy(reg.predict(z.double().numpy()))


def _accuracy(x: Tensor, y: Tensor, train: Tensor, test: Tensor) -> float:
    """Accuracy on the rows ``test`` of a classifier of ``y`` from ``x``, fitted on the rows ``train``."""
    x_train, x_test = _standardise(x[train], x[test])
    return float((_classifier(x_train, y[train])(x_test) == y[test]).double().mean())


def _subsample(arrays: tuple[Tensor, ...], cap: int, seed: int) -> tuple[Tensor, ...]:
    """The same seeded random ``cap`` rows of each array (all of them if there are fewer)."""
    if len(arrays[0]) <= cap:
        return arrays
    keep = torch.randperm(len(arrays[0]), generator=torch.Generator().manual_seed(seed))[:cap]
    return tuple(x[keep] for x in arrays)


def split_images(n: int, train_share: float = 0.5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded split of image indices into probe-training and probe-test images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * train_share))
    return perm[:k], perm[k:]


# --- local information (Fig. 5b) -----------------------------------------------------------------


def local_probes(feats: Features, outliers: Outliers, layer: int | str = -1, seed: int = 0,
                 max_train_tokens: int = 20_000) -> dict[str, dict[str, float]]:
    """Position and pixel-reconstruction probes, trained on normal tokens (paper Fig. 5b).

    Args:
        feats: from :func:`~regvit_lib.analysis.collect`.
        outliers: which tokens are outliers (e.g. ``detect_outliers(feats, layer)``).
        layer: which tokens to probe: the layer the outliers were detected in (default: the
            last block's output).
        seed: the image split and the subsample of training tokens.
        max_train_tokens: cap on normal tokens used to fit.

    Returns:
        ``{"normal": {...}, "outlier": {...}}`` with ``position_top1`` (accuracy),
        ``position_distance`` (mean grid distance between predicted and true patch, in
        patches), ``reconstruction_l2`` (mean squared error per pixel value, images in [0, 1])
        and ``tokens`` (how many were scored). Outlier scores are NaN when there are none.
    """
    patch = tokens_at(feats, layer)["patch"]  # (B, N, D)
    B, N, _ = patch.shape
    g = feats.grid
    pixels = patchify(feats.images, feats.cfg.patch_size)  # (B, N, p*p*3)
    pos = torch.arange(N).expand(B, N)
    tr, te = split_images(B, seed=seed)
    fit = ~outliers.mask[tr]
    x_tr, y_tr, px_tr = _subsample((patch[tr][fit], pos[tr][fit], pixels[tr][fit]), max_train_tokens, seed)
    x_tr, x_te = _standardise(x_tr, patch[te])
    clf, reg = _classifier(x_tr, y_tr), _ridge(x_tr, px_tr)
    out: dict[str, dict[str, float]] = {}
    for name, sel in (("normal", ~outliers.mask[te]), ("outlier", outliers.mask[te])):
        if not sel.any():
            out[name] = {**dict.fromkeys(("position_top1", "position_distance", "reconstruction_l2"), float("nan")),
                         "tokens": 0}
            continue
        pred, true = clf(x_te[sel]), pos[te][sel]
        dist = torch.hypot((pred // g - true // g).double(), (pred % g - true % g).double())
        out[name] = {"position_top1": float((pred == true).double().mean()),
                     "position_distance": float(dist.mean()),
                     "reconstruction_l2": float((reg(x_te[sel]) - pixels[te][sel].double()).pow(2).mean()),
                     "tokens": int(sel.sum())}
    return out


# --- global information (Table 1) ------------------------------------------------------------


def single_token_probe(feats: Features, outliers: Outliers, layer: int | str = -1,
                       seed: int = 0) -> dict[str, dict[str, float]]:
    """Classify each image from a single token (paper Table 1).

    Per image, one random *normal* patch token and one random *outlier* token are drawn (seeded);
    [CLS] and each register are used as they are. A logistic regression per kind is fitted on
    half of the images (only images that have an outlier, so all kinds see the same images) and
    scored on the other half.

    Returns:
        ``{kind: {"accuracy": ..., "images": ...}}`` for ``normal``, ``outlier``, ``cls`` and
        ``reg<i>``; without any outlier image, only the kinds that exist, over all images.
    """
    if feats.labels is None:
        raise ValueError("single_token_probe needs features collected with labels")
    parts = tokens_at(feats, layer)
    gen = torch.Generator().manual_seed(seed)
    has_outlier = outliers.mask.any(1)
    enough = has_outlier.sum() >= 4
    images = torch.nonzero(has_outlier)[:, 0] if enough else torch.arange(len(has_outlier))

    def pick(rows: Tensor) -> Tensor:
        """Per image, the patch token of one random ``True`` of its row (token 0 when there is none)."""
        where = [torch.nonzero(row)[:, 0] for row in rows]
        return torch.tensor([int(w[torch.randint(len(w), (1,), generator=gen)]) if len(w) else 0 for w in where])

    kinds = {"normal": parts["patch"][images, pick(~outliers.mask[images])]}
    if enough:
        kinds["outlier"] = parts["patch"][images, pick(outliers.mask[images])]
    if "cls" in parts:
        kinds["cls"] = parts["cls"][images]
    kinds |= {f"reg{r}": parts["reg"][images, r] for r in range(parts["reg"].shape[1])}
    tr, te = split_images(len(images), seed=seed)
    return {kind: {"accuracy": _accuracy(x, feats.labels[images], tr, te), "images": len(te)}
            for kind, x in kinds.items()}


# --- dense tasks (Table 2) -----------------------------------------------------------------------


def mean_iou(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Mean intersection-over-union over the classes present in ``target`` or ``pred``."""
    counts = torch.bincount(num_classes * target.flatten() + pred.flatten(), minlength=num_classes**2)
    confusion = counts.reshape(num_classes, num_classes)  # pixels per (true class, predicted class)
    inter, union = confusion.diag(), confusion.sum(0) + confusion.sum(1) - confusion.diag()
    return float(np.mean((inter.double() / union)[union > 0].numpy()))


def rmse(pred: Tensor, target: Tensor) -> float:
    return float((pred.double() - target.double()).pow(2).mean().sqrt())


def _upsample(patch_values: Tensor, grid: int, patch: int) -> Tensor:
    """``(B, N, ...)`` per-patch values to ``(B, H, W, ...)`` pixels (nearest)."""
    return patch_values.unflatten(1, (grid, grid)).repeat_interleave(patch, 1).repeat_interleave(patch, 2)


@dataclass
class DenseResult:
    """Linear-probe scores on frozen tokens (paper Table 2)."""

    classification: float  # accuracy of a linear classifier on [CLS] (or the patch mean)
    segmentation_miou: float  # per-pixel mIoU of a per-patch linear classifier
    depth_rmse: float  # per-pixel RMSE of a per-patch linear regression of depth

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def dense_probes(feats: Features, seg: Tensor | None, depth: Tensor | None, num_seg_classes: int,
                 seed: int = 0, max_train_tokens: int = 30_000) -> DenseResult:
    """Classification, segmentation and depth linear probes on the final tokens (Table 2).

    Per patch, the segmentation target is the most frequent class among its pixels and the
    depth target its mean depth; predictions are upsampled to pixels (nearest) and scored
    against the full-resolution labels of held-out images.

    Args:
        feats: from :func:`~regvit_lib.analysis.collect` with labels.
        seg: ``(B, H, W)`` int class map; depth: ``(B, H, W)``. ``None`` for images without these
            labels (photographs): only the classification probe runs, the other two are NaN.
        num_seg_classes: number of segmentation classes (background included).
    """
    if feats.labels is None:
        raise ValueError("dense_probes needs features collected with labels")
    parts = tokens_at(feats, "final")
    patch = parts["patch"]
    B, N, _ = patch.shape
    g, p = feats.grid, feats.cfg.patch_size
    H = g * p
    tr, te = split_images(B, seed=seed)
    pooled = parts["cls"] if "cls" in parts else patch.mean(1)  # classification on [CLS], else the mean patch
    if seg is None or depth is None:  # no dense labels: "no labels" for the dense probes
        return DenseResult(_accuracy(pooled, feats.labels, tr, te), math.nan, math.nan)
    seg_target = patchify(seg[:, None, :H, :H], p).mode(-1).values  # (B, N)
    depth_target = depth[:, :H, :H].reshape(B, g, p, g, p).mean((2, 4)).reshape(B, N)
    x_tr, ys, yd = _subsample((patch[tr].flatten(0, 1), seg_target[tr].flatten(), depth_target[tr].flatten()),
                              max_train_tokens, seed)
    x_tr, x_te = _standardise(x_tr, patch[te].flatten(0, 1))
    seg_pred = _classifier(x_tr, ys)(x_te).reshape(len(te), N)
    depth_pred = _ridge(x_tr, yd)(x_te).reshape(len(te), N)
    return DenseResult(_accuracy(pooled, feats.labels, tr, te),
                       mean_iou(_upsample(seg_pred, g, p), seg[te][:, :H, :H], num_seg_classes),
                       rmse(_upsample(depth_pred, g, p), depth[te][:, :H, :H]))


# --- object discovery (Table 3) ------------------------------------------------------------------


def lost(keys: Tensor, grid: int, patch: int, k: int = 100) -> Tensor:
    """LOST (Simeoni et al. 2021): one object box per image from patch features, no training.

    1. Patch similarity ``A = F F^T``; a patch's *degree* is its number of positive
       similarities. Background patches resemble many others, so the patch with the lowest
       degree is the **seed**, taken to lie on an object.
    2. The seed is expanded to the ``k`` lowest-degree patches positively correlated with it.
    3. Patches positively correlated with that set (sum of similarities > 0) form a mask; the
       box is the bounding box of the mask's 4-connected component that holds the seed.

    Args:
        keys: ``(B, N, D)`` patch features (LOST uses the last layer's keys).
        grid: patches per side; patch: pixels per patch (to scale the box).
        k: size of the seed expansion.

    Returns:
        ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive.
    """
    boxes = []
    for f in keys.double():
        A = f @ f.T  # (N, N)
        degree = (A > 0).sum(1)
        seed = int(torch.argmin(degree))
        potentials = torch.argsort(degree)[:k]
        expanded = potentials[A[seed, potentials] > 0]
        mask = (A[:, expanded].sum(1) > 0).reshape(grid, grid).numpy()
        ys, xs = np.nonzero(_component(mask, divmod(seed, grid)))
        boxes.append([xs.min() * patch, ys.min() * patch, (xs.max() + 1) * patch, (ys.max() + 1) * patch])
    return torch.tensor(boxes, dtype=torch.float32)


def _component(mask: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of ``mask`` containing ``start`` (the start is always in it)."""
    m = mask.copy()
    m[start] = True
    from scipy import ndimage

    labels = ndimage.label(m)[0]
    return labels == labels[start]


def corloc(pred: Tensor, gt_boxes: Tensor, gt_valid: Tensor, threshold: float = 0.5) -> float:
    """Share of images whose predicted box has IoU >= ``threshold`` with any ground-truth box.

    Args:
        pred: ``(B, 4)``; gt_boxes: ``(B, K, 4)``; gt_valid: ``(B, K)`` bool.
    """
    from torchvision.ops import box_iou  # here: importing torchvision.ops costs seconds (it loads torch._dynamo)

    hits = [bool((box_iou(p[None], g[v]) >= threshold).any()) for p, g, v in zip(pred, gt_boxes, gt_valid)]
    return float(np.mean(hits))


def probe_summary(feats: Features, outliers: Outliers, layer: int | str = -1, seed: int = 0) -> dict[str, float]:
    """One record of the Fig. 5b / Table 1 measurements for a set of features.

    Returns:
        ``outlier_share``, ``outlier_norm_ratio``; for ``kind`` in normal / outlier,
        ``position_top1_<kind>``, ``position_distance_<kind>``, ``pixel_l2_<kind>``; and
        ``class_<kind>`` for normal / outlier / cls: accuracy of a classifier on one such token.
    """
    local = local_probes(feats, outliers, layer, seed)
    single = single_token_probe(feats, outliers, layer, seed)
    # local_probes' keys -> this record's names
    names = dict(position_top1="position_top1", position_distance="position_distance", reconstruction_l2="pixel_l2")
    return {"outlier_share": outliers.share, "outlier_norm_ratio": outliers.norm_ratio,
            **{f"{name}_{kind}": local[kind][key] for kind in ("normal", "outlier") for key, name in names.items()},
            **{f"class_{kind}": single[kind]["accuracy"] if kind in single else float("nan")
               for kind in ("normal", "outlier", "cls")}}
