"""Vision Mamba (Vim, Zhu et al. 2024) and Mamba-R, Vim with registers (Wang et al. 2025), in pure PyTorch.

Each block replaces attention with a *selective state space* scan. Per inner channel ``e`` and state
``n`` the token sequence ``u_1 .. u_L`` drives a hidden state ``h`` (Mamba, Gu & Dao 2023)::

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t        h: (E, N), h_0 = 0
    y_t = C_t · h_t + D u_t                          (the dot product runs over the N states)

where ``Δ_t = softplus(dt_proj(.))`` (E), ``B_t`` and ``C_t`` (N) are computed from the token itself (the
"selection"), ``A = -exp(A_log)`` (E, N) and ``D`` (E) are learned. The recurrence is linear in ``h``:
``h_t = a_t h_{t-1} + b_t`` unrolls to ``h_t = sum_s (a_{s+1} ... a_t) b_s``, so :func:`selective_scan`
computes it with cumulative sums of ``log a``, a chunk of steps at a time
(:func:`selective_scan_sequential` is the plain loop it is tested against).

A scan is causal; Vim's "v2" mixer (:class:`BiMambaMixer`) runs a second one, with its own weights, on the
sequence reversed, so every token sees every other. Vim puts its [CLS] token in the *middle* of the patch
sequence; Mamba-R drops [CLS] and spreads ``R`` registers evenly among the patches (our rule: register
``i`` goes right before patch ``i N // R + N // (2R)``, the middle of the i-th of R equal runs of patches,
so both scan directions see the same layout) and its head reads all of them, concatenated (Mamba-R's
optional D -> D/r reduction before the head is left out). Every token, [CLS] and registers included,
has its own learned position. :meth:`VisionMamba.forward_features` returns the tokens in the layout of
:class:`~regvit_lib.model.RegViT`, ``[cls, reg_1 .. reg_R, patch_1 .. patch_N]``, whatever order they ran in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Mamba, ModelConfig
from .model import DropPath, Encoder, PatchEmbed, split_tokens

__all__ = ["selective_scan", "selective_scan_sequential", "SSMBranch", "BiMambaMixer", "MambaBlock",
           "VisionMamba", "sequence_order", "scan_flops"]


CHUNK = 8  # steps of the scan done at once by cumulative sums (see selective_scan)
MAX_DECAY = 8.0  # Δ A is clamped at -MAX_DECAY: a state keeps at most e^-8 = 0.03 % of itself in one step anyway


def _discretize(u: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """``log a = max(Δ A, -MAX_DECAY)`` and ``b = Δ B u``, both (b, L, E, N), in float32 at least."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B = u.to(dtype), delta.to(dtype), A.to(dtype), B.to(dtype)
    return (delta[..., None] * A).clamp_min(-MAX_DECAY), (delta * u)[..., None] * B[:, :, None, :]


