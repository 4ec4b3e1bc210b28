"""Moving a run between machines in pieces small enough to travel.

A GPU command may run for at most a few minutes and may send back only small files (here: at
most 8 files of 16 MiB, 64 MiB a call). A run longer than one command therefore goes on from a
checkpoint that was brought back and sent out again. :func:`pack_run` cuts a run's state out
of the cache (:mod:`regvit_lib.cache`) into numbered parts of at most ``part_bytes`` each plus
a manifest; :func:`unpack_run` checks every part's size and SHA-256, joins them, loads the
result with ``torch.load(..., weights_only=True)`` and writes it into the cache of the other
machine, where :func:`regvit_lib.train.train` picks it up as if it had never left.

Two kinds of state travel:

* a **checkpoint** of an unfinished run (weights, optimiser, step, curves). ``exact`` packs the
  file as it is, so the resumed run ends bit-for-bit where an uninterrupted one would on the
  same device. That costs 12 bytes per parameter (fp32 weights and AdamW's two moments): 257 MB
  for a ViT-S, too much for one call. ``compact`` keeps the weights in bf16 and drops the
  optimiser's moments (2 bytes per parameter: 43 MB for a ViT-S); the resumed run restarts
  AdamW's moments at that step, so it is *not* the uninterrupted run, and the manifest and
  the run's record say so (``lossy``).
* a **finished run** (final weights and its result), always exact.

A manifest names the run's cache key; unpacking into a cache whose code version or
configuration gives another key is refused, as is a missing, truncated or altered part, each
with the file named. Nothing already in the cache is overwritten: a finished run there is kept
and the packed one ignored, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from .cache import RunStore, atomic_write

__all__ = ["PART_BYTES", "CALL_BYTES", "TransportError", "pack_run", "unpack_run", "read_manifest", "pack_bytes",
           "resume_history"]

PART_BYTES = 16 * 2**20  # the largest file a device call sends back
CALL_BYTES = 64 * 2**20  # all files of one call together
_FORMAT = 1
HISTORY = "transport.json"  # in a run's cache folder: its resumes from packs

Mode = Literal["exact", "compact"]


class TransportError(ValueError):
    """A pack cannot be made or trusted; the message names the file or value at fault."""


def _compact(ck: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint with bf16 weights and no optimiser moments (param groups kept)."""
    model = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ck["model"].items()}
    opt = {"state": {}, "param_groups": ck["opt"]["param_groups"]}
    return {**ck, "model": model, "opt": opt}


def _writer(data: bytes) -> Callable[[io.BufferedWriter], object]:
    return lambda f: f.write(data)


def pack_run(run: Any, out: Path | str, root: Path | str | None = None, mode: Mode = "exact",
             part_bytes: int = PART_BYTES, max_bytes: int | None = None) -> Path:
    """Cut the cached state of ``run`` (a :class:`~regvit_lib.train.RunConfig`) into parts.

    Args:
        run: the configuration; its cache key names the pack.
        out: folder for ``<key12>.manifest.json`` and ``<key12>.partNN``.
        root: the cache folder (default :func:`regvit_lib.cache.cache_root`).
        mode: ``"exact"`` or ``"compact"`` for a checkpoint (see the module docstring); a
            finished run is always packed exactly.
        part_bytes: the largest part.
        max_bytes: refuse a pack larger than this (e.g. :data:`CALL_BYTES`), before writing.

    Returns:
        The manifest's path.

    Raises:
        TransportError: no state of this run in the cache, a bad ``mode`` or ``part_bytes``, or
            a pack over ``max_bytes``.
    """
    if mode not in ("exact", "compact"):
        raise TransportError(f"mode must be 'exact' or 'compact', got {mode!r}")
    if isinstance(part_bytes, bool) or not isinstance(part_bytes, int) or part_bytes < 1:
        raise TransportError(f"part_bytes must be a positive integer, got {part_bytes!r}")
    store = RunStore(run, root)
    meta: dict[str, Any] = {"format": _FORMAT, "key": store.key, "code": store.doc["code"]}
    if store.is_complete():
        state, result = store.load_result()
        result = {k: v for k, v in result.items() if k != "model_sha256"}
        obj: dict[str, Any] = {"model": state, "result": json.dumps(result)}
        meta.update(kind="result", lossy=False, step=int(run.train.steps))
    elif store.checkpoint_path.exists():
        ck = store.load_tensors(store.checkpoint_path)
        obj = _compact(ck) if mode == "compact" else ck
        meta.update(kind="checkpoint", lossy=mode == "compact", step=int(ck["step"]))
    else:
        raise TransportError(f"run {store.key[:12]} has neither a result nor a checkpoint in {store.dir}")
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    if max_bytes is not None and len(data) > max_bytes:
        hint = " (try mode='compact')" if meta["kind"] == "checkpoint" and mode == "exact" else ""
        raise TransportError(f"the {meta['kind']} of run {store.key[:12]} packs to {len(data) / 2**20:.1f} MiB, "
                             f"over max_bytes={max_bytes / 2**20:.1f} MiB{hint}")
    out = Path(out)
    stem = store.key[:12]
    parts = []
    for i, start in enumerate(range(0, max(len(data), 1), part_bytes)):
        chunk = data[start:start + part_bytes]
        name = f"{stem}.part{i:02d}"
        atomic_write(out / name, _writer(chunk))
        parts.append({"file": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    meta.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), parts=parts)
    manifest = out / f"{stem}.manifest.json"
    atomic_write(manifest, _writer(json.dumps(meta, indent=1).encode()))
    return manifest


