"""Library code where a library serves: timm's position-embedding resampling and Mixup/CutMix,
each checked against the project's own earlier implementation (kept here, verbatim, as the reference)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from regvit_lib import ModelConfig, TrainConfig, build_model
from regvit_lib.ablations import at_resolution
from regvit_lib.train import _augment


def _old_resample_pos_embed(pos: Tensor, grid: int, antialias: bool) -> Tensor:
    _, N, D = pos.shape
    g = int(round(N**0.5))
    img = pos.reshape(1, g, g, D).permute(0, 3, 1, 2)
    out = F.interpolate(img.float(), size=(grid, grid), mode="bicubic", align_corners=False, antialias=antialias)
    return out.permute(0, 2, 3, 1).reshape(1, grid * grid, D).to(pos.dtype)


def _old_augment(x: Tensor, y: Tensor, cfg: TrainConfig, num_classes: int,
                 gen: torch.Generator) -> tuple[Tensor, Tensor]:
    B = x.shape[0]
    if cfg.hflip:
        flip = (torch.rand(B, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    eps = cfg.label_smoothing
    target = F.one_hot(y, num_classes).float() * (1 - eps) + eps / num_classes
    modes = [m for m, a in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if a > 0]
    if modes:
        mode = modes[int(torch.randint(len(modes), (1,), generator=gen))]
        alpha = cfg.mixup if mode == "mixup" else cfg.cutmix
        lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen))).beta(alpha, alpha))
        if mode == "mixup":
            x = lam * x + (1 - lam) * x.flip(0)
        else:
            H, W = x.shape[-2:]
            h, w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
            cy, cx = (int(torch.randint(n, (1,), generator=gen)) for n in (H, W))
            y0, y1, x0, x1 = max(cy - h // 2, 0), min(cy + h // 2, H), max(cx - w // 2, 0), min(cx + w // 2, W)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
        target = lam * target + (1 - lam) * target.flip(0)
    return x, target


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [16, 24, 64])
def test_position_embedding_resampled_by_timm_as_before(size: int, antialias: bool) -> None:
    model = build_model(ModelConfig(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2), seed=3)
    new = at_resolution(model, size, antialias=antialias).pos_embed.detach()
    old = _old_resample_pos_embed(model.pos_embed.detach(), size // 4, antialias)
    assert new.shape == (1, (size // 4) ** 2, 32)
    torch.testing.assert_close(new, old, rtol=0, atol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_flip_and_smoothing_are_unchanged_without_mixing(smoothing: float) -> None:
    """What every profile of the book trains with (no Mixup, no CutMix): identical to the old code."""
    cfg = TrainConfig(label_smoothing=smoothing)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 5
    new = _augment(x, y, cfg, 5, torch.Generator().manual_seed(7))
    old = _old_augment(x, y, cfg, 5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(new[0], old[0], rtol=0, atol=0)
    torch.testing.assert_close(new[1], old[1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_timm_mixing_is_seeded_and_consistent(mixup: float, cutmix: float) -> None:
    """timm draws its own boxes and ratios, so mixed batches differ from the old code's (no profile of the
    book mixes); what must hold: the same step gives the same batch, numpy's global generator is left
    as it was, and every target is the mix of the two labels its image is made of."""
    cfg = TrainConfig(mixup=mixup, cutmix=cutmix, label_smoothing=0.0, hflip=False)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 5
    state = np.random.get_state()[1].copy()
    a = _augment(x, y, cfg, 5, torch.Generator().manual_seed(11))
    b = _augment(x, y, cfg, 5, torch.Generator().manual_seed(11))
    assert np.array_equal(np.random.get_state()[1], state)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    mixed, target = a
    lam = float(target[0, y[0]]) if y[0] != y.flip(0)[0] else 1.0
    assert torch.allclose(target.sum(1), torch.ones(8)) and 0 <= lam <= 1
    expected = lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y.flip(0), 5).float()
    torch.testing.assert_close(target, expected)
    blended = (mixed - (lam * x + (1 - lam) * x.flip(0))).abs().flatten(1).amax(1) < 1e-5  # Mixup
    pasted = (((mixed - x).abs() < 1e-6) | ((mixed - x.flip(0)).abs() < 1e-6)).flatten(1).all(1)  # CutMix
    assert bool((blended | pasted).all())
