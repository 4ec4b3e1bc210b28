"""The ViT forward pass, one equation at a time, on a real tensor (chapter 1).

:func:`walkthrough` recomputes :meth:`RegViT.forward` by hand with the model's own weights:
explicit patch flattening and the projection matrix E instead of the strided convolution,
explicit softmax attention instead of the fused kernel. It checks, as it goes, that each hand
computation equals the model's own module, so the chapter shows the real model's tensors,
not a toy.
"""

from dataclasses import dataclass
from typing import cast

import pandas as pd
import torch
from torch import Tensor

from .model import Block, RegViT, patchify

__all__ = ["Step", "walkthrough", "steps_table"]


@dataclass(frozen=True)
class Step:
    """One stage of the forward pass."""

    name: str  # what happens
    symbol: str  # what is computed, in the chapter's notation
    tensor: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


def _same(name: str, ours: Tensor, ref: Tensor, atol: float = 1e-5) -> None:
    err = (ours - ref).abs().max().item()
    if err > atol:
        raise AssertionError(f"walkthrough step {name!r} differs from the model by {err:.3g}")


@torch.no_grad()
def walkthrough(model: RegViT, images: Tensor) -> list[Step]:
    """Recompute the forward pass of ``model`` on ``images`` step by step.

    Block 1 is opened up (LayerNorm, Q/K/V, attention, heads, MLP); the remaining blocks are
    applied whole. Every step is checked against the model's own computation.

    Args:
        model: a :class:`RegViT` (put in eval mode by this function).
        images: ``(B, C, H, W)`` at the model's image size.

    Returns:
        The steps, in order.
    """
    model.eval()
    cfg = model.cfg
    B, D, Hh, hd = images.shape[0], cfg.embed_dim, cfg.num_heads, cfg.head_dim
    steps: list[Step] = [Step("input image", "x", images)]

    xp = patchify(images, cfg.patch_size)  # (B, N, P^2 C)
    steps.append(Step("flattened patches", "x_p¹ … x_pᴺ", xp))
    E = model.patch_embed.proj.weight.reshape(D, -1).T  # (P^2 C, D)
    steps.append(Step("projection matrix E", "E", E))
    xE = xp @ E + cast(Tensor, model.patch_embed.proj.bias)  # (B, N, D)
    _same("patch embedding", xE, model.patch_embed(images))
    steps.append(Step("patch embeddings", "x_p E", xE))
    steps.append(Step("position embedding", "E_pos", model.pos_embed))
    z0 = model._pos_embed(xE)  # (B, T, D)
    _same("embedded sequence", z0[:, model.num_prefix_tokens :], xE + model.pos_embed)
    steps.append(Step("sequence [CLS; registers; patches]",
                      "z₀ = [x_cls; r₁ … r_R; x_p E + E_pos]", z0))

    blk = cast(Block, model.blocks[0])
    h = blk.norm1(z0)
    steps.append(Step("LayerNorm (block 1)", "LN(z₀)", h))
    q, k, v = blk.attn.qkv(h).reshape(B, -1, 3, Hh, hd).permute(2, 0, 3, 1, 4).unbind(0)
    steps.append(Step("queries, per head", "Q = LN(z₀) W_Q", q))
    A = (q @ k.transpose(-2, -1) / hd**0.5).softmax(dim=-1)  # (B, heads, T, T)
    steps.append(Step("attention weights", "A = softmax(Q Kᵀ / √d_h)", A))
    heads = (A @ v).transpose(1, 2).reshape(B, -1, D)  # (B, T, D)
    steps.append(Step("heads, concatenated", "[A₁V₁; …; A_hV_h]", heads))
    msa = blk.attn.proj(heads)
    _same("multi-head attention", msa, blk.attn(h)[0])
    z1_mid = z0 + blk.ls1(msa)
    steps.append(Step("attention + residual", "z₁' = MSA(LN(z₀)) + z₀", z1_mid))
    z1 = z1_mid + blk.ls2(blk.mlp(blk.norm2(z1_mid)))
    _same("block 1", z1, blk(z0)[0])
    steps.append(Step("MLP + residual", "z₁ = MLP(LN(z₁')) + z₁'", z1))

    zL = z1
    for b in model.blocks[1:]:
        zL = b(zL)[0]
    steps.append(Step(f"after all {cfg.depth} blocks", "z_L", zL))
    y = model.norm(zL)
    feats = model.forward_features(images)
    _same("final norm", y, feats["tokens"])
    steps.append(Step("final LayerNorm", "LN(z_L)", y))
    pooled = model.pool(feats)
    pooling = (("[CLS] output (registers discarded)", "y = LN(z_L)[cls]") if cfg.global_pool == "token"
               else ("mean of patch outputs (registers discarded)", "y = mean LN(z_L)[patches]"))
    steps.append(Step(*pooling, pooled))
    logits = model.head(pooled)
    _same("logits", logits, model(images))
    steps.append(Step("class scores", "head(y)", logits))
    return steps


def steps_table(steps: list[Step]) -> pd.DataFrame:
    """The steps as a table: name, symbol and tensor shape."""
    return pd.DataFrame([{"step": s.name, "symbol": s.symbol, "shape": " × ".join(map(str, s.shape))} for s in steps])
