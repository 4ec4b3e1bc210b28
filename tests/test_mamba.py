"""Vision Mamba and Mamba-R (regvit_lib.mamba): the parallel scan, the token layout, the two directions."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from regvit_lib.config import Mamba, ModelConfig
from regvit_lib.flops import count_flops
from regvit_lib.mamba import (BiMambaMixer, VisionMamba, scan_flops, selective_scan, selective_scan_sequential,
                              sequence_order)
from regvit_lib.model import build_model

VIM = ModelConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5, variant=Mamba())
MAMBA_R = replace(VIM, class_token=False, num_registers=4, global_pool="avg")
CONFIGS = {"vim": VIM, "mamba_r": MAMBA_R}
X = torch.rand(2, 3, 16, 16)


def _scan_inputs(L: int, b: int = 2, E: int = 3, N: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(L)
    u = torch.randn(b, L, E, generator=g, dtype=torch.float64, requires_grad=True)
    delta = torch.nn.functional.softplus(torch.randn(b, L, E, generator=g, dtype=torch.float64)).requires_grad_()
    A = -torch.rand(E, N, generator=g, dtype=torch.float64) * 2
    B, C = (torch.randn(b, L, N, generator=g, dtype=torch.float64) for _ in range(2))
    D = torch.randn(E, generator=g, dtype=torch.float64)
    return u, delta, A, B, C, D


@pytest.mark.parametrize("L", [1, 2, 5, 8, 17, 33])
def test_parallel_scan_equals_loop_with_gradients(L):
    args = _scan_inputs(L)
    y, ref = selective_scan(*args), selective_scan_sequential(*args)
    assert y.shape == (2, L, 3) and y.dtype == torch.float64
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=0)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), args[:2])
    ref_grads = torch.autograd.grad((ref * w).sum(), args[:2])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


def test_scan_is_the_recurrence():
    """One step by hand: h_1 = Δ B u, y_1 = C·h_1 + D u; h_2 = exp(Δ A) h_1 + Δ B u."""
    u, delta, A, B, C, D = (a.detach() for a in _scan_inputs(2, b=1, E=1, N=2))
    h1 = delta[0, 0, 0] * B[0, 0] * u[0, 0, 0]
    h2 = torch.exp(delta[0, 1, 0] * A[0]) * h1 + delta[0, 1, 0] * B[0, 1] * u[0, 1, 0]
    want = torch.stack([C[0, 0] @ h1, C[0, 1] @ h2]) + D[0] * u[0, :, 0]
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, D)[0, :, 0], want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_layout_pool_and_logits(name):
    cfg = CONFIGS[name]
    model = build_model(cfg, seed=0)
    assert isinstance(model, VisionMamba) and model.num_prefix_tokens == cfg.num_prefix_tokens
    feats = model.forward_features(X, return_blocks=True, return_attn=True)
    T, R, D = cfg.num_tokens, cfg.num_registers, 32
    assert "attn" not in feats
    assert feats["tokens"].shape == (2, T, D) and feats["patch"].shape == (2, 16, D)
    assert feats["reg"].shape == (2, R, D) and ("cls" in feats) == cfg.class_token
    assert feats["embed"].shape == (2, 16, D) and feats["blocks"].shape == (2, cfg.depth, T, D)
    torch.testing.assert_close(model.norm(feats["blocks"][:, -1]), feats["tokens"])
    pooled = model.pool(feats)
    assert pooled.shape == ((2, D) if cfg.class_token else (2, R * D))
    if cfg.class_token:
        assert torch.equal(pooled, feats["tokens"][:, 0])
    assert model(X).shape == (2, 5) and model.forward_head(feats, pre_logits=True).shape == pooled.shape


def test_token_placement():
    """Vim: [CLS] before patch N // 2. Mamba-R: register i before patch i N // R + N // (2R)."""
    assert sequence_order(VIM) == list(range(1, 9)) + [0] + list(range(9, 17))
    order = sequence_order(MAMBA_R)  # N = 16, R = 4: registers before patches 2, 6, 10, 14
    assert [order.index(i) for i in range(4)] == [2, 7, 12, 17]
    assert [j - 4 for j in order if j >= 4] == list(range(16))  # patches stay row-major
    many = replace(MAMBA_R, num_registers=20)  # more registers than patches: all still placed once
    assert sorted(sequence_order(many)) == list(range(36))


