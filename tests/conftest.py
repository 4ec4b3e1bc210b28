"""Shared fixtures. regvit_lib is imported first: it makes torchvision (and so timm) importable
next to a CPU-only torch (see regvit_lib/_compat.py)."""

import regvit_lib  # noqa: F401  (must precede any timm/torchvision import)
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
