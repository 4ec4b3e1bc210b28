"""The methods chapter 5 compares with registers, each a small change to :class:`~regvit_lib.model.RegViT`.

Each class reads one :data:`~regvit_lib.config.Variant` of the model config and keeps the
:class:`~regvit_lib.model.Encoder` contract (one token layout, ``blocks`` for the blocks that hold
every token), so the training loop, the cache, the summaries and the probes take them as they are:

* :class:`MemoryViT` -- memory tokens (Burtsev et al. 2020): registers *with* a position each,
  read by the head. What "no position, discarded at the output" changes.
* :class:`TokenLearnerViT` -- TokenLearner v1.1 (Ryoo et al. 2021): S weighted sums of the patches
  replace them before block ``block``; with TokenFuser they are mapped back onto the grid.
* :class:`AViT` -- adaptive depth (Yin et al. 2022): tokens halt when a score read from their first
  channel adds up to one; halted tokens are frozen and masked as keys.
* :class:`VictorViT` -- Victor-style summarisation (Wen et al. 2024): after ``block`` blocks only
  [CLS] and the registers go on.
* :class:`HMHSAViT` -- H-MHSA (Liu et al., HAT-Net): window attention plus attention to a pooled grid.

Vision Mamba and Mamba-R are in :mod:`regvit_lib.mamba`; the sink-free attentions (softmax-off-by-one,
a key/value bias, a head gate) are a field of every ViT (:class:`~regvit_lib.model.Attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import AViT as AViTSpec
from .config import HMHSA, Memory, ModelConfig, TokenLearner, Victor
from .model import Encoder, RegViT, split_tokens

__all__ = ["MemoryViT", "TokenLearnerModule", "TokenFuser", "TokenLearnerViT", "AViT", "halting_prior",
           "VictorViT", "HMHSAttention", "HMHSAViT", "build_variant"]


class MemoryViT(RegViT):
    """Registers with a learned position embedding each, kept at the output: the head reads the mean
    of [CLS] and the memory tokens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.mem_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.embed_dim))
        nn.init.trunc_normal_(self.mem_pos_embed, std=0.02)

    def _pos_embed(self, x: Tensor) -> Tensor:
        assert self.cls_token is not None and self.reg_token is not None
        B = x.shape[0]
        mem = (self.reg_token + self.mem_pos_embed).expand(B, -1, -1)
        return torch.cat([self.cls_token.expand(B, -1, -1), mem, x + self.pos_embed], dim=1)

    def pool(self, feats: dict[str, Tensor]) -> Tensor:
        return torch.cat([feats["cls"][:, None], feats["reg"]], dim=1).mean(dim=1)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mem_pos_embed"}


class TokenLearnerModule(nn.Module):
    """v1.1: a per-token MLP on the normed tokens gives S scores per token; a softmax over the
    tokens turns each into a map, and each learned token is its map's weighted sum of the
    *un-normed* tokens: ``(B, N, D) -> (B, S, D)``."""

    def __init__(self, dim: int, tokens: int, bottleneck: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, bottleneck), nn.GELU(), nn.Linear(bottleneck, tokens))

    def maps(self, x: Tensor) -> Tensor:
        """``(B, S, N)``: where each learned token looks; each row sums to 1."""
        return self.mlp(self.norm(x)).transpose(1, 2).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.maps(x) @ x


class TokenFuser(nn.Module):
    """Back onto the grid: the S tokens are mixed (a linear map over S, zero at the start), and each
    patch adds a sigmoid-weighted sum of them to the token it had *before* the TokenLearner."""

    def __init__(self, dim: int, tokens: int, bottleneck: int, eps: float) -> None:
        super().__init__()
        self.norm_in, self.norm_out = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.mix = nn.Linear(tokens, tokens)
        self.weights = nn.Sequential(nn.LayerNorm(dim, eps=eps), nn.Linear(dim, bottleneck), nn.GELU(),
                                     nn.Linear(bottleneck, tokens))

    def forward(self, learned: Tensor, original: Tensor) -> Tensor:
        mixed = self.norm_out(self.mix(self.norm_in(learned).transpose(1, 2)).transpose(1, 2))  # (B, S, D)
        return torch.sigmoid(self.weights(original)) @ mixed + original  # (B, N, S) @ (B, S, D) + (B, N, D)


