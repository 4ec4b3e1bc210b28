"""regvit_lib: the library under the regvit book (Vision Transformers Need Registers)."""

from ._compat import ensure_torchvision_importable

# Before anything can import torchvision (timm does): see regvit_lib/_compat.py.
ensure_torchvision_importable()

from .cache import CacheCorruptError, cache_root  # noqa: E402
from .config import ConfigError, ModelConfig, vit_config  # noqa: E402
from .data import ImageData, SceneBatch, ScenesConfig, make_source, normalize, render_scenes  # noqa: E402
from .model import RegViT, build_model, count_parameters, split_tokens  # noqa: E402
from .profiles import PROFILES, Profile, default_profile_name, get_profile  # noqa: E402
from .train import RunConfig, TrainConfig, TrainedRun, train  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "PROFILES", "CacheCorruptError", "ConfigError", "ImageData", "ModelConfig", "Profile", "RegViT",
    "RunConfig", "SceneBatch", "ScenesConfig", "TrainConfig", "TrainedRun", "build_model", "cache_root",
    "count_parameters", "default_profile_name", "get_profile", "make_source", "normalize",
    "render_scenes", "split_tokens", "train", "vit_config",
]
