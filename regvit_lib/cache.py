"""The on-disk cache: trained runs and measurements, each computed once per configuration and code.

One keyed store serves both. An entry's key is the SHA-256 of its kind, its full configuration
(JSON-able; dataclasses allowed) and the *code* that decides its result: the syntax trees of
the files the caller names (docstrings and comments excluded), so editing a comment recomputes
nothing and changing a line of code recomputes what depends on it. Layout of one entry::

    <cache>/<kind>/<key[:24]>/
        config.json     the full configuration and the key (what was asked for)
        model.pt        a trained run's final weights (a state dict); measurements have none
        result.json     the result, and the SHA-256 of model.pt -- written last
        checkpoint.pt   only while a run trains: weights, optimiser, step, curves

Every file is written to a temporary name in the same folder, flushed and renamed
(:func:`atomic_write`), so a file is either whole or absent. An entry is complete when
``result.json`` exists (and ``model.pt`` matches the checksum it records). Anything unreadable
(truncated, corrupt, wrong checksum, a configuration that does not match the key) raises
:class:`CacheCorruptError` naming the file; the caller sets that file aside (renamed
``*.corrupt-<time>``, never deleted) and recomputes that entry alone. Tensors are read with
``torch.load(..., weights_only=True)``.

Where the cache lives: ``$REGVIT_CACHE`` if set; else ``.regvit_cache/`` at the root of the
repository when ``regvit_lib`` is used from a checkout (so every chapter shares one cache);
else ``~/.cache/regvit``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = ["CACHE_ENV_VAR", "CacheCorruptError", "cache_root", "atomic_write", "code_version", "Store", "cached",
           "set_aside", "sha256_file"]

CACHE_ENV_VAR = "REGVIT_CACHE"
_PACKAGE = Path(__file__).resolve().parent


class CacheCorruptError(RuntimeError):
    """A cache file cannot be trusted; ``path`` names it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"corrupt cache file {path}: {why}")
        self.path = path


def cache_root() -> Path:
    """The cache folder: ``$REGVIT_CACHE``, else the checkout's ``.regvit_cache``, else ``~/.cache/regvit``."""
    if env := os.environ.get(CACHE_ENV_VAR, "").strip():
        return Path(env).expanduser().resolve()
    repo = _PACKAGE.parent
    if (repo / "pyproject.toml").is_file() and os.access(repo, os.W_OK):
        return repo / ".regvit_cache"
    return Path.home() / ".cache" / "regvit"


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    """Write ``path`` through a temporary file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_aside(path: Path) -> Path | None:
    """Rename a corrupt file to ``<name>.corrupt-<time>`` (kept for inspection, never deleted)."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


def code_version(files: tuple[str, ...]) -> str:
    """A hash of the syntax trees of ``files`` (names inside ``regvit_lib``), without docstrings.

    Recomputed only when one of the files changes (by modification time and size).
    """
    stamps = tuple((name, (_PACKAGE / name).stat().st_mtime_ns, (_PACKAGE / name).stat().st_size) for name in files)
    return _code_version(stamps)


