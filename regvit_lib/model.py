"""A compact Vision Transformer with register tokens.

The model a reader can hold in their head: patch embedding, learnable position embedding
on the patches, an optional [CLS] token and ``R`` register tokens, pre-norm blocks, a final
LayerNorm and a linear head that reads [CLS] or the mean of the patch tokens.

Token layout (one place, :func:`split_tokens`)::

    [cls, reg_1, ..., reg_R, patch_1, ..., patch_N]      num_prefix_tokens = 1 + R

Registers are inserted *after* the position embedding has been added to the patches, so they
carry no position (the DINOv2 placement, Darcet et al. 2024, Sec. 3), and are discarded at
the output. Parameter names match timm's ``VisionTransformer``, so weights move between the
two with :mod:`regvit_lib.timm_interop`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

__all__ = ["Encoder", "Attention", "Mlp", "SwiGLU", "LayerScale", "DropPath", "Block", "RegViT",
           "build_model", "patchify", "split_tokens", "count_parameters"]


class Attention(nn.Module):
    """Multi-head self-attention, softmax(Q K^T / sqrt(d)) V, per head.

    ``kind`` gives a head a way to attend to *nothing* without a sink token (chapter 5):

    * ``"softmax"``: plain attention; every row of weights sums to 1.
    * ``"off_by_one"``: softmax with a 1 added to the denominator (Miller 2023), the same as one
      more key with logit 0 and value 0; a row may sum to less than 1.
    * ``"kv_bias"``: one learned key and value per head that every query may attend to (Sun et al.
      2024, "Massive activations"); the bias key's weight is left out of the returned maps.
    * ``"gated"``: a sigmoid gate per head and token, computed from the block's input, scales the
      head's output before the projection (Qiu et al. 2025, head-wise G1).

    The fast path is :func:`torch.nn.functional.scaled_dot_product_attention`; it cannot
    return the attention weights, so ``return_attn=True`` takes the explicit softmax path. The
    returned maps are the weights on the real tokens: with ``off_by_one`` and ``kv_bias`` each row
    sums to 1 minus the weight on the extra slot.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, kind: str = "softmax") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.kind = kind
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if kind == "kv_bias":
            self.k_bias = nn.Parameter(0.02 * torch.randn(1, num_heads, 1, self.head_dim))
            self.v_bias = nn.Parameter(0.02 * torch.randn(1, num_heads, 1, self.head_dim))
        if kind == "gated":
            self.gate = nn.Linear(dim, num_heads)

    def forward(self, x: Tensor, return_attn: bool = False,
                key_bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``key_bias`` (B, 1, 1, N), if given, is added to every head's logits (A-ViT masks halted keys)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
        gate = torch.sigmoid(self.gate(x))[..., None] if self.kind == "gated" else None  # (B, N, H, 1)
        extra = 0
        if self.kind == "kv_bias":  # the bias key and value go first
            k = torch.cat([self.k_bias.expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([self.v_bias.expand(B, -1, -1, -1), v], dim=2)
            extra = 1
            if key_bias is not None:
                key_bias = F.pad(key_bias, (1, 0))
        attn = None
        if return_attn or self.kind == "off_by_one":
            logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, extra + N)
            if key_bias is not None:
                logits = logits + key_bias
            if self.kind == "off_by_one":  # a zero logit whose value is zero
                weights = torch.cat([logits.new_zeros(logits.shape[:-1] + (1,)), logits], -1).softmax(-1)[..., 1:]
            else:
                weights = logits.softmax(dim=-1)
            x = weights @ v  # (B, H, N, hd)
            attn = weights[..., extra:] if return_attn else None  # (B, H, N, N)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)  # (B, H, N, hd)
        x = x.transpose(1, 2)  # (B, N, H, hd)
        if gate is not None:
            x = x * gate
        x = x.reshape(B, N, D)
        return self.proj(x), attn


class Mlp(nn.Module):
    """Two linear layers with a GELU between, applied to each token on its own."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """DINOv2-g's gated MLP, packed as timm's ``SwiGLUPacked``: fc2(silu(a) * b), [a, b] = fc1(x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(a) * b)


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (Touvron et al., CaiT / DeiT-III)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample, rescale the survivors."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        mlp_cls = SwiGLU if cfg.mlp == "swiglu" else Mlp

        def scale() -> nn.Module:
            return nn.Identity() if cfg.layer_scale_init is None else LayerScale(dim, cfg.layer_scale_init)

        def drop() -> nn.Module:
            return DropPath(cfg.drop_path_rate) if cfg.drop_path_rate > 0 else nn.Identity()

        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.attention)
        self.ls1, self.drop_path1 = scale(), drop()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = mlp_cls(dim, cfg.mlp_hidden_dim)
        self.ls2, self.drop_path2 = scale(), drop()

    def forward(self, x: Tensor, return_attn: bool = False,
                key_bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        y, attn = self.attn(self.norm1(x), return_attn, key_bias)
        x = x + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, attn


class PatchEmbed(nn.Module):
    """Cut the image into P x P patches and project each to D (a strided conv = E x_p)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected images of shape (B, C, {self.img_size}, {self.img_size}), got {tuple(x.shape)}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut ``(B, C, H, W)`` images into flattened patches ``(B, N, C * P * P)``, row-major.

    Each patch is flattened in (channel, row, column) order, the order of the patch-embedding
    convolution's weight, so ``patchify(x, P) @ E`` equals the convolution.
    """
    B, C, H, W = images.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"image size {H}x{W} is not divisible by patch_size={patch_size}")
    x = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # (B, C, gh, gw, P, P)
    x = x.permute(0, 2, 3, 1, 4, 5)  # (B, gh, gw, C, P, P)
    return x.reshape(B, (H // patch_size) * (W // patch_size), C * patch_size * patch_size)


def split_tokens(x: Tensor, class_token: bool, num_registers: int) -> dict[str, Tensor]:
    """Name the slices of a token sequence ``(..., T, D)``: ``cls`` (if any), ``reg``, ``patch``.

    ``reg`` is always present (shape ``(..., R, D)``, possibly ``R = 0``).
    """
    c = int(class_token)
    out = {"reg": x[..., c : c + num_registers, :], "patch": x[..., c + num_registers :, :]}
    if class_token:
        out["cls"] = x[..., 0, :]
    return out


class Encoder(nn.Module):
    """What the training loop, the cache, the summaries and the probes need of a model.

    :class:`RegViT` is the book's model; the methods of chapter 5 (:mod:`regvit_lib.variants`,
    :mod:`regvit_lib.mamba`) are encoders too. ``forward_features`` returns the tokens in one
    layout, ``[cls, reg_1 .. reg_R, patch_1 .. patch_N]``, whatever order the model runs them in:
    ``tokens`` (final-normed), ``cls`` / ``reg`` / ``patch``; with ``return_blocks`` ``embed`` and
    ``blocks`` (B, L, T, D) for the blocks that still hold every token (a method that drops the
    patches returns fewer than ``depth``); with ``return_attn`` ``attn`` (B, L, H, T, T) where the
    model has attention maps. The patches a dense probe reads are ``patch``.
    """

    cfg: ModelConfig
    num_prefix_tokens: int
    head: nn.Module
    aux_loss: Tensor | None = None  # a training-loss term the last forward pass computed (A-ViT)

    def forward_features(self, x: Tensor, return_blocks: bool = False,
                         return_attn: bool = False) -> dict[str, Tensor]:
        raise NotImplementedError

    def pool(self, feats: dict[str, Tensor]) -> Tensor:
        """The image representation the head reads."""
        raise NotImplementedError

    def forward_head(self, feats: dict[str, Tensor], pre_logits: bool = False) -> Tensor:
        x = self.pool(feats)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay besides biases and norms (timm's convention)."""
        return {n for n, _ in self.named_parameters() if "token" in n or "pos_embed" in n or n.endswith(("k_bias", "v_bias"))}


class RegViT(Encoder):
    """Vision Transformer with optional [CLS] and register tokens.

    Args:
        cfg: the architecture; see :class:`~regvit_lib.config.ModelConfig`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_registers, D)) if cfg.num_registers else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, D))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """timm's default ViT init: truncated normal(0.02) linears and position embedding."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for tok in (self.cls_token, self.reg_token):
            if tok is not None:
                nn.init.normal_(tok, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Add position to the patches, then put [CLS] and the registers in front."""
        x = x + self.pos_embed  # (B, N, D)
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        return torch.cat(prefix + [x], dim=1)  # (B, P + N, D)

    def forward_features(
        self, x: Tensor, return_blocks: bool = False, return_attn: bool = False
    ) -> dict[str, Tensor]:
        """Run the encoder.

        Args:
            x: images ``(B, C, H, W)``.
            return_blocks: also return every block's output tokens (before the final norm)
                and the patch embeddings, from this same forward pass.
            return_attn: also return every block's attention maps.

        Returns:
            ``tokens`` (B, T, D), the final-normed sequence, and its named slices ``cls``
            (B, D; with a class token), ``reg`` (B, R, D), ``patch`` (B, N, D). With
            ``return_blocks``: ``embed`` (B, N, D) patch embeddings before position, and
            ``blocks`` (B, depth, T, D). With ``return_attn``: ``attn`` (B, depth, H, T, T).
        """
        embed = self.patch_embed(x)  # (B, N, D)
        x = self._pos_embed(embed)  # (B, T, D)
        blocks: list[Tensor] = []
        attns: list[Tensor] = []
        for blk in self.blocks:
            x, attn = blk(x, return_attn)
            blocks.append(x)
            if attn is not None:
                attns.append(attn)
        x = self.norm(x)
        out = {"tokens": x, **split_tokens(x, self.cfg.class_token, self.cfg.num_registers)}
        if return_blocks:
            out["embed"] = embed
            out["blocks"] = torch.stack(blocks, dim=1)  # (B, depth, T, D)
        if return_attn and attns:  # (H-MHSA has no attention map to return)
            out["attn"] = torch.stack(attns, dim=1)  # (B, depth, H, T, T)
        return out

    def pool(self, feats: dict[str, Tensor]) -> Tensor:
        """The image representation the head reads: [CLS], or the mean of the patch tokens."""
        return feats["cls"] if self.cfg.global_pool == "token" else feats["patch"].mean(dim=1)


def build_model(cfg: ModelConfig, seed: int = 0, device: str | torch.device = "cpu") -> Encoder:
    """Build the model of ``cfg`` (a :class:`RegViT`, or the variant it names) whose initial weights
    depend only on ``cfg`` and ``seed``.

    The global RNG state is left as it was. ``device="meta"`` builds a shape-only model
    (no memory), which is how the FLOP counts of ViT-g are taken on a laptop.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            if cfg.variant is None:
                return RegViT(cfg)
            from .variants import build_variant  # the compared methods build on this module

            return build_variant(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in model.parameters())
