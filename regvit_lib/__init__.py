"""regvit_lib: the library under the regvit book (Vision Transformers Need Registers)."""

from ._compat import ensure_torchvision_importable

# Before anything can import torchvision (timm does): see regvit_lib/_compat.py.
ensure_torchvision_importable()

from .config import (  # noqa: E402
    PROFILES, ConfigError, ModelConfig, Profile, default_profile_name, get_profile, vit_config,
)
from .model import RegViT, build_model, count_parameters, split_tokens  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "PROFILES", "ConfigError", "ModelConfig", "Profile", "RegViT", "build_model",
    "count_parameters", "default_profile_name", "get_profile", "split_tokens", "vit_config",
]
