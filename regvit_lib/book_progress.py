"""Progress of a book build: which chapter is executing, and about how long the rest will take.

A Sphinx extension (listed under ``sphinx: extra_extensions`` in ``_config.yml``). ``jupyter-book
build`` executes each chapter while reading it; this prints, before each chapter, its place in the
build, how long it took the last time this profile was built, and the time that leaves for the
chapters still to come; after it, how long it took. The times are kept per profile (the
``REGVIT_PROFILE`` the build runs) in ``<cache>/build-times/<profile>.json``, written atomically; a
chapter never built before has no estimate and says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .cache import atomic_write, cache_root
from .profiles import default_build_name

__all__ = ["times_path", "load_times", "estimate", "setup"]


def times_path(profile: str, root: Path | str | None = None) -> Path:
    """Where the chapters' last execution times of ``profile`` are kept."""
    return Path(root if root is not None else cache_root()) / "build-times" / f"{profile}.json"


def load_times(profile: str, root: Path | str | None = None) -> dict[str, float]:
    """``{chapter: seconds}`` of the last build of ``profile`` (empty when none, or when the file is unreadable:
    estimates are a convenience, never a reason to stop a build)."""
    try:
        doc = json.loads(times_path(profile, root).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {str(k): float(v) for k, v in doc.items() if isinstance(v, (int, float))}


def estimate(chapters: list[str], times: dict[str, float]) -> str:
    """The time the ``chapters`` took last time, in words (``unknown`` when any of them has no record)."""
    if not chapters:
        return "nothing left"
    if any(c not in times for c in chapters):
        return "no estimate yet (not built before in this profile)"
    total = sum(times[c] for c in chapters)
    return f"about {total / 60:.1f} min" if total >= 90 else f"about {total:.0f} s"


class _Progress:
    """The state of one build: the chapters to read, when the current one started, the times so far."""

    def __init__(self) -> None:
        self.profile = default_build_name()
        self.times = load_times(self.profile)
        self.queue: list[str] = []
        self.started: dict[str, float] = {}

    def before(self, app: Any, env: Any, docnames: list[str]) -> None:
        self.queue = sorted(d for d in docnames if str(env.doc2path(d)).endswith(".ipynb"))
        if self.queue:
            _log(f"executing {len(self.queue)} chapters ({self.profile!r} profile): "
                 f"{estimate(self.queue, self.times)}")

    def read(self, app: Any, docname: str, source: list[str]) -> None:
        if docname not in self.queue:
            return
        i = self.queue.index(docname)
        last = f"{self.times[docname]:.0f} s last time" if docname in self.times else "first build"
        _log(f"chapter {i + 1} of {len(self.queue)}: {docname} ({last}; with the rest: "
             f"{estimate(self.queue[i:], self.times)})")
        self.started[docname] = time.perf_counter()

    def done(self, app: Any, doctree: Any) -> None:
        docname = app.env.docname
        if docname not in self.started:
            return
        took = time.perf_counter() - self.started.pop(docname)
        self.times[docname] = took
        _log(f"{docname} done in {took:.0f} s")
        text = json.dumps(self.times, indent=1, sort_keys=True) + "\n"
        atomic_write(times_path(self.profile), lambda f: f.write(text.encode()))


def _log(message: str) -> None:
    from sphinx.util import logging

    logging.getLogger(__name__).info(f"regvit: {message}")


def setup(app: Any) -> dict[str, Any]:
    """Register the extension with Sphinx."""
    progress = _Progress()
    app.connect("env-before-read-docs", progress.before)
    app.connect("source-read", progress.read)
    app.connect("doctree-read", progress.done)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