class TokenLearnerViT(RegViT):
    """Blocks ``0 .. block-1`` on the patches; then S learned tokens. Without the fuser, the blocks
    from ``block`` on see only the S tokens, the head reads their mean, and the patches the dense
    probes read are those of block ``block - 1`` (the last that has them). With the fuser, every later
    block learns its own S tokens, runs on them and fuses them back, so the grid survives to the end."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        v = cfg.variant
        assert isinstance(v, TokenLearner)
        self.tl_block, self.fuse = v.block, v.fuser
        n = cfg.depth - v.block if v.fuser else 1
        self.learners = nn.ModuleList(TokenLearnerModule(cfg.embed_dim, v.tokens, v.bottleneck, cfg.norm_eps)
                                      for _ in range(n))
        self.fusers = nn.ModuleList(TokenFuser(cfg.embed_dim, v.tokens, v.bottleneck, cfg.norm_eps)
                                    for _ in range(n if v.fuser else 0))
        self.init_weights()
        for f in self.fusers:
            assert isinstance(f, TokenFuser)
            nn.init.zeros_(f.mix.weight)

    def forward_features(self, x: Tensor, return_blocks: bool = False,
                         return_attn: bool = False) -> dict[str, Tensor]:
        embed = self.patch_embed(x)
        x = self._pos_embed(embed)
        blocks, attns = [], []
        for i, blk in enumerate(self.blocks):
            if i < self.tl_block:
                x, attn = blk(x, return_attn)
                blocks.append(x)
                if attn is not None:
                    attns.append(attn)
            elif self.fuse:
                learned, _ = blk(self.learners[i - self.tl_block](x))
                x = self.fusers[i - self.tl_block](learned, x)
                blocks.append(x)
            else:
                if i == self.tl_block:
                    patches, x = x, self.learners[0](x)
                x, _ = blk(x)
        out = {"tokens": self.norm(x if self.fuse else patches)}
        out["patch"] = out["tokens"]
        out["reg"] = out["tokens"][:, :0]
        if not self.fuse:
            out["learned"] = self.norm(x)  # (B, S, D): what the head reads
        if return_blocks:
            out["embed"], out["blocks"] = embed, torch.stack(blocks, dim=1)
        if return_attn:
            out["attn"] = torch.stack(attns, dim=1)  # the blocks that attend over the patches
        return out

    def pool(self, feats: dict[str, Tensor]) -> Tensor:
        return feats["learned" if "learned" in feats else "patch"].mean(dim=1)


def halting_prior(depth: int, mean: float, sd: float = 1.0) -> Tensor:
    """A-ViT's target distribution of halting over the blocks: a Gaussian at ``mean``, normalised."""
    p = torch.exp(-0.5 * ((torch.arange(depth, dtype=torch.float32) + 1 - mean) / sd) ** 2)
    return p / p.sum()


