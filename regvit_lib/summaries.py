"""The per-layer summaries that the training loop records at every evaluation.

Kept apart from :mod:`regvit_lib.analysis` because their code is part of every trained run's
cache key (:mod:`regvit_lib.cache`): growing the analysis toolkit must not retrain anything.

Two definitions the whole book uses live here, once:

* :func:`norm_ratio` -- a patch token's norm over **the median norm of the same image's patch
  tokens in the same layer**. Against a global median, an image whose tokens are all large
  would look like a set of outliers (a pitfall seen in the emergence runs).
* :func:`studied_block` -- the block whose norms a chapter studies: the one with the largest
  mean max/median ratio, from block 1 on (block 0 reacts to the raw contrast of the input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import ModelConfig
from .model import split_tokens

__all__ = ["RATIO_BINS", "norm_ratio", "studied_block", "token_norms", "split_norms", "norm_summary",
           "received_attention", "sink_summary"]

# log2(norm / image median) histogram edges: 1/8x .. 64x in quarter octaves (Fig. 3, 4b).
RATIO_BINS = np.arange(-3.0, 6.0 + 1e-9, 0.25)


def norm_ratio(norms: Tensor) -> Tensor:
    """Each patch-token norm over the median patch norm of its image (and layer): ``(..., N) -> (..., N)``."""
    return norms / norms.median(dim=-1, keepdim=True).values


def studied_block(ratio_by_block: Sequence[float]) -> int:
    """The block with the largest mean max/median ratio, from block 1 on when there are several."""
    start = 1 if len(ratio_by_block) > 1 else 0
    return start + int(np.argmax(np.asarray(ratio_by_block, dtype=float)[start:]))


def token_norms(blocks: Tensor, cfg: ModelConfig) -> dict[str, Tensor]:
    """L2 norms of every token in every layer, by kind.

    Args:
        blocks: ``(B, L, T, D)`` block outputs (``forward_features(..., return_blocks=True)``).
        cfg: the model's config (for the token layout).

    Returns:
        ``patch`` (B, L, N), ``reg`` (B, L, R) and, with a class token, ``cls`` (B, L).
    """
    return split_norms(blocks.float().norm(dim=-1), cfg)


def split_norms(norms: Tensor, cfg: ModelConfig) -> dict[str, Tensor]:
    """Token norms ``(..., T)`` by kind: ``patch`` (..., N), ``reg`` (..., R), ``cls`` (...,) with a class token."""
    return {k: v[..., 0] for k, v in split_tokens(norms[..., None], cfg.class_token, cfg.num_registers).items()}


def norm_summary(norms: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Per-layer statistics of patch-token norms relative to each image's median (Fig. 3, 4).

    Args:
        norms: the output of :func:`token_norms`.

    Returns:
        One dict per layer: ``median`` (of all patch norms), ``p99``, ``max``; ``ratio_mean`` and
        ``ratio_max``, the mean and max over images of (largest patch norm / the image's median);
        ``hist``, counts of log2(norm / image median) in :data:`RATIO_BINS`; ``cls`` and ``reg``,
        the mean [CLS] / register norm over the image median (``None`` when absent).
    """
    patch = norms["patch"]  # (B, L, N)
    med = patch.median(dim=-1, keepdim=True).values  # (B, L, 1)
    ratio = norm_ratio(patch)  # (B, L, N)
    out = []
    for layer in range(patch.shape[1]):
        p, r = patch[:, layer], ratio[:, layer]
        hist, _ = np.histogram(np.log2(r.clamp_min(1e-12).numpy()), bins=RATIO_BINS)
        row: dict[str, Any] = {
            "median": float(p.median()), "p99": float(torch.quantile(p.flatten(), 0.99)),
            "max": float(p.max()),
            "ratio_mean": float(r.amax(-1).mean()), "ratio_max": float(r.amax()),
            "hist": hist.tolist(),
            "cls": float((norms["cls"][:, layer] / med[:, layer, 0]).mean()) if "cls" in norms else None,
            "reg": float((norms["reg"][:, layer] / med[:, layer]).mean()) if norms["reg"].shape[-1] else None,
        }
        out.append(row)
    return out


def received_attention(attn: Tensor, prefix: int) -> Tensor:
    """``(..., H, T)`` from attention maps ``(..., H, T, T)``: per head, the mean attention each key
    receives from the patch queries (the queries after the ``prefix`` tokens)."""
    return attn[..., prefix:, :].float().mean(dim=-2)


def sink_summary(received: Tensor, cfg: ModelConfig) -> list[dict[str, Any]]:
    """Attention sinks per layer: how much attention the patch queries send to one key.

    For each image, layer and head, the attention of all *patch* queries is averaged, and the
    key receiving the most of it is that head's sink. Per layer, the strongest head is kept.

    Args:
        received: ``(B, L, H, T)``, :func:`received_attention` of the attention maps.
        cfg: the model's config (for the token layout).

    Returns:
        One dict per layer: ``mass`` (mean over images of the sink's share of patch-query
        attention), ``kind`` (share of images whose sink is ``cls`` / ``reg`` / ``patch``) and
        ``fixed`` (share of images whose sink is the layer's most common sink token: near 1
        means a sink at a fixed position).
    """
    P = cfg.num_prefix_tokens
    mass, key = received.max(dim=-1)  # (B, L, H)
    head = mass.argmax(dim=-1, keepdim=True)  # (B, L, 1): strongest head
    mass = mass.gather(-1, head)[..., 0]  # (B, L)
    key = key.gather(-1, head)[..., 0]  # (B, L)
    c = int(cfg.class_token)
    out = []
    for layer in range(received.shape[1]):
        k = key[:, layer]
        kinds = {"cls": float((k < c).float().mean()),
                 "reg": float(((k >= c) & (k < P)).float().mean()),
                 "patch": float((k >= P).float().mean())}
        mode = int(torch.mode(k).values)
        out.append({"mass": float(mass[:, layer].mean()), "kind": kinds,
                    "fixed": float((k == mode).float().mean()), "token": mode})
    return out
