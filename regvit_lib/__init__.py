"""regvit_lib: the library under the regvit book (Vision Transformers Need Registers).

Modules, in the order data flows through them: ``params`` (a chapter's parameters, checked) ->
``config`` (every setting of a run) / ``profiles`` (the book's scales) -> ``scenes`` / ``data`` ->
``model`` -> ``train`` (cached by ``cache``; ``prepare`` trains a profile's runs before the chapters)
-> ``analysis`` / ``probes`` / ``measure`` / ``emergence`` / ``ablations`` -> ``claims`` / ``labels`` /
``plots``. The README's "Architecture" section says what each one does.
"""

from ._compat import ensure_torchvision_importable

# Before anything can import torchvision (timm does): see regvit_lib/_compat.py.
ensure_torchvision_importable()

from .cache import CacheCorruptError, cache_root  # noqa: E402
from .config import (ConfigError, FractalConfig, ImageData, ModelConfig, RunConfig, ScenesConfig,  # noqa: E402
                     TrainConfig, vit_config)
from .profiles import PROFILES, Profile, default_data, default_profile_name, get_profile  # noqa: E402
from .data import LabelledBatch, labelled, make_source, normalize  # noqa: E402
from .exhibits import Exhibits  # noqa: E402
from .model import RegViT, build_model, count_parameters, split_tokens  # noqa: E402
from .params import chapter_params  # noqa: E402
from .scenes import SceneBatch, render_scenes  # noqa: E402
from .train import TrainedRun, train  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "PROFILES", "CacheCorruptError", "ConfigError", "Exhibits", "FractalConfig", "ImageData", "LabelledBatch", "ModelConfig",
    "Profile", "RegViT",
    "RunConfig", "SceneBatch", "ScenesConfig", "TrainConfig", "TrainedRun", "build_model", "cache_root",
    "chapter_params", "count_parameters", "default_data", "default_profile_name", "get_profile", "labelled",
    "make_source", "normalize",
    "render_scenes", "split_tokens", "train", "vit_config",
]