class AViT(RegViT):
    """Adaptive tokens. After block l, each running token's halting score is
    ``h = sigmoid(gate_scale * x[..., 0] - gate_center)`` (1 at the last block); a token halts once its
    scores add up to at least ``1 - eps``. Its output is the score-weighted sum of its block outputs,
    the halting block weighted by what remains of 1. A halted token keeps its last state and is
    masked as a key in every later attention, so it no longer changes anything.

    ``aux_loss`` after a forward pass: ``ponder * mean(blocks run + remainder)`` plus ``prior * KL``
    between :func:`halting_prior` and the blocks' mean halting scores (normalised over blocks).
    ``forward_features`` also returns ``depth`` (B, T): how many blocks each token ran, and
    ``running`` (B, L, T): which tokens ran each block. :meth:`forward_dropped` runs one image with
    halted tokens really removed: the pass whose FLOPs and speed chapter 5 reports.
    """

    prior: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        assert isinstance(cfg.variant, AViTSpec)
        self.spec = cfg.variant
        self.register_buffer("prior", halting_prior(cfg.depth, cfg.variant.target_depth(cfg.depth)),
                             persistent=False)

    def _score(self, x: Tensor, last: bool) -> Tensor:
        if last:
            return torch.ones_like(x[..., 0])
        return torch.sigmoid(self.spec.gate_scale * x[..., 0] - self.spec.gate_center)

    def forward_features(self, x: Tensor, return_blocks: bool = False,
                         return_attn: bool = False) -> dict[str, Tensor]:
        embed = self.patch_embed(x)
        x = self._pos_embed(embed)
        B, T, _ = x.shape
        running = x.new_ones(B, T)
        total, remainder, ponder = x.new_zeros(B, T), x.new_ones(B, T), x.new_zeros(B, T)
        out = torch.zeros_like(x)
        blocks, attns, ran, mean_h = [], [], [], []
        for i, blk in enumerate(self.blocks):
            key_bias = (running - 1.0)[:, None, None, :] * 1000.0  # halted keys: -1000 in every head
            y, attn = blk(x, return_attn, key_bias)
            y = torch.where(running[..., None] > 0, y, x)  # a halted token keeps its state
            h = self._score(y, i == len(self.blocks) - 1) * running
            halts = (total + h >= 1 - self.spec.eps) & (running > 0)
            out = out + torch.where(halts, remainder, h)[..., None] * y
            ponder = ponder + running + torch.where(halts, remainder, 0.0)
            remainder = torch.where(halts | (running == 0), remainder, remainder - h)
            total = total + h
            ran.append(running)
            mean_h.append(h.mean())
            running = running * (~halts)
            x = y
            blocks.append(y)
            if attn is not None:
                attns.append(attn)
        dist = torch.stack(mean_h).clamp_min(1e-8)
        dist = (dist / dist.sum()).clamp(0.01, 0.99)
        kl = F.kl_div(dist.log(), self.prior, reduction="sum")
        self.aux_loss = self.spec.ponder * ponder.mean() + self.spec.prior * kl
        tokens = self.norm(out)
        feats = {"tokens": tokens, **split_tokens(tokens, True, self.cfg.num_registers),
                 "depth": torch.stack(ran, 1).sum(1), "running": torch.stack(ran, 1)}
        if return_blocks:
            feats["embed"], feats["blocks"] = embed, torch.stack(blocks, dim=1)
        if return_attn:
            feats["attn"] = torch.stack(attns, dim=1)
        return feats

    @torch.no_grad()
    def forward_dropped(self, image: Tensor) -> Tensor:
        """Logits of one image ``(1, C, H, W)`` with halted tokens removed from the sequence."""
        if image.shape[0] != 1:
            raise ValueError(f"forward_dropped runs one image at a time, got a batch of {image.shape[0]}")
        x = self._pos_embed(self.patch_embed(image))[0]  # (T, D)
        alive = torch.arange(x.shape[0], device=x.device)
        total, remainder = x.new_zeros(x.shape[0]), x.new_ones(x.shape[0])
        out = torch.zeros_like(x)
        for i, blk in enumerate(self.blocks):
            y, _ = blk(x[alive][None])
            y = y[0]
            h = self._score(y, i == len(self.blocks) - 1)
            halts = total[alive] + h >= 1 - self.spec.eps
            out[alive] += torch.where(halts, remainder[alive], h)[:, None] * y
            remainder[alive] = torch.where(halts, remainder[alive], remainder[alive] - h)
            total[alive] += h
            x = x.index_put((alive,), y)
            alive = alive[~halts]
            if not len(alive):
                break
        return self.forward_head({"cls": self.norm(out[:1])})


