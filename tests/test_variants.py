"""The compared methods (chapter 5): shapes, gradients, and the property that pins each definition."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from regvit_lib.config import HMHSA, AViT, ConfigError, Memory, ModelConfig, TokenLearner, Victor
from regvit_lib.flops import count_flops
from regvit_lib.model import Attention, RegViT, build_model
from regvit_lib.train import TRAIN_CODE, run_code
from regvit_lib.variants import AViT as AViTModel
from regvit_lib.variants import HMHSAttention, TokenLearnerModule

BASE = ModelConfig(img_size=16, patch_size=2, embed_dim=32, depth=4, num_heads=4, num_classes=5)
NO_CLS = dict(class_token=False, global_pool="avg")
CONFIGS = {
    "off_by_one": replace(BASE, attention="off_by_one"),
    "kv_bias": replace(BASE, attention="kv_bias"),
    "gated": replace(BASE, attention="gated"),
    "memory": replace(BASE, num_registers=4, variant=Memory()),
    "tokenlearner": replace(BASE, **NO_CLS, variant=TokenLearner(tokens=8, block=2)),
    "tokenlearner_fuser": replace(BASE, **NO_CLS, variant=TokenLearner(tokens=8, block=2, fuser=True)),
    "avit": replace(BASE, variant=AViT(gate_center=0.0)),
    "victor": replace(BASE, num_registers=4, variant=Victor(block=2)),
    "hmhsa": replace(BASE, **NO_CLS, variant=HMHSA(window=4, pool=2)),
}
X = torch.rand(3, 3, 16, 16)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_layout_and_gradients(name):
    cfg = CONFIGS[name]
    model = build_model(cfg, seed=0)
    feats = model.forward_features(X, return_blocks=True, return_attn=True)
    T = cfg.num_prefix_tokens + cfg.num_patches
    assert feats["tokens"].shape == (3, T, 32) and feats["patch"].shape == (3, 64, 32)
    assert feats["reg"].shape == (3, cfg.num_registers, 32) and ("cls" in feats) == cfg.class_token
    kept = feats["blocks"].shape[1]
    assert feats["blocks"].shape == (3, kept, T, 32) and 1 <= kept <= cfg.depth
    if name != "hmhsa":
        assert feats["attn"].shape[2:] == (4, T, T)
    logits = model(X)
    assert logits.shape == (3, 5)
    loss = logits.logsumexp(-1).sum() + (model.aux_loss if model.aux_loss is not None else 0)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.equal(build_model(cfg, seed=0)(X), build_model(cfg, seed=0)(X))  # same seed, same model


def _attention(kind):
    """An attention of ``kind`` (width 32, 4 heads), its output and maps on 7 random tokens, and q, k, v per head."""
    torch.manual_seed(0)
    att = Attention(32, 4, kind=kind)
    x = torch.randn(2, 7, 32)
    out, weights = att(x, return_attn=True)
    assert torch.allclose(att(x)[0], out, atol=1e-6)  # the fast path agrees with the explicit one
    return att, out, weights, att.qkv(x).reshape(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)


def test_off_by_one_is_softmax_with_a_zero_key_and_zero_value():
    att, out, weights, (q, k, v) = _attention("off_by_one")
    zeros = torch.zeros(2, 4, 1, 8)  # one more key with logit 0 (a zero key) and a zero value
    ref = F.scaled_dot_product_attention(q, torch.cat([zeros, k], 2), torch.cat([zeros, v], 2))
    assert torch.allclose(out, att.proj(ref.transpose(1, 2).reshape(2, 7, 32)), atol=1e-6)
    assert (weights.sum(-1) < 1).all()  # every row keeps some weight for "nothing"


def test_a_gate_of_one_is_plain_attention():
    torch.manual_seed(0)
    gated, plain = Attention(32, 4, kind="gated"), Attention(32, 4)
    plain.load_state_dict(gated.state_dict(), strict=False)
    torch.nn.init.zeros_(gated.gate.weight)
    torch.nn.init.constant_(gated.gate.bias, 50.0)  # sigmoid(50) = 1 in float32
    x = torch.randn(2, 7, 32)
    assert torch.allclose(gated(x)[0], plain(x)[0], atol=1e-6)
    torch.nn.init.constant_(gated.gate.bias, -50.0)  # a gate of zero: the head does nothing
    assert torch.allclose(gated(x)[0], gated.proj.bias.expand(2, 7, 32), atol=1e-6)


def test_kv_bias_is_one_more_learned_key_and_value_per_head():
    att, out, weights, (q, k, v) = _attention("kv_bias")
    logits = torch.cat([q @ att.k_bias.expand(2, -1, -1, -1).transpose(-2, -1), q @ k.transpose(-2, -1)], -1)
    w = (logits / 8**0.5).softmax(-1)  # (2, 4, 7, 1 + 7)
    ref = w[..., :1] * att.v_bias + w[..., 1:] @ v
    assert torch.allclose(out, att.proj(ref.transpose(1, 2).reshape(2, 7, 32)), atol=1e-6)
    assert torch.allclose(weights, w[..., 1:], atol=1e-6)  # the maps show the real keys only


def test_avit_with_halting_disabled_is_the_vit():
    cfg = replace(BASE, variant=AViT(gate_center=1e6))
    avit = build_model(cfg, seed=1).eval()
    vit = build_model(BASE, seed=1).eval()
    vit.load_state_dict(avit.state_dict())
    assert torch.allclose(avit(X), vit(X), atol=1e-6)
    assert (avit.forward_features(X)["depth"] == 4).all()  # every token ran every block


def test_avit_really_drops_halted_tokens_and_halts_some():
    model = build_model(CONFIGS["avit"], seed=0).eval()
    assert isinstance(model, AViTModel)
    feats = model.forward_features(X)
    assert feats["depth"].float().mean() < 4  # with gate_center 0 tokens halt early
    for i in range(3):
        assert torch.allclose(model.forward_dropped(X[i : i + 1]), model(X[i : i + 1]), atol=1e-5)
    with pytest.raises(ValueError, match="one image"):
        model.forward_dropped(X)


def test_tokenlearner_with_identity_maps_keeps_the_tokens():
    module = TokenLearnerModule(32, tokens=10, bottleneck=8, eps=1e-6)
    x = torch.randn(2, 10, 32)
    assert torch.allclose(module.maps(x).sum(-1), torch.ones(2, 10))
    module.maps = lambda x: torch.eye(10).expand(2, 10, 10)  # S = N, each map picks one token
    assert torch.equal(module(x), x)


def test_tokenlearner_fuser_starts_as_the_identity_on_the_grid():
    model = build_model(CONFIGS["tokenlearner_fuser"], seed=0)
    blocks = model.forward_features(X, return_blocks=True)["blocks"]
    assert torch.allclose(blocks[:, 2], blocks[:, 1]) and torch.allclose(blocks[:, 3], blocks[:, 1])  # zero-init mix


def test_victor_patches_stop_at_the_drop():
    model = build_model(CONFIGS["victor"], seed=0)
    before = model.forward_features(X)
    with torch.no_grad():
        for p in model.blocks[3].parameters():
            p.add_(1.0)
    after = model.forward_features(X)
    assert torch.equal(before["patch"], after["patch"]) and not torch.allclose(before["cls"], after["cls"])


def test_memory_tokens_are_registers_with_a_position_read_by_the_head():
    mem = build_model(CONFIGS["memory"], seed=0)
    reg = build_model(replace(BASE, num_registers=4), seed=0)
    reg.load_state_dict(mem.state_dict(), strict=False)
    with torch.no_grad():
        mem.mem_pos_embed.zero_()
    a, b = mem.forward_features(X), reg.forward_features(X)
    assert torch.allclose(a["tokens"], b["tokens"], atol=1e-6)
    assert torch.allclose(mem.pool(a), torch.cat([a["cls"][:, None], a["reg"]], 1).mean(1))


def test_hmhsa_with_one_window_and_no_global_values_is_plain_attention():
    torch.manual_seed(0)
    h = HMHSAttention(32, 4, grid=4, window=4, pool=2, eps=1e-6)
    plain = Attention(32, 4)
    plain.load_state_dict({k: v for k, v in h.state_dict().items() if k.split(".")[0] in ("qkv", "proj")})
    with torch.no_grad():
        h.kv_global.weight[32:].zero_()
        h.kv_global.bias[32:].zero_()  # global values of zero: only the local (here: whole-grid) attention is left
    x = torch.randn(2, 16, 32)
    assert torch.allclose(h(x)[0], plain(x)[0], atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(**NO_CLS, variant=TokenLearner(tokens=64)), "fewer than the 64 patches"),
    (dict(**NO_CLS, variant=TokenLearner(block=4)), "inside the depth"),
    (dict(**NO_CLS, variant=TokenLearner(block=0)), "block must be >= 1"),
    (dict(variant=TokenLearner()), "no \\[CLS\\]"),
    (dict(**NO_CLS, variant=HMHSA(window=3)), "window=3 does not divide the 8x8"),
    (dict(**NO_CLS, variant=HMHSA(pool=5)), "pool=5 does not divide"),
    (dict(variant=Victor()), "needs registers"),
    (dict(variant=Memory()), "num_registers >= 1"),
    (dict(num_registers=-1), "num_registers must be >= 0, got -1"),
    (dict(attention="sigmoid"), "attention must be one of"),
    (dict(variant="tokenlearner"), "variant must be one of"),
    (dict(variant=AViT(eps=1.5)), "eps must be in"),
])
def test_bad_settings_are_refused_naming_the_value(bad, match):
    with pytest.raises(ConfigError, match=match):
        replace(BASE, **bad)


def _vit_flops(cfg: ModelConfig, tokens_per_block: list[int]) -> int:
    """An independent count: 2 FLOPs per multiply-add of every matmul (patch embedding, QKV, QK^T, AV,
    projection, MLP, head)."""
    D, hidden, N = cfg.embed_dim, cfg.mlp_hidden_dim, cfg.num_patches
    embed = 2 * N * D * cfg.in_chans * cfg.patch_size**2
    blocks = sum(2 * t * (3 * D * D + D * D + 2 * D * hidden) + 2 * 2 * t * t * D for t in tokens_per_block)
    return embed + blocks + 2 * D * cfg.num_classes


def test_flops_against_an_independent_formula():
    T = BASE.num_tokens
    assert count_flops(BASE) == _vit_flops(BASE, [T] * 4)
    tl = CONFIGS["tokenlearner"]
    learner = 2 * 64 * (32 * 64 + 64 * 8) + 2 * 8 * 64 * 32  # the maps' MLP on 64 patches, then 8 weighted sums
    assert count_flops(tl) == _vit_flops(tl, [64, 64, 8, 8]) + learner
    victor = CONFIGS["victor"]
    assert count_flops(victor) == _vit_flops(victor, [69, 69, 5, 5])
    gated = CONFIGS["gated"]
    assert count_flops(gated) == _vit_flops(gated, [T] * 4) + 4 * 2 * T * 32 * 4  # the gate's D x H linear


def test_a_variant_run_is_keyed_by_its_own_code_too():
    assert run_code(BASE) == TRAIN_CODE and run_code(replace(BASE, attention="gated")) == TRAIN_CODE
    assert run_code(CONFIGS["avit"])[-1] == "variants.py"


def test_sink_free_attentions_stay_regvits():
    assert isinstance(build_model(CONFIGS["gated"]), RegViT)
