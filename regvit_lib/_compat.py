"""Make ``import torchvision`` (and so ``import timm``) work next to a CPU-only torch.

The problem
-----------
PyPI has no CPU build of torchvision. Installed next to the CPU torch wheel, torchvision's
compiled library ``torchvision/_C.so`` (built against CUDA torch) fails to load. torchvision
is written to survive that: ``torchvision.extension._has_ops()`` then returns False, and every
op registration is skipped -- except two. ``torchvision/_meta_registrations.py`` calls
``torch.library.register_fake("torchvision::nms")`` (and ``"torchvision::qnms"``) without
that guard, which raises ``RuntimeError: operator torchvision::nms does not exist`` during
``import torchvision``. timm imports torchvision, so ``import timm`` fails too.

The fix
-------
Before torchvision is first imported, and only when its compiled library is present but does
not load into this torch, :func:`ensure_torchvision_importable` declares the schemas of those
two operators with kernels that raise a clear error. ``register_fake`` then finds them,
torchvision finishes importing in its own "no C++ ops" mode, and its pure-Python parts
(transforms, datasets, models) work; ``torchvision.ops.nms`` still refuses to run, with
torchvision's own message. No installed file is modified, and where the ops load (Colab, a
GPU machine, a matching CPU build) this function does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

__all__ = ["ensure_torchvision_importable", "TORCHVISION_SHIM_OPS"]

# The two operators that torchvision registers fake kernels for without checking _has_ops().
TORCHVISION_SHIM_OPS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_shim_state: dict[str, object] = {"library": None}


def _compiled_ops_load(origin: Path) -> bool:
    """Try to load torchvision's compiled ops into this torch, as torchvision itself does."""
    libs = sorted(origin.parent.glob("_C*.so")) + sorted(origin.parent.glob("_C*.pyd"))
    if not libs:
        return True  # no compiled library at all: nothing torchvision would try to register
    try:
        torch.ops.load_library(str(libs[0]))
    except (OSError, RuntimeError):
        return False
    return True


def _unavailable(name: str):  # noqa: ANN202 - a kernel's signature is the op's
    def kernel(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError(
            f"torchvision::{name} is unavailable: torchvision's compiled ops do not load with "
            f"this torch ({torch.__version__}); install a torchvision built for it"
        )

    return kernel


def ensure_torchvision_importable() -> bool:
    """Declare the ops torchvision needs to import, if (and only if) its compiled ops can't load.

    Returns:
        True if the shim was installed in this process, False if it was not needed (no
        torchvision, torchvision already imported, or its compiled ops load).
    """
    if _shim_state["library"] is not None:
        return True
    if "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    if _compiled_ops_load(Path(spec.origin)):
        return False
    if all(hasattr(torch.ops.torchvision, op) for op in TORCHVISION_SHIM_OPS):
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in TORCHVISION_SHIM_OPS.items():
        lib.define(schema)
        lib.impl(name, _unavailable(name), "CompositeExplicitAutograd")
    _shim_state["library"] = lib  # keep the registration alive for the process
    return True
