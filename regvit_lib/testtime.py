"""Test-time registers: a register added to a trained ViT, without training (Jiang et al. 2025).

Jiang, Dravid, Efros & Gandelsman (2025), "Vision Transformers Don't Need Trained Registers"
(arXiv 2506.08010), trace the high-norm outlier tokens of a ViT trained without registers to a few
MLP neurons, the *register neurons*, which fire strongly on exactly the patches that become outliers.
Moving that activity off the patches onto one extra token then does at test time what a trained
register does. Two steps here:

* :func:`find_register_neurons` finds the outliers (patch tokens above ``k`` x the median patch norm
  of their image at the detection block: the rule of :mod:`regvit_lib.analysis`) and ranks every
  (block, hidden neuron) by its mean absolute activation at those tokens, averaged over images. The
  hidden activation is what the MLP's ``fc2`` reads: ``act(fc1(x))``, or ``silu(a) * b`` in SwiGLU.
* :func:`test_time_registers` makes the model, while the context is active, append one token set to
  the mean of the image's patch tokens (nothing learned), counted as one more register:
  ``[cls, reg_1 .. reg_R, ttr, patch_1 ..]``; every measurement then leaves it out of the patches and
  the output discards it. Each chosen neuron's activation on that token becomes ``scale`` x its largest
  activation over the image's tokens, and on the patches 0; [CLS] and the trained registers keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .analysis import OUTLIER_K, _block_index, as_regvit, collect, detect_outliers, peak_layer, ratio_per_layer
from .data import normalize
from .model import Block, RegViT

__all__ = ["NoOutliers", "RegisterNeurons", "find_register_neurons", "test_time_registers"]


class NoOutliers(ValueError):
    """No patch token passes the outlier rule: there are no outliers for register neurons to explain."""


@dataclass
class RegisterNeurons:
    """The register neurons of a model, by :func:`find_register_neurons`."""

    neurons: list[tuple[int, int]]  # (block, hidden neuron), strongest first
    scores: list[float]  # each one's mean |activation| at the outlier tokens
    detect_block: int  # the block whose outlier tokens were traced
    outliers: int  # outlier tokens found there, over all images
    ratio: float  # mean over images of the max/median patch-norm ratio at detect_block
    k: float = OUTLIER_K  # the outlier rule's multiple of the median


def _plain_regvit(model: nn.Module) -> RegViT:
    if not isinstance(model, RegViT) or model.cfg.variant is not None:
        raise TypeError(f"test-time registers act on a plain RegViT, got {type(model).__name__}; "
                        "convert a timm ViT first with regvit_lib.analysis.as_regvit")
    return model


def _fc2(model: RegViT, block: int) -> nn.Linear:
    """The MLP layer whose input is block ``block``'s hidden activation."""
    blk = model.blocks[block]
    assert isinstance(blk, Block)
    fc2 = blk.mlp.fc2
    assert isinstance(fc2, nn.Linear)
    return fc2


