"""What a chapter shows, kept for a thesis: each figure as PDF and SVG, each table as CSV.

A chapter makes one :class:`Exhibits` (its profile and name) and passes every figure it glues into
the page, and every table it shows, through it. The files land in
``<cache>/exhibits/<profile>/<chapter>/`` (the cache folder of :func:`regvit_lib.cache.cache_root`),
each written atomically, with an ``index.json`` of what was recorded::

    {"profile": "cpu", "chapter": "02_high_norm_tokens",
     "exhibits": [{"name": "fig_ch2_norms", "kind": "figure", "title": "...", "files": ["fig_ch2_norms.pdf", ...]},
                  {"name": "tab-x", "kind": "table", "title": "...", "files": ["tab-x.csv"],
                   "rows": 4, "index_levels": 0, "header_levels": 1}]}

:mod:`regvit_lib.export` turns them into a thesis folder. Making the :class:`Exhibits` clears that
chapter's folder (only), so a chapter executed again leaves nothing stale.
"""

from __future__ import annotations

import json
import re
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from .cache import atomic_write, cache_root

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler

__all__ = ["Exhibits", "exhibits_dir"]

_NAME = re.compile(r"[A-Za-z0-9_-]+")
T = TypeVar("T", "Styler", pd.DataFrame)


def _folder_name(what: str, value: str) -> str:
    """``value`` if it can name one folder (non-empty, no path separator, not ``.``/``..``); else ValueError."""
    if not isinstance(value, str) or not value.strip() or value in (".", "..") or any(s in value for s in "/\\"):
        raise ValueError(f"{what} {value!r} cannot name a folder: it must be non-empty, without '/' or '\\'")
    return value


def _exhibit_name(name: str) -> str:
    """``name`` if it is letters, digits, ``-`` and ``_`` only (it names files and LaTeX labels); else ValueError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"exhibit name {name!r} must be letters, digits, '-' or '_' only (it names files)")
    return name


def exhibits_dir(profile: str, chapter: str | None = None, root: Path | str | None = None) -> Path:
    """``<root>/exhibits/<profile>[/<chapter>]`` (``root`` default: :func:`regvit_lib.cache.cache_root`)."""
    base = Path(root if root is not None else cache_root()) / "exhibits" / _folder_name("profile", profile)
    return base if chapter is None else base / _folder_name("chapter", chapter)


class Exhibits:
    """A chapter's record of what it shows (see the module docstring for the layout).

    Args:
        profile: the profile the chapter runs (``P.name``).
        chapter: the chapter's file name without suffix, e.g. ``"02_high_norm_tokens"``.
        root: the cache folder (default :func:`regvit_lib.cache.cache_root`).

    Raises:
        ValueError: ``profile`` or ``chapter`` cannot name a folder.
    """

    def __init__(self, profile: str, chapter: str, root: Path | str | None = None) -> None:
        self.profile, self.chapter = profile, chapter
        self.dir = exhibits_dir(profile, chapter, root)
        if self.dir.exists():  # this chapter's folder only: a re-executed chapter rewrites everything
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.index: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Exhibits({self.profile!r}, {self.chapter!r}: {len(self.index)} recorded in {self.dir})"

    def figure(self, name: str, fig: Figure, title: str = "") -> Figure:
        """Glue ``fig`` into the page under ``name`` (for a ``{glue:figure}`` directive; skipped when myst-nb,
        a book extra, is not installed) and keep it as ``<name>.pdf`` and ``<name>.svg``. Returns ``fig``."""
        _exhibit_name(name)
        try:
            from myst_nb import glue
        except ImportError:  # the library without the book's extras: keep the files only
            pass
        else:
            glue(name, fig, display=False)
        for fmt in ("pdf", "svg"):
            atomic_write(self.dir / f"{name}.{fmt}", partial(fig.savefig, format=fmt, bbox_inches="tight"))
        self._record(name, "figure", title, [f"{name}.pdf", f"{name}.svg"])
        return fig

    def table(self, name: str, table: T, title: str = "") -> T:
        """Keep the table as ``<name>.csv`` and return ``table`` unchanged, so a cell can end with
        ``ex.table("tab-x", labels.show(t))`` and still display it.

        A pandas ``Styler`` is kept as its frame (``.data``); the index is kept only when it holds
        labels (not a default ``RangeIndex``, not hidden).
        """
        _exhibit_name(name)
        frame = table if isinstance(table, pd.DataFrame) else getattr(table, "data", None)  # a Styler's frame
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"table {name!r} is a {type(table).__name__}, not a DataFrame or a pandas Styler")
        hidden = not isinstance(table, pd.DataFrame) and all(getattr(table, "hide_index_", [False]))
        keep_index = not hidden and not isinstance(frame.index, pd.RangeIndex)
        text = frame.to_csv(index=keep_index)
        atomic_write(self.dir / f"{name}.csv", lambda f: f.write(text.encode()))
        self._record(name, "table", title, [f"{name}.csv"], rows=len(frame),
                     index_levels=frame.index.nlevels if keep_index else 0, header_levels=frame.columns.nlevels)
        return table

    def _record(self, name: str, kind: str, title: str, files: list[str], **extra: Any) -> None:
        """Add (or replace: a cell run again) one exhibit and rewrite ``index.json``."""
        for old in set(self.index.get(name, {}).get("files", [])) - set(files):  # a name now of another kind
            (self.dir / old).unlink(missing_ok=True)
        self.index[name] = {"name": name, "kind": kind, "title": title, "files": files, **extra}
        doc = {"profile": self.profile, "chapter": self.chapter, "exhibits": list(self.index.values())}
        text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
        atomic_write(self.dir / "index.json", lambda f: f.write(text.encode()))
