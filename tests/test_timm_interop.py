"""Weights move between RegViT and timm's VisionTransformer, and both compute the same function."""

import copy
from dataclasses import replace

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from regvit_lib import ModelConfig, build_model
from regvit_lib.timm_interop import (
    TimmConversionError,
    regvit_from_timm,
    regvit_to_timm,
    timm_to_regvit_state_dict,
)

SMALL = dict(img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3, num_classes=7)
LAYOUTS = {
    "cls, no registers (original ViT)": dict(),
    "DINOv2 registers: reg_tokens=4, no_embed_class": dict(reg_tokens=4, no_embed_class=True, init_values=1e-5),
    "registers with their own pos-embed (folded)": dict(reg_tokens=2, no_embed_class=False),
    "DINOv2-g SwiGLU": dict(mlp_ratio=2.66667 * 2, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU,
                            init_values=1e-5, reg_tokens=4, no_embed_class=True),
    "average pooling, no cls": dict(global_pool="avg", fc_norm=False, class_token=False, reg_tokens=1),
}


def _randomised_timm(**kwargs: object) -> VisionTransformer:
    model = VisionTransformer(**SMALL, **kwargs).eval()
    with torch.no_grad():  # move away from the init, where small errors could hide
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_timm_to_regvit_same_outputs(layout: str) -> None:
    tm = _randomised_timm(**LAYOUTS[layout])
    ours = regvit_from_timm(tm)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (tm(x) - ours(x)).abs().max().item() < 1e-5
        assert (tm.forward_features(x) - ours.forward_features(x)["tokens"]).abs().max().item() < 1e-5
        # every block's output, not only the last
        inter = tm.forward_intermediates(x, intermediates_only=True, output_fmt="NLC", return_prefix_tokens=True)
        blocks = ours.forward_features(x, return_blocks=True)["blocks"]
        for i, (patch, prefix) in enumerate(inter):
            full = torch.cat([prefix, patch], dim=1)
            assert (full - blocks[:, i]).abs().max().item() < 1e-5


@pytest.mark.parametrize("num_registers", [0, 4])
def test_regvit_to_timm_same_outputs(num_registers: int) -> None:
    cfg = ModelConfig(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3,
                      num_registers=num_registers, layer_scale_init=1e-4)
    ours = build_model(cfg, seed=3).eval()
    tm = regvit_to_timm(ours)
    assert tm.num_reg_tokens == num_registers and tm.no_embed_class
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (tm(x) - ours(x)).abs().max().item() < 1e-5
    # the LayerScale init value is not recoverable from weights; everything else round-trips
    assert replace(regvit_from_timm(tm).cfg, layer_scale_init=1e-4) == ours.cfg


def test_state_dict_filter_is_pure_and_folds_positions() -> None:
    tm = _randomised_timm(reg_tokens=2, no_embed_class=False)
    sd = tm.state_dict()
    before = copy.deepcopy(sd)
    cfg = regvit_from_timm(tm).cfg
    out = timm_to_regvit_state_dict(sd, cfg)
    for k in before:
        assert torch.equal(before[k], sd[k]), f"input modified at {k}"
    assert out["pos_embed"].shape[1] == cfg.num_patches
    torch.testing.assert_close(out["cls_token"], sd["cls_token"] + sd["pos_embed"][:, :1])
    torch.testing.assert_close(out["reg_token"], sd["reg_token"] + sd["pos_embed"][:, 1:3])


def test_unsupported_timm_features_are_named() -> None:
    with pytest.raises(TimmConversionError, match=r"fc_norm"):
        regvit_from_timm(VisionTransformer(**SMALL, global_pool="avg"))  # timm default: norm after pooling
    with pytest.raises(TimmConversionError, match=r"q/k norm"):
        regvit_from_timm(VisionTransformer(**SMALL, qk_norm=True))
    bad = dict(SMALL, img_size=32)
    tm = VisionTransformer(**bad)
    with pytest.raises(TimmConversionError, match=r"pos_embed has 7 positions"):
        timm_to_regvit_state_dict({"pos_embed": torch.zeros(1, 7, 48)}, regvit_from_timm(tm).cfg)
