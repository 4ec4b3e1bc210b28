"""Shared fixtures. regvit_lib is imported first: it makes torchvision (and so timm) importable
next to a CPU-only torch (see regvit_lib/_compat.py)."""

import regvit_lib  # noqa: F401  (must precede any timm/torchvision import)
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch) -> None:
    torch.manual_seed(0)
    monkeypatch.delenv("REGVIT_DATA", raising=False)  # the scenes, whatever images the shell points at


@pytest.fixture
def sphinx_build():
    """Build a small Sphinx project in a child process (docutils and Sphinx keep registries for the
    whole process, so two apps with different extensions in one pytest process disturb each other);
    returns a function ``(src, out) -> its output``, stdout and stderr together."""
    import subprocess
    import sys

    def build(src, out) -> str:
        done = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-a", "-b", "html", str(src), str(out),
                               "-d", str(out.parent / f"{out.name}-doctrees")],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    return build
