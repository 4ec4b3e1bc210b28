"""Test-time registers (Jiang et al. 2025): planted register neurons are found, and the appended token
takes the outliers off the patches; the model is restored exactly; a hooked timm model is refused."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import regvit_lib  # noqa: F401  (before timm: the torchvision shim)
from regvit_lib import ModelConfig, build_model, testtime
from regvit_lib.analysis import OUTLIER_K, collect, detect_outliers, norms_at, ratio_per_layer
from regvit_lib.model import RegViT

CFG = ModelConfig(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, num_classes=5)
BLOCK, NEURON, POSITIONS = 1, 7, [3, 10]  # the planted register neuron and the patches it fires on


def _model(cfg: ModelConfig = CFG) -> RegViT:
    model = build_model(cfg, seed=0).eval()
    assert isinstance(model, RegViT)
    return model


def _images(n: int = 8) -> Tensor:
    return torch.rand(n, 3, CFG.img_size, CFG.img_size, generator=torch.Generator().manual_seed(0))


@contextmanager
def _planted(model: RegViT) -> Iterator[None]:
    """Neuron NEURON of block BLOCK fires at POSITIONS, and its output direction is large: MLP outliers."""
    blk = model.blocks[BLOCK]
    pos = [model.cfg.num_prefix_tokens + p for p in POSITIONS]

    def hook(_module: nn.Module, _inputs: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out[:, pos, NEURON] += 50.0
        return out

    with torch.no_grad():
        blk.mlp.fc2.weight[:, NEURON] *= 20.0
    with blk.mlp.act.register_forward_hook(hook):
        yield


def test_planted_register_neurons_are_found_and_moved_to_the_test_time_register() -> None:
    model, images = _model(), _images()
    with _planted(model):
        before = collect(model, images, attn=False)
        assert detect_outliers(before, BLOCK).mask[:, POSITIONS].all()
        found = testtime.find_register_neurons(model, images, top=5)
        assert found.neurons[0] == (BLOCK, NEURON) and found.scores[0] > 10 * found.scores[1]
        assert found.outliers >= len(images) * len(POSITIONS) and found.ratio > OUTLIER_K
        assert all(b <= found.detect_block for b, _ in found.neurons)
        with testtime.test_time_registers(model, found.neurons[:1]):
            after = collect(model, images, attn=False)
        assert after.cfg.num_registers == 1 and after.norms.shape[-1] == CFG.num_tokens + 1
        assert ratio_per_layer(after)[:, BLOCK].max() < OUTLIER_K  # no outlier left among the patches
        ttr = norms_at(after, BLOCK)["reg"][:, 0]
        median = norms_at(after, BLOCK)["patch"].median(dim=1).values
        assert (ttr > OUTLIER_K * median).all()  # the new register holds the large norm


def test_a_model_without_outliers_raises_no_outliers_with_the_ratio() -> None:
    with pytest.raises(testtime.NoOutliers, match=r"ratio: mean \d+\.\d+, max \d+\.\d+") as err:
        testtime.find_register_neurons(_model(), _images())
    assert isinstance(err.value, ValueError) and "k=4" in str(err.value)


def test_the_model_is_exactly_restored_on_exit_even_after_an_error() -> None:
    model, images = _model(), _images(4)
    cfg, state = model.cfg, {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits, tokens = model(images), model.forward_features(images)["tokens"]
        with pytest.raises(RuntimeError, match="boom"):
            with testtime.test_time_registers(model, [(0, 1), (2, 5)], scale=2.0):
                assert model(images).shape == logits.shape
                raise RuntimeError("boom")
        assert torch.equal(model(images), logits) and torch.equal(model.forward_features(images)["tokens"], tokens)
    assert model.cfg is cfg and model.num_prefix_tokens == cfg.num_prefix_tokens
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert "_pos_embed" not in vars(model)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_the_intervention_is_batch_size_independent() -> None:
    model, images = _model(replace(CFG, num_registers=2)), _images(4)
    with torch.no_grad(), testtime.test_time_registers(model, [(0, 3), (1, 7), (1, 9)]):
        batch = model.forward_features(images)["tokens"]
        single = torch.cat([model.forward_features(images[i : i + 1])["tokens"] for i in range(4)])
        assert torch.allclose(model(images), torch.cat([model(images[i : i + 1]) for i in range(4)]), atol=1e-5)
    assert batch.shape[1] == CFG.num_patches + 1 + 2 + 1
    assert torch.allclose(batch, single, atol=1e-5)


def test_no_neurons_only_appends_a_register() -> None:
    model, images = _model(), _images(2)
    with testtime.test_time_registers(model, []) as m:
        assert m is model and m.cfg.num_registers == CFG.num_registers + 1
        out = collect(m, images, attn=True)
        assert not any(mod._forward_pre_hooks for mod in model.modules())
    assert out.attn is not None and out.attn.shape[-1] == CFG.num_tokens + 1
    assert out.norms.shape == (2, CFG.depth, CFG.num_tokens + 1) and model.cfg.num_registers == 0


def test_bad_requests_are_refused() -> None:
    model = _model()
    with pytest.raises(IndexError, match="no hidden neuron"):
        with testtime.test_time_registers(model, [(0, CFG.mlp_hidden_dim)]):
            pass
    with testtime.test_time_registers(model, []):
        with pytest.raises(RuntimeError, match="already"):
            with testtime.test_time_registers(model, []):
                pass
    with pytest.raises(TypeError, match="as_regvit"):
        with testtime.test_time_registers(nn.Linear(2, 2), []):  # type: ignore[arg-type]
            pass


def test_as_regvit_refuses_a_hooked_timm_model() -> None:
    from timm.models.vision_transformer import VisionTransformer

    from regvit_lib.analysis import as_regvit

    tm = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5).eval()
    images = _images(2)
    assert collect(tm, images, attn=False).norms.shape == (2, 2, 17)  # unhooked: converted and measured
    with tm.blocks[1].mlp.act.register_forward_hook(lambda *_: None), tm.register_forward_pre_hook(lambda *_: None):
        with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.act.*convert it first with as_regvit"):
            as_regvit(tm)
        with pytest.raises(ValueError, match="hooks on"):
            collect(tm, images)
    assert isinstance(as_regvit(tm), RegViT)  # the hooks are gone: converts again
