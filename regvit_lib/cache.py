"""The on-disk cache of trained runs: each configuration trains once, across chapters.

A run is stored under a key that is the SHA-256 of its full configuration (model, data,
recipe, seed; see :func:`config_key`) and of the *code* that decides its result (the syntax
trees of ``model.py``, ``data.py``, ``train.py``, ``selfsup.py`` and ``summaries.py``, so editing a comment does
not retrain anything and changing a line of code does). Layout of one run::

    <cache>/runs/<key[:24]>/
        config.json     the full configuration and the key (what was asked for)
        model.pt        the final weights (a state dict)
        result.json     metrics, curves, the SHA-256 of model.pt -- written last
        checkpoint.pt   only while training: weights, optimiser, step, curves
        transport.json  only for a run resumed from a pack brought from another machine
                        (:mod:`regvit_lib.transport`): the step and lossiness of each resume

Every file is written to a temporary name in the same folder, flushed and renamed
(:func:`atomic_write`), so a file is either whole or absent. A run is complete when
``result.json`` exists and ``model.pt`` matches the checksum it records. Anything unreadable
(truncated, corrupt, wrong checksum, a configuration that does not match the key) raises
:class:`CacheCorruptError` naming the file; the training loop then sets that run's files aside
(renamed ``*.corrupt-<time>``, never deleted) and retrains that run alone. All tensors are read
with ``torch.load(..., weights_only=True)``.

Where the cache lives: ``$REGVIT_CACHE`` if set; else ``.regvit_cache/`` at the root of the
repository when ``regvit_lib`` is used from a checkout (so every chapter, whatever its working
folder, shares one cache); else ``~/.cache/regvit``.
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

__all__ = ["CACHE_ENV_VAR", "CacheCorruptError", "cache_root", "atomic_write", "code_version",
           "config_key", "RunStore", "file_sha256", "cached_measurement"]

CACHE_ENV_VAR = "REGVIT_CACHE"
_PACKAGE = Path(__file__).resolve().parent
# The modules whose code decides what a trained run contains.
_CODE = ("model.py", "data.py", "train.py", "selfsup.py", "summaries.py")
# ... and what a measurement on trained runs contains (see cached_measurement).
_MEASURE_CODE = _CODE + ("analysis.py", "probes.py", "book.py", "ablations.py", "flops.py", "bench.py")


class CacheCorruptError(RuntimeError):
    """A cache file cannot be trusted; ``path`` names it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"corrupt cache file {path}: {why}")
        self.path = path


def cache_root() -> Path:
    """The cache folder: ``$REGVIT_CACHE``, else the checkout's ``.regvit_cache``, else ``~/.cache/regvit``."""
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
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


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return tree


def code_version(files: tuple[str, ...] = _CODE) -> str:
    """A hash of the code that decides a run's result: syntax trees, without docstrings/comments.

    Recomputed only when one of the files changes (by modification time and size).
    """
    stamps = tuple((name, (_PACKAGE / name).stat().st_mtime_ns, (_PACKAGE / name).stat().st_size) for name in files)
    return _code_version(stamps)


@lru_cache(maxsize=8)
def _code_version(stamps: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamps:
        tree = _strip_docstrings(ast.parse((_PACKAGE / name).read_text()))
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


def config_key(config: Any) -> tuple[str, dict[str, Any]]:
    """The cache key of a (dataclass) configuration, and the JSON document it hashes."""
    doc = {"config": _jsonable(config), "code": code_version()}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest(), doc


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunStore:
    """The files of one run in the cache (see the module docstring for the layout)."""

    def __init__(self, config: Any, root: Path | str | None = None) -> None:
        self.key, self.doc = config_key(config)
        self.root = Path(root) if root is not None else cache_root()
        self.dir = self.root / "runs" / self.key[:24]
        self.config_path = self.dir / "config.json"
        self.model_path = self.dir / "model.pt"
        self.result_path = self.dir / "result.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"

    # -- writing ----------------------------------------------------------------------------------
    def save_tensors(self, path: Path, obj: Any) -> None:
        atomic_write(path, lambda f: torch.save(obj, f))

    def save_json(self, path: Path, obj: Any) -> None:
        atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))

    def save_result(self, state_dict: dict[str, torch.Tensor], result: dict[str, Any]) -> None:
        """Store a finished run: config, weights, then the result that vouches for them."""
        self.save_json(self.config_path, {"key": self.key, **self.doc})
        self.save_tensors(self.model_path, state_dict)
        self.save_json(self.result_path, {**result, "model_sha256": file_sha256(self.model_path)})
        self.checkpoint_path.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------------
    def load_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CacheCorruptError(path, f"{type(e).__name__}: {e}") from e

    def load_tensors(self, path: Path) -> Any:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, bad pickle, disallowed type, ...
            raise CacheCorruptError(path, f"{type(e).__name__}: {e}") from e

    def is_complete(self) -> bool:
        return self.result_path.exists()

    def load_result(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The weights and result of a finished run, checked against checksum and config."""
        result = self.load_json(self.result_path)
        config = self.load_json(self.config_path)
        if config.get("key") != self.key:
            raise CacheCorruptError(self.config_path, f"holds key {config.get('key')!r}, expected {self.key}")
        if not isinstance(result, dict) or "model_sha256" not in result:
            raise CacheCorruptError(self.result_path, "no model checksum")
        if not self.model_path.exists() or file_sha256(self.model_path) != result["model_sha256"]:
            raise CacheCorruptError(self.model_path, "missing or does not match the checksum in result.json")
        return self.load_tensors(self.model_path), result

    def set_aside(self, path: Path) -> Path | None:
        """Rename a corrupt file out of the way (kept for inspection, never deleted)."""
        return set_aside(path)


def set_aside(path: Path) -> Path | None:
    """Rename a corrupt file to ``<name>.corrupt-<time>`` (kept for inspection, never deleted)."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


def cached_measurement(kind: str, config: Any, compute: Callable[[], dict[str, Any]],
                       root: Path | str | None = None) -> dict[str, Any]:
    """A measured result (a JSON-able dict), computed once per configuration and code version.

    The key hashes ``kind``, ``config`` (JSON-able, dataclasses allowed) and the syntax trees
    of the training *and* measuring modules, so a change to a probe re-measures and nothing
    stale is reused. The file, ``<cache>/measurements/<kind>/<key[:24]>.json``, is written
    atomically; an unreadable or mismatched one is reported, renamed ``*.corrupt-<time>`` and
    measured again.
    """
    doc = {"kind": kind, "config": _jsonable(config), "code": code_version(_MEASURE_CODE)}
    key = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    path = Path(root if root is not None else cache_root()) / "measurements" / kind / f"{key[:24]}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("result"), dict):
                raise ValueError(f"holds key {stored.get('key') if isinstance(stored, dict) else None!r}, "
                                 f"expected {key}")
            result: dict[str, Any] = stored["result"]
            return result
        except (OSError, UnicodeDecodeError, ValueError) as e:
            target = set_aside(path)
            warnings.warn(f"corrupt cache file {path} ({e}); set aside as {target}, measuring again", stacklevel=2)
    result = compute()
    text = json.dumps({"key": key, **doc, "result": result}, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()))
    return result
