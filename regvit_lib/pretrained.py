"""Pretrained ViTs from timm (DINOv2 with and without registers, DeiT-III), as our model.

The paper's artifacts are plainest in large pretrained models. With the model hub reachable
(Colab, most laptops) :func:`load_pretrained` downloads a timm checkpoint and converts it
exactly into a :class:`~regvit_lib.model.RegViT`, so every figure of the book runs on it
unchanged. Offline, the same function reads a checkpoint file (a timm or original DINOv2 state
dict) with ``torch.load(..., weights_only=True)``; the tests write such a file themselves.

Names: a short alias from :data:`PRETRAINED` (``"dinov2-g"``, ``"dinov2-g-reg"``, ...) or the
full timm name. :func:`twin` gives a model's twin with (or without) registers.
"""

from pathlib import Path
from typing import Any

import torch

from .config import ConfigError
from .model import RegViT
from .timm_interop import regvit_from_timm

__all__ = ["PRETRAINED", "resolve", "twin", "load_pretrained"]

# alias -> timm name: DINOv2 (Oquab et al. 2023), its
# registers twins (this paper), DeiT-III (Touvron et al. 2022).
PRETRAINED: dict[str, str] = {
    **{f"dinov2-{s}{r}": f"vit_{size}_patch14_{'reg4_' if r else ''}dinov2.lvd142m"
       for s, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")) for r in ("", "-reg")},
    **{f"deit3-{s}": f"deit3_{size}_patch16_224.fb_in22k_ft_in1k"
       for s, size in (("s", "small"), ("b", "base"), ("l", "large"))},
}


def resolve(name: str) -> str:
    """The timm name of an alias or of a known timm name.

    Raises:
        ConfigError: for a name that is neither, listing the aliases.
    """
    full = PRETRAINED.get(name, name)
    if full in PRETRAINED.values():
        return full
    raise ConfigError(f"unknown pretrained model {name!r}; known: {sorted(PRETRAINED)} "
                      f"(or their timm names: {sorted(PRETRAINED.values())})")


def twin(name: str) -> str | None:
    """The timm name of the same model with registers if ``name`` has none, and vice versa.

    ``None`` when no such twin is published (DeiT-III).
    """
    full = resolve(name)
    other = full.replace("_reg4_", "_") if "_reg4_" in full else full.replace("_patch14_", "_patch14_reg4_")
    return other if other != full and other in PRETRAINED.values() else None


def load_pretrained(name: str, img_size: int = 224, checkpoint: str | Path | None = None) -> RegViT:
    """A pretrained timm ViT as a :class:`RegViT` (features only: no classification head).

    Args:
        name: alias or timm name (:func:`resolve`).
        img_size: input side; must be a multiple of the patch size (14 for DINOv2, 16 for
            DeiT-III). Position embeddings are resampled by timm's filter (antialiased for the
            DINOv2 registers models, as the paper recommends in its App. A).
        checkpoint: a local state-dict file; ``None`` downloads the weights from the hub.

    Raises:
        ConfigError: unknown name, or ``img_size`` not a multiple of the patch size.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    full = resolve(name)
    patch = 14 if "patch14" in full else 16
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < patch or img_size % patch:
        raise ConfigError(f"img_size={img_size!r} is not a positive multiple of {full}'s patch size {patch}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint file {Path(checkpoint)}")
    tm: Any = timm.create_model(full, pretrained=checkpoint is None, img_size=img_size, num_classes=0)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict", "teacher"):  # common wrappers of a state dict
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        # checkpoint_filter_fn: original DINOv2 names, pos-embed resampling; no head: features only
        tm.load_state_dict({k: v for k, v in checkpoint_filter_fn(state, tm).items() if not k.startswith("head.")})
    return regvit_from_timm(tm.eval())