class VictorViT(RegViT):
    """[CLS], registers and patches run ``block`` blocks; then only [CLS] and the registers go on.
    ``patch`` (what the dense probes read) is the patches after block ``block - 1``, final-normed."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        assert isinstance(cfg.variant, Victor)
        self.keep_until = cfg.variant.block

    def forward_features(self, x: Tensor, return_blocks: bool = False,
                         return_attn: bool = False) -> dict[str, Tensor]:
        embed = self.patch_embed(x)
        x = self._pos_embed(embed)
        P = self.num_prefix_tokens
        blocks, attns = [], []
        for i, blk in enumerate(self.blocks):
            if i == self.keep_until:
                patches, x = x[:, P:], x[:, :P]
            x, attn = blk(x, return_attn and i < self.keep_until)
            if i < self.keep_until:
                blocks.append(x)
                if attn is not None:
                    attns.append(attn)
        tokens = torch.cat([self.norm(x), self.norm(patches)], dim=1)
        out = {"tokens": tokens, **split_tokens(tokens, True, self.cfg.num_registers)}
        if return_blocks:
            out["embed"], out["blocks"] = embed, torch.stack(blocks, dim=1)
        if return_attn:
            out["attn"] = torch.stack(attns, dim=1)
        return out


class HMHSAttention(nn.Module):
    """H-MHSA on a square patch grid: softmax attention inside each ``window`` x ``window`` window
    (``local``), then queries from ``LN(x + local)`` attend to that map average-pooled by ``pool``;
    the output is ``proj(global + local)``. Two softmaxes, so no single attention map: none is returned."""

    def __init__(self, dim: int, num_heads: int, grid: int, window: int, pool: int, eps: float,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.grid, self.window, self.pool = num_heads, grid, window, pool
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm_local, self.norm_pooled = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.q_global = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv_global = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)  # (..., T, D) -> (..., H, T, hd)

    def forward(self, x: Tensor, return_attn: bool = False,
                key_bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if key_bias is not None:
            raise ValueError("H-MHSA takes no key bias")
        B, N, D = x.shape
        g, w = self.grid, self.window
        win = x.reshape(B, g // w, w, g // w, w, D).transpose(2, 3).reshape(-1, w * w, D)  # (B * windows, w*w, D)
        q, k, v = (self._heads(t) for t in self.qkv(win).chunk(3, dim=-1))
        local = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, w * w, D)
        local = local.reshape(B, g // w, g // w, w, w, D).transpose(2, 3).reshape(B, N, D)  # back to row-major
        x2 = self.norm_local(x + local)
        pooled = F.avg_pool2d(x2.transpose(1, 2).reshape(B, D, g, g), self.pool).flatten(2).transpose(1, 2)
        kg, vg = (self._heads(t) for t in self.kv_global(self.norm_pooled(pooled)).chunk(2, dim=-1))
        glob = F.scaled_dot_product_attention(self._heads(self.q_global(x2)), kg, vg).transpose(1, 2).reshape(B, N, D)
        return self.proj(glob + local), None


class HMHSAViT(RegViT):
    """The ViT with every attention replaced by :class:`HMHSAttention` (the MLPs stay plain)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        v = cfg.variant
        assert isinstance(v, HMHSA)
        for blk in self.blocks:
            blk.attn = HMHSAttention(cfg.embed_dim, cfg.num_heads, cfg.grid_size, v.window, v.pool, cfg.norm_eps,
                                     cfg.qkv_bias)
        self.init_weights()


def build_variant(cfg: ModelConfig) -> Encoder:
    """The model of ``cfg.variant`` (called by :func:`~regvit_lib.model.build_model`)."""
    v = cfg.variant
    if isinstance(v, Memory):
        return MemoryViT(cfg)
    if isinstance(v, TokenLearner):
        return TokenLearnerViT(cfg)
    if isinstance(v, AViTSpec):
        return AViT(cfg)
    if isinstance(v, Victor):
        return VictorViT(cfg)
    if isinstance(v, HMHSA):
        return HMHSAViT(cfg)
    from .mamba import VisionMamba

    return VisionMamba(cfg)

