from dataclasses import replace

import pytest
import torch

from regvit_lib import ModelConfig, build_model, count_parameters, split_tokens

CFG = ModelConfig(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=3, num_classes=5)


@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        replace(CFG, num_registers=4),
        replace(CFG, num_registers=2, class_token=False, global_pool="avg"),
        replace(CFG, mlp="swiglu", mlp_ratio=8 / 3, layer_scale_init=1e-5, num_registers=1),
    ],
)
def test_forward_shapes_and_token_slices(cfg: ModelConfig) -> None:
    model = build_model(cfg).eval()
    x = torch.rand(2, 3, 16, 16)
    f = model.forward_features(x, return_blocks=True, return_attn=True)
    T = cfg.num_tokens
    assert f["tokens"].shape == (2, T, 24)
    assert f["reg"].shape == (2, cfg.num_registers, 24)
    assert f["patch"].shape == (2, cfg.num_patches, 24)
    assert ("cls" in f) == cfg.class_token
    assert f["embed"].shape == (2, cfg.num_patches, 24)
    assert f["blocks"].shape == (2, cfg.depth, T, 24)
    assert f["attn"].shape == (2, cfg.depth, cfg.num_heads, T, T)
    # attention rows are distributions
    torch.testing.assert_close(f["attn"].sum(-1), torch.ones(2, cfg.depth, cfg.num_heads, T))
    # the returned block outputs are those of this same pass: final norm of the last = tokens
    torch.testing.assert_close(model.norm(f["blocks"][:, -1]), f["tokens"])
    assert model(x).shape == (2, 5)


def test_attention_paths_agree() -> None:
    """The explicit-softmax path (for attention maps) equals the fused SDPA path."""
    model = build_model(replace(CFG, num_registers=4)).eval()
    x = torch.rand(3, 3, 16, 16)
    plain = model.forward_features(x)["tokens"]
    with_attn = model.forward_features(x, return_attn=True)["tokens"]
    assert (plain - with_attn).abs().max() < 1e-5


def test_registers_have_no_position_and_are_discarded() -> None:
    cfg = replace(CFG, num_registers=3)
    model = build_model(cfg).eval()
    x = torch.rand(2, 3, 16, 16)
    z0 = model._pos_embed(model.patch_embed(x))
    # [CLS] and registers enter exactly as their learned vectors (no position added) ...
    torch.testing.assert_close(z0[:, 0], model.cls_token[0].expand(2, -1))
    torch.testing.assert_close(z0[:, 1:4], model.reg_token.expand(2, -1, -1))
    # ... the patches with their position
    torch.testing.assert_close(z0[:, 4:], model.patch_embed(x) + model.pos_embed)
    # the head reads [CLS] only: changing the register outputs leaves the logits unchanged
    f = model.forward_features(x)
    f2 = dict(f, reg=f["reg"] * 0 + 100)
    torch.testing.assert_close(model.forward_head(f), model.forward_head(f2))
    # registers cost R * D parameters
    base = count_parameters(build_model(CFG))
    assert count_parameters(model) - base == 3 * cfg.embed_dim


def test_registers_change_the_computation() -> None:
    """Registers take part in attention: patch outputs differ from the same model without them."""
    cfg = replace(CFG, num_registers=2)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.reg_token.normal_(std=1.0)
    x = torch.rand(1, 3, 16, 16)
    with_reg = model.forward_features(x)["patch"]
    model.reg_token = torch.nn.Parameter(model.reg_token[:, :0])  # drop them
    model.cfg = replace(cfg, num_registers=0)
    without = model.forward_features(x)["patch"]
    assert (with_reg - without).abs().max() > 1e-3


def test_build_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_model(CFG, seed=7), build_model(CFG, seed=7), build_model(CFG, seed=8)
    assert torch.equal(torch.rand(1), expected_next)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), k
    assert not torch.equal(a.pos_embed, c.pos_embed)


def test_wrong_image_size_is_refused() -> None:
    model = build_model(CFG)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, 16, 16\), got \(1, 3, 32, 32\)"):
        model(torch.rand(1, 3, 32, 32))


def test_drop_path_only_in_training() -> None:
    model = build_model(replace(CFG, drop_path_rate=0.5))
    x = torch.rand(8, 3, 16, 16)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    b = model(x)
    assert (a - b).abs().max() > 1e-4
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_split_tokens_layout() -> None:
    x = torch.arange(2 * 7 * 1, dtype=torch.float32).reshape(2, 7, 1)
    s = split_tokens(x, class_token=True, num_registers=2)
    assert s["cls"][:, 0].tolist() == [0.0, 7.0]
    assert s["reg"][0, :, 0].tolist() == [1.0, 2.0]
    assert s["patch"][0, :, 0].tolist() == [3.0, 4.0, 5.0, 6.0]
    s = split_tokens(x, class_token=False, num_registers=0)
    assert "cls" not in s and s["reg"].shape[1] == 0 and s["patch"].shape[1] == 7
