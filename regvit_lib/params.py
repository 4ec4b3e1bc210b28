"""A chapter's parameters, checked at the door: the first thing every chapter runs.

papermill injects parameters as they are typed (``-p rerun_study maybe`` arrives as the string
``"maybe"``), so every value is checked for type and range before any compute, and a bad one
stops the chapter with an error naming the parameter, the value and what is accepted.
"""

from __future__ import annotations

import math
from typing import Any

from .config import DATA_CHOICES, ConfigError
from .profiles import PRETRAINED, PROFILES, Profile, default_data, default_profile_name, get_profile, twin

__all__ = ["PARAMS", "chapter_params"]

# A chapter's parameters: name -> (accepted types, check, what is accepted). bool is never an int here.
PARAMS: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "profile": ((str,), lambda v: v in PROFILES, f"one of {sorted(PROFILES)}"),
    "data": ((str,), lambda v: v.strip() in DATA_CHOICES[:2] or ":" in v, f"one of {list(DATA_CHOICES)}"),
    "pretrained": ((bool, str), lambda v: isinstance(v, bool) or v in PRETRAINED or v in PRETRAINED.values(),
                   f"True (the profile's pretrained models), False or one of {sorted(PRETRAINED)}"),
    "num_registers": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "registers": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "probe_images": ((int,), lambda v: v >= 8, "an integer >= 8"),
    "k": ((int, float), lambda v: math.isfinite(v) and v > 1, "a number > 1"),
    "rerun_study": ((bool,), lambda v: True, "True or False"),
    "rerun": ((bool,), lambda v: True, "True or False"),
    "seeds": ((int, type(None)), lambda v: v is None or v >= 2, "None (the profile's) or an integer >= 2"),
}


def chapter_params(**params: object) -> Profile:
    """Check a chapter's parameters (``name=value``, as in its parameters cell) and return its profile.

    Raises:
        ConfigError: naming the parameter, the value and what is accepted; or the profile needs a GPU
            and this machine has none (:meth:`~regvit_lib.profiles.Profile.check_device`).
        FileNotFoundError: ``data`` names real images that are not there (the error names the
            folder and the command that fetches them).
    """
    for name, value in params.items():
        if name not in PARAMS:
            raise ConfigError(f"unknown chapter parameter {name!r}; known: {sorted(PARAMS)}")
        types, ok, accepted = PARAMS[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types) or not ok(value):
            raise ConfigError(f"parameter {name}={value!r} ({type(value).__name__}) is not {accepted}")
    if isinstance(alias := params.get("pretrained"), str) and twin(alias) is None:
        raise ConfigError(f"parameter pretrained={alias!r} has no twin with (or without) registers to compare; "
                          f"True studies the profile's models (DeiT-III among them)")
    profile = get_profile(str(params.get("profile", default_profile_name())), str(params.get("data", default_data())))
    profile.check_device()  # a GPU profile stops here, before any compute, on a machine without one
    return profile
