"""Serve MathJax with the book instead of from a CDN, so its equations render offline.

A Sphinx extension (listed under ``sphinx: extra_extensions`` in ``_config.yml``). Sphinx's default
``mathjax_path`` is MathJax 3 (``tex-mml-chtml.js``) on a CDN; this points it at a copy of the same
MathJax 3 component taken from the ``django-static-mathjax`` package (MathJax 3.2.2's npm release as
package data, no Django needed; in the ``book`` extra) and written to ``_static/mathjax/`` of each
HTML build. The MathJax 3 configuration Sphinx and myst-parser already write (``mathjax3_config``:
``\\(..\\)`` inline and ``\\[..\\]`` display math, processed only inside ``class="math"`` elements)
applies unchanged.

Only what rendering needs is copied (about 2 MB): the combined component, the TeX extensions that
its ``autoload`` fetches on first use (``\\boldsymbol``, ``\\cancel``, ``\\color`` ...), the CHTML
woff-v2 fonts, and MathJax's licence. Not copied: the accessibility explorer and speech rule engine
that the MathJax context menu can switch on (``a11y/``, ``sre/``, about 4 MB).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sphinx.application import Sphinx
    from sphinx.config import Config

__all__ = ["COMPONENT", "NEEDED", "copy_mathjax", "mathjax_root", "setup"]

COMPONENT = "tex-mml-chtml.js"
"""The MathJax 3 component the book loads: the one Sphinx loads from its CDN by default."""

NEEDED = (COMPONENT, "input/tex/extensions", "output/chtml/fonts/woff-v2")
"""What the component needs at run time, relative to :func:`mathjax_root`."""

_TARGET = "mathjax"  # under _static/ of the HTML output


def mathjax_root() -> Path:
    """MathJax 3's ``es5`` directory in the installed ``django-static-mathjax`` package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("MathJax is not installed: pip install django-static-mathjax "
                                  "(in regvit's `book` extra)")
    root = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if not (root / COMPONENT).is_file():
        raise FileNotFoundError(f"{root / COMPONENT}: not found (is django-static-mathjax 3.x installed?)")
    return root


def copy_mathjax(static_dir: Path) -> Path:
    """Copy what MathJax needs (:data:`NEEDED`, plus its LICENSE) to ``static_dir/mathjax``; return that."""
    src, dest = mathjax_root(), static_dir / _TARGET
    for part in NEEDED:
        if (src / part).is_dir():
            shutil.copytree(src / part, dest / part, dirs_exist_ok=True)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / part, dest / part)
    shutil.copy2(src.parent / "LICENSE", dest / "LICENSE")
    return dest


def _use_local_mathjax(app: Sphinx, config: Config) -> None:
    """config-inited: load MathJax from ``_static/mathjax/`` unless ``mathjax_path`` was set by hand."""
    from sphinx.ext.mathjax import MATHJAX_URL

    if config.mathjax_path == MATHJAX_URL:
        config.mathjax_path = f"{_TARGET}/{COMPONENT}"


def _copy_for_html(app: Sphinx) -> None:
    """builder-inited: copy MathJax into the output's ``_static/`` before the pages are written (so
    Sphinx can add its checksum to the script's URL), for HTML builders that render math with MathJax."""
    if app.builder.format != "html" or getattr(app.builder, "math_renderer_name", None) != "mathjax":
        return
    if app.config.mathjax_path != f"{_TARGET}/{COMPONENT}":
        return
    copy_mathjax(Path(app.outdir) / "_static")


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the extension with Sphinx."""
    app.setup_extension("sphinx.ext.mathjax")
    mathjax_root()  # fail at start-up, with the fix, when MathJax is not installed
    app.connect("config-inited", _use_local_mathjax)
    app.connect("builder-inited", _copy_for_html)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