@torch.no_grad()
def find_register_neurons(model: nn.Module, images: Tensor, top: int = 10, highest_block: int | None = None,
                          detect_block: int | None = None, k: float = OUTLIER_K,
                          batch_size: int = 64) -> RegisterNeurons:
    """The ``top`` MLP neurons most active on the outlier tokens, from blocks up to ``highest_block``.

    Args:
        model: a :class:`RegViT` or a timm ViT (converted; the indices are the same in both).
        images: ``(B, 3, H, W)`` in [0, 1], normalised here as in :func:`~regvit_lib.analysis.collect`.
        highest_block: the last block whose neurons may be chosen (default: ``detect_block``; a
            neuron after it cannot have made its outliers).
        detect_block: where outliers are detected (default: the block with the largest mean
            max/median norm ratio, :func:`~regvit_lib.analysis.peak_layer`).

    Raises:
        NoOutliers: no patch token exceeds ``k`` x its image's median norm at ``detect_block``.
    """
    m = _plain_regvit(as_regvit(model))
    feats = collect(m, images, attn=False, batch_size=batch_size, layers=())
    depth = m.cfg.depth
    b = peak_layer(feats) if detect_block is None else _block_index(detect_block, depth)
    ratios = ratio_per_layer(feats)[:, b]
    found = detect_outliers(feats, b, k)
    if not found.mask.any():
        raise NoOutliers(f"no outliers: no patch token exceeds k={k:g} x its image's median norm at block {b} "
                         f"(max/median ratio: mean {float(ratios.mean()):.2f}, max {float(ratios.max()):.2f})")
    last = b if highest_block is None else _block_index(highest_block, depth)
    P, dev = m.cfg.num_prefix_tokens, next(m.parameters()).device
    total = torch.zeros(last + 1, _fc2(m, 0).in_features, dtype=torch.float64)
    mask = found.mask[:0]  # the outlier mask of the batch in flight

    def record(block: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            h = args[0][:, P:].float().abs()  # (b, N, H)
            w = mask.to(h)[..., None] / mask.sum(1).clamp_min(1).to(h)[:, None, None]
            total[block] += (h * w).sum((0, 1)).double().cpu()  # sum over images of per-image means
        return hook

    was_training = m.training
    handles = [_fc2(m, i).register_forward_pre_hook(record(i)) for i in range(last + 1)]
    try:
        m.eval()
        for start in range(0, len(images), batch_size):
            mask = found.mask[start : start + batch_size].to(dev)
            m.forward_features(normalize(images[start : start + batch_size].to(dev)))
    finally:
        for handle in handles:
            handle.remove()
        m.train(was_training)
    scores = total / int(found.mask.any(1).sum())  # mean over the images that have outliers
    best = scores.flatten().topk(min(top, scores.numel()))
    H = scores.shape[1]
    return RegisterNeurons([(int(i) // H, int(i) % H) for i in best.indices], best.values.tolist(), b,
                           int(found.mask.sum()), float(ratios.mean()), k)


@contextmanager
def test_time_registers(model: RegViT, neurons: RegisterNeurons | Iterable[tuple[int, int]],
                        scale: float = 1.0) -> Iterator[RegViT]:
    """Run ``model`` with one test-time register while the context is active (see the module docstring).

    A context manager rather than a modified copy: no weight is copied (a pretrained ViT-L stays one
    model), the object that the caller and :func:`~regvit_lib.analysis.collect` hold is the one measured,
    and on exit the model's config, attributes and hooks are exactly as before. No parameter is touched.

    Args:
        model: a plain :class:`RegViT` (``as_regvit`` converts a timm ViT).
        neurons: :func:`find_register_neurons`'s result, or ``(block, neuron)`` pairs (may be empty).
        scale: the multiple of each neuron's largest activation given to the new token.

    Yields:
        ``model``, whose ``cfg.num_registers`` counts the new token.
    """
    m = _plain_regvit(model)
    if "_pos_embed" in vars(m):
        raise RuntimeError("this model already runs with a test-time register (nested contexts)")
    pairs = neurons.neurons if isinstance(neurons, RegisterNeurons) else list(neurons)
    cfg, prefix = m.cfg, m.num_prefix_tokens
    by_block: dict[int, set[int]] = {}
    for b, j in pairs:
        if not 0 <= j < _fc2(m, _block_index(b, cfg.depth)).in_features:
            raise IndexError(f"block {b} has no hidden neuron {j}")
        by_block.setdefault(_block_index(b, cfg.depth), set()).add(int(j))
    t = cfg.num_prefix_tokens  # the new token's index: after [CLS] and the trained registers
    original = m._pos_embed

    def pos_embed(x: Tensor) -> Tensor:
        x = original(x)  # (B, P + N, D)
        return torch.cat([x[:, :t], x[:, t:].mean(1, keepdim=True), x[:, t:]], dim=1)

    def edit(cols: Tensor) -> Any:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            h = args[0].clone()  # (B, T + 1, H)
            idx = cols.to(h.device)
            h[:, t, idx] = scale * h[..., idx].amax(dim=1)  # per image: the neuron's largest activation
            h[:, t + 1 :, idx] = 0  # the patches
            return (h, *args[1:])
        return hook

    handles = [_fc2(m, b).register_forward_pre_hook(edit(torch.tensor(sorted(js)))) for b, js in by_block.items()]
    setattr(m, "_pos_embed", pos_embed)  # an instance attribute over the method, deleted on exit
    m.cfg, m.num_prefix_tokens = replace(cfg, num_registers=cfg.num_registers + 1), prefix + 1
    try:
        yield m
    finally:
        for handle in handles:
            handle.remove()
        delattr(m, "_pos_embed")
        m.cfg, m.num_prefix_tokens = cfg, prefix


setattr(test_time_registers, "__test__", False)  # a library function, not a test for pytest to collect