def read_manifest(path: Path | str) -> dict[str, Any]:
    """A manifest written by :func:`pack_run`, checked for shape (not yet its parts)."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TransportError(f"unreadable manifest {path}: {type(e).__name__}: {e}") from e
    need = ("format", "key", "kind", "lossy", "step", "bytes", "sha256", "parts")
    if not isinstance(meta, dict) or any(k not in meta for k in need):
        raise TransportError(f"manifest {path} lacks {[k for k in need if not isinstance(meta, dict) or k not in meta]}")
    if meta["format"] != _FORMAT:
        raise TransportError(f"manifest {path} has format {meta['format']!r}; this code reads {_FORMAT}")
    return meta


def _join(path: Path, meta: dict[str, Any]) -> bytes:
    chunks = []
    for part in meta["parts"]:
        p = path.parent / part["file"]
        if not p.is_file():
            raise TransportError(f"part {p} named by {path} is missing")
        chunk = p.read_bytes()
        if len(chunk) != part["bytes"] or hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise TransportError(f"part {p} is truncated or altered ({len(chunk)} bytes, expected {part['bytes']} "
                                 "and the manifest's SHA-256)")
        chunks.append(chunk)
    data = b"".join(chunks)
    if len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise TransportError(f"the parts of {path} do not join into the packed state")
    return data


def unpack_run(manifest: Path | str, run: Any, root: Path | str | None = None) -> dict[str, Any]:
    """Put a packed run into the cache, so that :func:`~regvit_lib.train.train` finds it.

    Args:
        manifest: the ``.manifest.json`` written by :func:`pack_run`; its parts lie beside it.
        run: the configuration the pack must belong to (its key is checked).
        root: the cache folder to write into.

    Returns:
        The manifest (``kind``, ``step``, ``lossy``, ...) plus ``written``: ``True`` if the
        state was put into the cache, ``False`` if the cache already held something at least
        as far along (then nothing there changed).

    Raises:
        TransportError: a manifest of another run or code version, or a missing or altered part.
    """
    path = Path(manifest)
    meta = read_manifest(path)
    store = RunStore(run, root)
    if meta["key"] != store.key:
        raise TransportError(f"{path} holds run {meta['key'][:12]} (code {meta.get('code')}), but this "
                             f"configuration and code give {store.key[:12]} (code {store.doc['code']})")
    data = _join(path, meta)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a pack that joins but does not load
        raise TransportError(f"the state packed by {path} does not load: {type(e).__name__}: {e}") from e
    if store.is_complete():
        warnings.warn(f"run {store.key[:12]} is already finished in {store.dir}; {path} left unused", stacklevel=2)
        return {**meta, "written": False}
    if meta["kind"] == "result":
        store.save_result(obj["model"], json.loads(obj["result"]))
        return {**meta, "written": True}
    if store.checkpoint_path.exists():
        here = int(store.load_tensors(store.checkpoint_path)["step"])
        if here >= meta["step"]:
            warnings.warn(f"the cache's checkpoint of run {store.key[:12]} is at step {here}, the pack at "
                          f"{meta['step']}; {path} left unused", stacklevel=2)
            return {**meta, "written": False}
    if meta["lossy"]:
        obj["model"] = {k: v.float() if v.is_floating_point() else v for k, v in obj["model"].items()}
    store.save_json(store.config_path, {"key": store.key, **store.doc})
    store.save_tensors(store.checkpoint_path, obj)
    store.save_json(store.dir / HISTORY, resume_history(run, root) + [
        {"step": meta["step"], "lossy": meta["lossy"], "sha256": meta["sha256"]}])
    return {**meta, "written": True}


def resume_history(run: Any, root: Path | str | None = None) -> list[dict[str, Any]]:
    """Every resume of ``run`` from a pack (step, lossy, SHA-256), oldest first; ``[]`` if none."""
    store = RunStore(run, root)
    path = store.dir / HISTORY
    events: list[dict[str, Any]] = store.load_json(path) if path.is_file() else []
    return events


def pack_bytes(manifest: Path | str) -> int:
    """Bytes on disk of a pack: its manifest and parts (for a call's limit)."""
    path = Path(manifest)
    meta = read_manifest(path)
    return path.stat().st_size + sum((path.parent / p["file"]).stat().st_size for p in meta["parts"])
