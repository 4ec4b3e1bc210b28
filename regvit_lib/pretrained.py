"""Pretrained ViTs (DINOv2 with and without registers, DeiT-III): fetched, identified, converted.

The paper's artifacts are plainest in its own pretrained models, and seeing them needs only CPU
inference. :func:`weights_file` finds a model's weights: in the folder ``$REGVIT_WEIGHTS`` when
it is set (files named ``<timm name>.safetensors`` or ``<timm name>.pth``), else on the model
hub through huggingface_hub (a download the first time, the local copy after). When neither can
be had it raises :class:`WeightsUnavailable`, which the chapters turn into a one-sentence skip
note. :func:`load_pretrained` reads the file (safetensors, or ``torch.load(...,
weights_only=True)``) into the timm architecture and converts it exactly into a
:class:`~regvit_lib.model.RegViT`, so the code that measures our models measures these.
:func:`weights_id` is the file's SHA-256: the cache key of everything measured on it.

Names: a short alias from :data:`~regvit_lib.profiles.PRETRAINED` (``"dinov2-l"``,
``"dinov2-l-reg"``, ...) or the full timm name. :func:`twin` gives a model's twin with (or
without) registers.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .cache import sha256_file
from .config import ConfigError
from .profiles import PRETRAINED, patch_size, resolve, twin
from .model import RegViT
from .timm_interop import regvit_from_timm

__all__ = ["PRETRAINED", "WEIGHTS_ENV_VAR", "WeightsUnavailable", "resolve", "twin", "patch_size", "weights_file",
           "weights_id", "load_pretrained"]

WEIGHTS_ENV_VAR = "REGVIT_WEIGHTS"


class WeightsUnavailable(RuntimeError):
    """A model's weights cannot be had here (no hub, no local file); the message says why."""


@lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """One quick request to the hub (3 s at most, through any configured proxy), so an offline
    build fails fast instead of retrying every file."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=3)
        return True
    except Exception:  # no network, no DNS, a refused proxy: all mean "cannot fetch"
        return False


def weights_file(name: str) -> Path:
    """The local file holding a model's weights, downloaded from the hub if needed.

    ``$REGVIT_WEIGHTS`` set: ``<folder>/<timm name>.safetensors`` (or ``.pth``), never the hub.
    Otherwise the hub's ``timm/<timm name>`` repository, through huggingface_hub's local cache.

    Raises:
        ConfigError: unknown name.
        WeightsUnavailable: no such file in the folder, or the hub cannot be reached.
    """
    full = resolve(name)
    if folder := os.environ.get(WEIGHTS_ENV_VAR, "").strip():
        for suffix in (".safetensors", ".pth"):
            if (path := Path(folder).expanduser() / f"{full}{suffix}").is_file():
                return path
        raise WeightsUnavailable(f"no {full}.safetensors or {full}.pth in ${WEIGHTS_ENV_VAR}={folder}")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo = f"timm/{full}"
    if isinstance(local := try_to_load_from_cache(repo, "model.safetensors"), str):
        return Path(local)
    if not _hub_reachable():
        raise WeightsUnavailable(f"the model hub cannot be reached to download {repo}")
    try:
        return Path(hf_hub_download(repo, "model.safetensors"))
    except Exception as e:  # network errors, a repository moved: say so, do not guess
        raise WeightsUnavailable(f"downloading {repo} failed: {type(e).__name__}: {e}") from e


@lru_cache(maxsize=32)
def _file_id(path: Path, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


def weights_id(path: str | Path) -> str:
    """The SHA-256 of a weights file: what identifies a pretrained model in the cache (hashed
    once per process while the file is unchanged)."""
    st = Path(path).stat()
    return _file_id(Path(path).resolve(), st.st_mtime_ns, st.st_size)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state: Any = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "teacher"):  # common wrappers of a state dict
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def load_pretrained(name: str, img_size: int = 224, checkpoint: str | Path | None = None) -> RegViT:
    """A pretrained timm ViT as a :class:`RegViT` (features only: no classification head).

    Args:
        name: alias or timm name (:func:`resolve`).
        img_size: input side; must be a multiple of the patch size (14 for DINOv2, 16 for
            DeiT-III). Position embeddings are resampled by timm's filter (antialiased for the
            DINOv2 registers models, as the paper recommends in its App. A).
        checkpoint: a weights file (safetensors, or a timm / original DINOv2 state dict);
            ``None``: :func:`weights_file`.

    Raises:
        ConfigError: unknown name, or ``img_size`` not a multiple of the patch size.
        FileNotFoundError: ``checkpoint`` does not exist.
        WeightsUnavailable: no checkpoint given and none can be fetched.
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    full, patch = resolve(name), patch_size(name)
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < patch or img_size % patch:
        raise ConfigError(f"img_size={img_size!r} is not a positive multiple of {full}'s patch size {patch}")
    path = weights_file(full) if checkpoint is None else Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file {path}")
    state = _read_state(path)
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        tm: Any = timm.create_model(full, pretrained=False, img_size=img_size, num_classes=0)
    # checkpoint_filter_fn: original DINOv2 names, pos-embed resampling; no head: features only
    tm.load_state_dict({k: v for k, v in checkpoint_filter_fn(state, tm).items() if not k.startswith("head.")},
                       assign=True)
    return regvit_from_timm(tm.eval())