def _readout(h: Tensor, u: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """``y = C · h + D u``, element-wise (no matmul, so FLOP counters do not see it: :func:`scan_flops`)."""
    return ((h * C[:, :, None, :].to(h.dtype)).sum(-1) + D.to(h.dtype) * u.to(h.dtype)).to(u.dtype)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The selective scan, parallel within chunks of :data:`CHUNK` steps.

    Args:
        u, delta: inputs and step sizes ``(b, L, E)``.
        A: ``(E, N)``; B, C: ``(b, L, N)``; D: ``(E,)``.

    Returns:
        ``y`` (b, L, E), in ``u``'s dtype (computed in float32 or wider). Inside a chunk that starts from
        the state ``h_0``, with ``S_t`` the cumulative sum of ``log a`` from the chunk's start,
        ``h_t = exp(S_t) (h_0 + sum_{s <= t} exp(-S_s) b_s)``: two cumulative sums instead of a loop. The
        exponents stay below ``CHUNK * MAX_DECAY`` = 64, inside float32's range; the chunks run in order.
        Measured on one CPU thread at the ``cpu`` profile's shapes, forward and backward: 2.3x faster than
        the loop over t, 4x faster than a Hillis–Steele scan.
    """
    log_a, b = _discretize(u, delta, A, B)
    h = b.new_zeros(b[:, 0].shape)  # (b, E, N)
    states = []
    for la, bb in zip(log_a.split(CHUNK, dim=1), b.split(CHUNK, dim=1)):  # split, not slicing: cheap backward
        S = la.cumsum(1)
        chunk = torch.exp(S) * (h[:, None] + (torch.exp(-S) * bb).cumsum(1))
        states.append(chunk)
        h = chunk[:, -1]
    return _readout(torch.cat(states, dim=1), u, C, D)


def selective_scan_sequential(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The same as :func:`selective_scan`, as the plain loop over t (the reference of the tests)."""
    log_a, b = _discretize(u, delta, A, B)
    a = torch.exp(log_a)
    h = torch.zeros_like(b[:, 0])  # (b, E, N)
    hs = []
    for t in range(u.shape[1]):
        h = a[:, t] * h + b[:, t]
        hs.append(h)
    return _readout(torch.stack(hs, dim=1), u, C, D)


class SSMBranch(nn.Module):
    """One scan direction of the mixer: causal depthwise conv, SiLU, then the selective scan.

    ``x_proj`` gives, per token, the low-rank ``Δ`` (R = ceil(D / 16) of Mamba), ``B`` and ``C``;
    ``dt_proj`` lifts ``Δ`` back to the E channels.
    """

    def __init__(self, dim: int, inner: int, d_state: int, d_conv: int) -> None:
        super().__init__()
        self.rank, self.d_state = math.ceil(dim / 16), d_state
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, self.rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        # Mamba's init of Δ: softplus(bias) log-uniform in [1e-3, 1e-1], so the bias is its inverse softplus;
        # the weight is uniform in ±rank^-0.5. VisionMamba.init_weights leaves dt_proj alone.
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -self.rank**-0.5, self.rank**-0.5)
            dt = torch.exp(torch.rand(inner) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor) -> Tensor:
        """``(b, L, E) -> (b, L, E)``; the conv is cut to its first L outputs, which keeps it causal."""
        L = x.shape[1]
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2))
        dt, B, C = self.x_proj(x).split([self.rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        return selective_scan(x, delta, -torch.exp(self.A_log), B, C, self.D)


class BiMambaMixer(nn.Module):
    """Vim's bidirectional mixer ("v2"): ``out_proj(((y_f + flip(y_b)) / 2) * silu(z))``, where
    ``[x, z] = in_proj(t)`` (D -> 2E), ``y_f = fwd(x)`` and ``y_b = bwd(flip(x))``, flipped along the
    sequence; the two branches share nothing but ``in_proj`` and ``out_proj``."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 4) -> None:
        super().__init__()
        inner = expand * dim
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.fwd = SSMBranch(dim, inner, d_state, d_conv)
        self.bwd = SSMBranch(dim, inner, d_state, d_conv)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        y = (self.fwd(x) + self.bwd(x.flip(1)).flip(1)) / 2
        return self.out_proj(y * F.silu(z))


class MambaBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(RMSNorm(x))``."""

    def __init__(self, cfg: ModelConfig, v: Mamba) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mixer = BiMambaMixer(cfg.embed_dim, v.d_state, v.expand, v.d_conv)
        self.drop_path = DropPath(cfg.drop_path_rate) if cfg.drop_path_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


def sequence_order(cfg: ModelConfig) -> list[int]:
    """The order the model scans its tokens in: entry ``s`` is the index, in the layout
    ``[cls, reg_1 .. reg_R, patch_1 .. patch_N]``, of the token at position ``s``. [CLS] goes right
    before patch ``N // 2``, register ``i`` (from 0) right before patch ``i N // R + N // (2R)``."""
    N, R, c = cfg.num_patches, cfg.num_registers, int(cfg.class_token)
    before: dict[int, list[int]] = {N // 2: [0]} if cfg.class_token else {}
    for i in range(R):
        before.setdefault(i * N // R + N // (2 * R), []).append(c + i)
    return [j for p in range(N) for j in before.get(p, []) + [c + R + p]]


class VisionMamba(Encoder):
    """Vim (``class_token=True``, no registers) or Mamba-R (registers, no [CLS]) of ``cfg.variant``.

    Args:
        cfg: the architecture; ``cfg.variant`` is a :class:`~regvit_lib.config.Mamba`. ``num_heads``,
            ``mlp*``, ``qkv_bias`` and ``layer_scale_init`` do not apply.

    Init: truncated normal(0.02) for the position embedding, the tokens (as Vim's [CLS]) and every linear
    but ``dt_proj`` (see :class:`SSMBranch`); zero biases; the conv and patch embedding keep PyTorch's.
    """

    seq_order: Tensor  # sequence position -> layout index (a buffer)
    layout_order: Tensor  # layout index -> sequence position

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        v = cfg.variant
        if not isinstance(v, Mamba):
            raise ValueError(f"VisionMamba needs cfg.variant to be a Mamba, got {v!r}")
        self.cfg = cfg
        D, R = cfg.embed_dim, cfg.num_registers
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, R, D)) if R else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, D))  # in sequence order
        order = sequence_order(cfg)
        self.register_buffer("seq_order", torch.tensor(order), persistent=False)
        self.register_buffer("layout_order", torch.tensor(sorted(range(len(order)), key=order.__getitem__)),
                             persistent=False)
        self.blocks = nn.ModuleList(MambaBlock(cfg, v) for _ in range(cfg.depth))
        self.norm = nn.RMSNorm(D, eps=cfg.norm_eps)
        width = D if cfg.class_token else R * D
        self.head = nn.Linear(width, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        for p in (self.pos_embed, self.cls_token, self.reg_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.endswith("dt_proj"):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor, return_blocks: bool = False,
                         return_attn: bool = False) -> dict[str, Tensor]:
        """Run the encoder; the keys and layout of :meth:`RegViT.forward_features
        <regvit_lib.model.RegViT.forward_features>`, the tokens put back from the scan order.

        ``return_attn`` is accepted and ignored: a state space model has no attention map, so
        there is no ``attn`` key. ``blocks`` (with ``return_blocks``) are before the final RMSNorm.
        """
        embed = self.patch_embed(x)  # (B, N, D)
        B = embed.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        x = torch.cat(prefix + [embed], dim=1)[:, self.seq_order] + self.pos_embed  # (B, T, D), scan order
        blocks: list[Tensor] = []
        for blk in self.blocks:
            x = blk(x)
            if return_blocks:
                blocks.append(x[:, self.layout_order])
        x = self.norm(x)[:, self.layout_order]
        out = {"tokens": x, **split_tokens(x, self.cfg.class_token, self.cfg.num_registers)}
        if return_blocks:
            out["embed"] = embed
            out["blocks"] = torch.stack(blocks, dim=1)  # (B, depth, T, D)
        return out

    def pool(self, feats: dict[str, Tensor]) -> Tensor:
        """Vim: [CLS] (B, D). Mamba-R: every register, concatenated (B, R D)."""
        return feats["cls"] if self.cfg.class_token else feats["reg"].flatten(1)

    def no_weight_decay(self) -> set[str]:
        """Tokens, position embedding, and every ``A_log`` and ``D`` (as Mamba and Vim)."""
        return super().no_weight_decay() | {n for n, _ in self.named_parameters()
                                            if n.rsplit(".", 1)[-1] in ("A_log", "D")}


def scan_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the selective scans of one image, which ``FlopCounterMode`` (matmuls and convs
    only) does not see: counted for the recurrence as written (the chunked form does about twice as much).

    Per token, direction, inner channel and state: ``Δ A`` 1 multiply, ``exp`` 1, ``(Δ u) B`` 1,
    ``a h + b`` 2, ``C · h`` 2 (a multiply-add) = 7. Per token, direction and channel: ``Δ u`` 1,
    ``+ D u`` 2 = 3. The gating by ``silu(z)``, the softplus and the average of the two directions are not
    counted (like GELU in :mod:`regvit_lib.flops`). With T tokens, E = expand D channels and N states::

        scan_flops = depth * 2 * T * E * (7 N + 3)
    """
    v = cfg.variant
    if not isinstance(v, Mamba):
        raise ValueError(f"scan_flops needs a Mamba config, got variant={v!r}")
    return cfg.depth * 2 * cfg.num_tokens * v.expand * cfg.embed_dim * (7 * v.d_state + 3)