@lru_cache(maxsize=16)
def _code_version(stamps: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamps:
        tree = ast.parse((_PACKAGE / name).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        h.update(name.encode() + ast.dump(tree).encode())
    return h.hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__,
                **{f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot put {type(obj).__name__} {obj!r} in a cache key")


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read(path: Path, load: Callable[[], Any], errors: tuple[type[Exception], ...]) -> Any:
    """``load()``, with ``errors`` raised as :class:`CacheCorruptError` naming ``path``."""
    try:
        return load()
    except errors as e:
        raise CacheCorruptError(path, f"{type(e).__name__}: {e}") from e


class Store:
    """One keyed entry of the cache (see the module docstring for the layout).

    Args:
        kind: the entry's folder under the cache (``"runs"``, ``"register-grid"``, ...).
        config: what decides the result (JSON-able; dataclasses allowed).
        code: the files of ``regvit_lib`` whose code decides the result.
        root: the cache folder (default :func:`cache_root`).
    """

    def __init__(self, kind: str, config: Any, code: tuple[str, ...], root: Path | str | None = None) -> None:
        self.doc = {"kind": kind, "config": _jsonable(config), "code": code_version(code)}
        self.key = hashlib.sha256(json.dumps(self.doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        self.dir = Path(root if root is not None else cache_root()) / kind / self.key[:24]
        self.config_path, self.result_path = self.dir / "config.json", self.dir / "result.json"
        self.model_path, self.checkpoint_path = self.dir / "model.pt", self.dir / "checkpoint.pt"

    def save_tensors(self, path: Path, obj: Any) -> None:
        atomic_write(path, lambda f: torch.save(obj, f))

    def save_json(self, path: Path, obj: Any) -> None:
        atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))

    def save_result(self, result: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Store a finished entry: config, weights (if any), then the result that vouches for them."""
        self.save_json(self.config_path, {"key": self.key, **self.doc})
        if state_dict is not None:
            self.save_tensors(self.model_path, state_dict)
            result = {**result, "model_sha256": sha256_file(self.model_path)}
        self.save_json(self.result_path, result)
        self.checkpoint_path.unlink(missing_ok=True)

    def load_json(self, path: Path) -> Any:
        return _read(path, lambda: json.loads(path.read_text()), (OSError, UnicodeDecodeError, json.JSONDecodeError))

    def load_tensors(self, path: Path) -> Any:
        # Any failure: truncated zip, bad pickle, disallowed type, ...
        return _read(path, lambda: torch.load(path, map_location="cpu", weights_only=True), (Exception,))

    def load_result(self, weights: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
        """The result of a finished entry and its weights (``None`` for a measurement), all checked.

        With ``weights`` (a trained run), an entry without weights is corrupt.
        """
        result = self.load_json(self.result_path)
        config = self.load_json(self.config_path)
        got = config.get("key") if isinstance(config, dict) else None
        if got != self.key:
            raise CacheCorruptError(self.config_path, f"holds key {got!r}, expected {self.key}")
        if not isinstance(result, dict):
            raise CacheCorruptError(self.result_path, "not a JSON object")
        if "model_sha256" not in result:
            if weights:
                raise CacheCorruptError(self.result_path, "records no weights (model.pt)")
            return result, None
        if not self.model_path.exists() or sha256_file(self.model_path) != result["model_sha256"]:
            raise CacheCorruptError(self.model_path, "missing or does not match the checksum in result.json")
        return result, self.load_tensors(self.model_path)

    def tensors(self, compute: Callable[[], tuple[dict[str, Any], dict[str, torch.Tensor]]]
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """A measurement that holds tensors: ``(JSON-able dict, tensors)``, stored, or computed and stored now."""
        if (stored := self.load_or_set_aside(weights=True)) is not None and stored[1] is not None:
            return stored[0], stored[1]
        result, tensors = compute()
        self.save_result(result, tensors)
        return result, tensors

    def load_or_set_aside(self, weights: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None] | None:
        """The stored result, or ``None`` when there is none or it is corrupt (then set aside, with a warning)."""
        if not self.result_path.exists():
            return None
        try:
            return self.load_result(weights)
        except CacheCorruptError as e:
            moved = [set_aside(p) for p in dict.fromkeys((e.path, self.result_path))]
            warnings.warn(f"{e}; set aside as {[str(m) for m in moved if m]}, computing it again", stacklevel=3)
            return None


def cached(kind: str, config: Any, code: tuple[str, ...], compute: Callable[[], dict[str, Any]],
           root: Path | str | None = None) -> dict[str, Any]:
    """A measured result (a JSON-able dict), computed once per ``kind``, ``config`` and ``code``."""
    store = Store(kind, config, code, root)
    if (stored := store.load_or_set_aside()) is not None:
        return stored[0]
    result = compute()
    store.save_result(result)
    return result