def test_patch_embedding_goes_in_the_right_slot():
    """The canonical layout names the right tokens: moving one patch changes that patch's embed row only."""
    model = build_model(MAMBA_R, seed=0)
    x2 = X.clone()
    x2[:, :, 4:8, 8:12] += 1.0  # patch (row 1, col 2) = patch 6
    changed = (model.forward_features(x2, return_blocks=True)["embed"]
               != model.forward_features(X, return_blocks=True)["embed"]).any(-1).any(0)
    assert changed.nonzero().flatten().tolist() == [6]


def test_backward_branch_sees_the_future():
    """The first output depends on the last input through the flipped branch only; a causal
    (forward-only) scan would never do that."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4).double()
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (mixer(x2)[:, 0] - mixer(x)[:, 0]).abs().max() > 1e-6  # the last token reaches the first
    assert (mixer(x2)[:, -1] - mixer(x)[:, -1]).abs().max() > 1e-6
    u, z = mixer.in_proj(x).chunk(2, dim=-1)
    u2, _ = mixer.in_proj(x2).chunk(2, dim=-1)
    assert torch.equal(mixer.fwd(u2)[:, :-1], mixer.fwd(u)[:, :-1])  # the forward branch alone is causal
    assert (mixer.bwd(u2.flip(1)).flip(1)[:, 0] - mixer.bwd(u.flip(1)).flip(1)[:, 0]).abs().max() > 1e-6
    x3 = x.clone()
    x3[:, 0] += 1.0  # and the forward branch carries the first token to the last
    u3, _ = mixer.in_proj(x3).chunk(2, dim=-1)
    assert (mixer.fwd(u3)[:, -1] - mixer.fwd(u)[:, -1]).abs().max() > 1e-6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_reach_every_parameter(name):
    model = build_model(CONFIGS[name], seed=0)
    torch.nn.functional.cross_entropy(model(X), torch.tensor([1, 3])).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def test_same_seed_same_model():
    torch.manual_seed(3)
    a = VisionMamba(MAMBA_R)
    torch.manual_seed(3)
    b = VisionMamba(MAMBA_R)
    assert torch.equal(a(X), b(X))
    assert torch.equal(build_model(VIM, seed=1)(X), build_model(VIM, seed=1)(X))
    assert not torch.equal(build_model(VIM, seed=1)(X), build_model(VIM, seed=2)(X))


def test_init():
    model = build_model(VIM, seed=0)
    branch = model.blocks[0].mixer.fwd
    dt = torch.nn.functional.softplus(branch.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    torch.testing.assert_close(-torch.exp(branch.A_log[5]), -torch.arange(1.0, 17.0))
    assert torch.equal(branch.D, torch.ones(64)) and branch.A_log.shape == (64, 16)
    assert branch.x_proj.weight.shape == (2 + 2 * 16, 64)  # rank ceil(32 / 16) = 2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_weight_decay_names(name):
    model = build_model(CONFIGS[name], seed=0)
    names = dict(model.named_parameters())
    skip = model.no_weight_decay()
    assert skip <= set(names)
    assert {n for n in names if n.endswith((".A_log", ".D"))} <= skip and "pos_embed" in skip
    assert ("cls_token" in skip) == CONFIGS[name].class_token and ("reg_token" in skip) != CONFIGS[name].class_token
    assert not any("in_proj" in n or "out_proj" in n for n in skip)


def test_scan_flops():
    """By hand for VIM: 2 blocks, 2 directions, T = 17 tokens, E = 64 channels, N = 16 states;
    per (token, direction, channel): 16 * (ΔA 1 + exp 1 + ΔBu 1 + a h + b 2 + C h 2) + Δu 1 + Du 2 = 115."""
    assert scan_flops(VIM) == 2 * 2 * 17 * 64 * 115 == 500_480
    assert scan_flops(replace(VIM, variant=Mamba(d_state=1, expand=1))) == 2 * 2 * 17 * 32 * 10
    with FlopCounterMode(display=False) as counter:  # the counter does not see the scan itself
        selective_scan(*_scan_inputs(5))
    assert counter.get_total_flops() == 0
    model = build_model(VIM, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 16, 16, device="meta"))
    assert count_flops(VIM) == counter.get_total_flops() + scan_flops(VIM)


def test_needs_a_mamba_config():
    with pytest.raises(ValueError):
        VisionMamba(replace(VIM, variant=None))
