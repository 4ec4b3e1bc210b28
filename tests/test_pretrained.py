"""The pretrained path, offline: a timm-format checkpoint written here, loaded by the real code."""

import pytest
import timm
import torch

from regvit_lib import ConfigError
from regvit_lib.analysis import collect, detect_outliers
from regvit_lib.data import photos
from regvit_lib.pretrained import PRETRAINED, load_pretrained, resolve, twin


def test_names_resolve_and_twins_pair_up() -> None:
    assert resolve("dinov2-g") == "vit_giant_patch14_dinov2.lvd142m"
    assert resolve("vit_giant_patch14_dinov2.lvd142m") == "vit_giant_patch14_dinov2.lvd142m"
    for size in "sblg":
        assert twin(f"dinov2-{size}") == PRETRAINED[f"dinov2-{size}-reg"]
        assert twin(f"dinov2-{size}-reg") == PRETRAINED[f"dinov2-{size}"]
    assert twin("deit3-b") is None
    with pytest.raises(ConfigError, match="unknown pretrained model 'dinov3-g'"):
        resolve("dinov3-g")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A DINOv2-S/14 with 4 registers, randomly initialised by timm at 56 px, saved as a state dict."""
    torch.manual_seed(0)
    tm = timm.create_model(PRETRAINED["dinov2-s-reg"], pretrained=False, img_size=56, num_classes=0).eval()
    with torch.no_grad():
        for p in tm.parameters():  # move away from the init, where small errors could hide
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "dinov2_s_reg4.pth"
    torch.save({"model": tm.state_dict()}, path)
    return tm, path


def test_checkpoint_loads_into_the_same_function(checkpoint) -> None:
    tm, path = checkpoint
    ours = load_pretrained("dinov2-s-reg", img_size=56, checkpoint=path)
    assert ours.cfg.num_registers == 4 and ours.cfg.patch_size == 14 and ours.cfg.embed_dim == 384
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x)["tokens"], tm.forward_features(x), atol=1e-4, rtol=1e-4)


def test_checkpoint_loads_at_another_resolution_and_the_toolkit_runs(checkpoint) -> None:
    _, path = checkpoint
    ours = load_pretrained("dinov2-s-reg", img_size=84, checkpoint=path)  # pos-embed 4x4 -> 6x6
    assert ours.pos_embed.shape == (1, 36, 384)
    feats = collect(ours, photos(84)[:2])
    assert feats.blocks.shape[:3] == (2, 12, 1 + 4 + 36) and torch.isfinite(feats.blocks).all()
    assert 0.0 <= detect_outliers(feats).share <= 1.0


def test_bad_inputs_are_named(checkpoint, tmp_path) -> None:
    _, path = checkpoint
    with pytest.raises(ConfigError, match="img_size=100 is not a positive multiple"):
        load_pretrained("dinov2-s-reg", img_size=100, checkpoint=path)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_pretrained("dinov2-s-reg", checkpoint=tmp_path / "missing.pth")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": object()}}, evil)  # a pickled object: weights_only refuses it
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_pretrained("dinov2-s-reg", img_size=56, checkpoint=evil)


def test_photos_are_real_colour_images() -> None:
    imgs = photos(64)
    assert imgs.shape == (4, 3, 64, 64) and imgs.dtype == torch.float32
    assert 0.0 <= float(imgs.min()) and float(imgs.max()) <= 1.0
    assert float(imgs.std()) > 0.1  # not blank
    with pytest.raises(ConfigError):
        photos(0)
