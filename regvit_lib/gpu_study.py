"""The emergence study on a borrowed GPU: runs that stop in time and go on next call.

A GPU here is lent by the command: each command runs at most 10 minutes and sends back at most
64 MiB of files. This driver trains points of the study (:func:`regvit_lib.study.study_points`)
under a wall-time budget. A run that would not finish in time stops at a checkpoint and its
state is packed (:mod:`regvit_lib.transport`) into the output folder; the next command, given
that folder back with ``--state``, goes on from there (on a machine that kept its cache, it
simply goes on from the cache). Finished runs become rows in the same format as the CPU
study's, each with its MFU against the card's measured bf16 matmul rate.

One command (from the repository root on the GPU machine)::

    python -m regvit_lib.gpu_study run --profile gpu --points "profile recipe" "4 registers" \\
        --budget-s 540 --out $OUT [--state <folder of an earlier call's state/>]

writes ``$OUT/gpu.json`` (rows, pending runs, the matmul rate) and ``$OUT/state/`` (the pack of
an unfinished run, if any). Back here::

    python -m regvit_lib.gpu_study merge <gpu.json> [<gpu.json> ...] --into data/emergence/gpu.json

merges calls (a later row of a point replaces an earlier one) into the file the ablations
chapter reads for the ``gpu`` profile. Every row keeps the command, device, commit and code
version that made it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .cache import RunStore, code_version
from .profiles import get_profile
from .study import git_commit, in_study_order, study_points, study_row
from .train import RunConfig, train
from .transport import (CALL_BYTES, PART_BYTES, TransportError, pack_bytes, pack_run, read_manifest,
                        resume_history, unpack_run)

__all__ = ["OutOfTime", "Deadline", "run_points", "merge", "main"]


class OutOfTime(Exception):
    """Raised from the training loop's step hook to stop a run at a checkpoint."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step} to stay inside the time budget")
        self.step = step


class Deadline:
    """A step hook that stops a run at the last checkpoint that leaves time to finish the call.

    At every checkpoint it estimates the time to the next checkpoint (or to the end of the run)
    from the pace since the last one, and raises :class:`OutOfTime` if that plus ``reserve_s``
    (final evaluation, summaries, packing) would pass ``end`` (a ``time.monotonic`` value), or
    once ``stop_after`` steps were trained in this call (to split a run over calls on purpose).
    """

    def __init__(self, run: RunConfig, end: float, reserve_s: float, stop_after: int | None = None) -> None:
        self.every, self.steps = run.train.checkpoint_every, run.train.steps
        self.end, self.reserve_s, self.stop_after = end, reserve_s, stop_after
        self.mark: tuple[int, float] | None = None
        self.first: int | None = None

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.mark is None:  # first step of this call: the pace starts here (compile excluded)
            self.mark, self.first = (done, now), done - 1
        if done % self.every or done >= self.steps:
            return  # no checkpoint was saved at this step
        if self.stop_after is not None and done - (self.first or 0) >= self.stop_after:
            raise OutOfTime(done)
        d0, t0 = self.mark
        pace = (now - t0) / max(done - d0, 1)
        self.mark = (done, now)
        if now + pace * min(self.every, self.steps - done) + self.reserve_s > self.end:
            raise OutOfTime(done)


def _points(profile_name: str, labels: list[str] | None) -> list[tuple[str, str, RunConfig]]:
    pts = study_points(get_profile(profile_name))
    if labels is None:
        return pts
    known = [label for _, label, _ in pts]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ValueError(f"unknown study points {unknown}; known: {known}")
    return [p for label in labels for p in pts if p[1] == label]


def run_points(profile: str, labels: list[str] | None, budget_s: float, out: Path, state: Path | None = None,
               mode: str = "auto", reserve_s: float = 60.0, root: Path | None = None, k: float = 4.0,
               device: str | None = None, command: str | None = None,
               stop_after: int | None = None) -> dict[str, Any]:
    """Train the chosen points within ``budget_s``; write ``out/gpu.json`` (and ``out/state/``).

    Args:
        profile: the profile whose study points to run (``gpu`` on a GPU; tests use ``smoke``).
        labels: point labels (as in the study table); ``None``: all of them.
        budget_s: wall seconds for the whole call, from now.
        out: the output folder (``$OUT`` on the GPU machine).
        state: a folder of packs from an earlier call, put into the cache first.
        mode: ``"exact"``, ``"compact"`` or ``"auto"`` (exact when it fits one call's files).
        reserve_s: seconds kept back at the end of a run for its final evaluation and packing.
        stop_after: stop each run at its first checkpoint after this many steps in this call.

    Returns:
        The document written to ``out/gpu.json``.
    """
    if budget_s < 0:
        raise ValueError(f"budget_s must be >= 0, got {budget_s!r}")
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1 step, got {stop_after!r}")
    if mode not in ("exact", "compact", "auto"):
        raise ValueError(f"mode must be 'exact', 'compact' or 'auto', got {mode!r}")
    end = time.monotonic() + budget_s
    pts = _points(profile, labels)
    out.mkdir(parents=True, exist_ok=True)
    unpacked = []
    if state is not None:
        for manifest in sorted(Path(state).glob("*.manifest.json")):
            key = read_manifest(manifest)["key"]
            match = [run for _, _, run in pts if RunStore(run, root).key == key]
            if not match:
                raise TransportError(f"{manifest} belongs to none of the chosen points (key {key[:12]})")
            info = unpack_run(manifest, match[0], root)
            unpacked.append({k: info[k] for k in ("key", "kind", "step", "lossy", "written")})
    cuda = torch.cuda.is_available() and device != "cpu"
    peak = None
    if cuda:
        from .bench import matmul_tflops

        peak = matmul_tflops()
    rows, pending = [], []
    room = {"bytes": CALL_BYTES - 2**20, "files": 7}  # what a call may send back, less gpu.json
    for axis, label, run in pts:
        left = end - time.monotonic()
        if left < reserve_s:
            pending.append({"label": label, "key": RunStore(run, root).key[:24], "step": None,
                            "steps": run.train.steps, "why": "no time left to start"})
            continue
        try:
            t = time.perf_counter()
            trained = train(run, root=root, device=device, on_step=Deadline(run, end, reserve_s, stop_after))
        except OutOfTime as stop:
            pending.append({"label": label, "key": RunStore(run, root).key[:24], "step": stop.step,
                            "steps": run.train.steps, **_pack(run, out / "state", mode, root, room)})
            continue
        row = study_row(axis, label, trained, k, time.perf_counter() - t)
        row["resumes"] = resume_history(run, root)
        row["gpu"] = torch.cuda.get_device_name() if cuda else None
        achieved = row["train_flops"] / max(row["train_seconds"], 1e-9) / 1e12
        row["achieved_tflops"] = achieved
        row["mfu"] = achieved / peak if peak else None
        rows.append(row)
    doc = {"command": command, "profile": profile, "k": k, "code": code_version(), "commit": git_commit(),
           "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "matmul_tflops": peak, "budget_s": budget_s, "rows": rows, "pending": pending, "unpacked": unpacked}
    (out / "gpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def _pack(run: RunConfig, folder: Path, mode: str, root: Path | None, room: dict[str, int]) -> dict[str, Any]:
    """Pack an unfinished run for the next call, within what is left of the call's files
    (``room``: bytes and files, updated); ``auto`` tries exact, then compact."""
    limit = min(room["bytes"], (room["files"] - 1) * PART_BYTES)  # one file is the manifest
    modes = ("exact", "compact") if mode == "auto" else (mode,)
    why = "no room left in this call's files"
    for m in modes if limit > 0 else ():
        try:
            manifest = pack_run(run, folder, root, mode=m, max_bytes=limit)  # type: ignore[arg-type]
        except TransportError as e:
            why = str(e)
            continue
        size = pack_bytes(manifest)
        room["bytes"] -= size
        room["files"] -= 1 + len(read_manifest(manifest)["parts"])
        return {"pack": f"state/{manifest.name}", "mode": m, "pack_bytes": size}
    return {"pack": None, "why": f"{why}; the checkpoint stays in this machine's cache only"}


def merge(files: list[Path], into: Path) -> dict[str, Any]:
    """Merge the ``gpu.json`` of several calls (and ``into``, if it exists) into ``into``.

    A point's row from a later file replaces an earlier one; ``pending`` keeps only points that
    have no row yet. Rows keep their own stamps (command, device, commit, code).
    """
    docs = ([json.loads(into.read_text())] if into.is_file() else []) + [json.loads(Path(f).read_text()) for f in files]
    if not docs:
        raise ValueError("nothing to merge")
    profiles = {d["profile"] for d in docs}
    if len(profiles) != 1:
        raise ValueError(f"cannot merge studies of several profiles: {sorted(profiles)}")
    rows: dict[str, dict[str, Any]] = {}
    pending: dict[str, dict[str, Any]] = {}
    for d in docs:
        stamp = {key: d.get(key) for key in ("command", "commit", "code", "device")}
        for r in d["rows"]:
            rows[r["label"]] = {**stamp, **{k: v for k, v in r.items() if v is not None or k not in stamp}}
        for p in d.get("pending", []):
            pending[p["label"]] = {**p, "command": d.get("command")}
    merged = in_study_order(list(rows.values()), get_profile(docs[0]["profile"]))
    last = docs[-1]
    doc = {"command": " ; ".join(dict.fromkeys(d["command"] for d in docs if d.get("command"))),
           "profile": last["profile"], "k": last["k"], "code": last["code"], "commit": last["commit"],
           "device": last["device"], "matmul_tflops": last["matmul_tflops"], "rows": merged,
           "pending": [p for label, p in pending.items() if label not in rows],
           "code_versions": sorted({r["code"] for r in merged if r.get("code")})}
    into.parent.mkdir(parents=True, exist_ok=True)
    into.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train study points within a time budget (on the GPU machine)")
    r.add_argument("--profile", default="gpu")
    r.add_argument("--points", nargs="+", default=None, help="labels of study points (default: all)")
    r.add_argument("--budget-s", type=float, default=540.0, help="wall seconds for this call (default 540)")
    r.add_argument("--out", required=True, help="output folder ($OUT on the GPU machine)")
    r.add_argument("--state", default=None, help="folder of packs from an earlier call")
    r.add_argument("--mode", default="auto", choices=("exact", "compact", "auto"))
    r.add_argument("--reserve-s", type=float, default=60.0, help="seconds kept for a run's final evaluation")
    r.add_argument("--stop-after", type=int, default=None, help="stop each run at a checkpoint after this many steps")
    r.add_argument("--k", type=float, default=4.0)
    m = sub.add_parser("merge", help="merge calls' gpu.json into the committed study file")
    m.add_argument("files", nargs="+")
    m.add_argument("--into", default="data/emergence/gpu.json")
    args = ap.parse_args(argv)
    command = "python -m regvit_lib.gpu_study " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.cmd == "merge":
        doc = merge([Path(f) for f in args.files], Path(args.into))
        print(f"wrote {args.into}: {len(doc['rows'])} rows, {len(doc['pending'])} pending", file=sys.stderr)
        return doc
    try:
        doc = run_points(args.profile, args.points, args.budget_s, Path(args.out),
                         None if args.state is None else Path(args.state), args.mode, args.reserve_s, k=args.k,
                         command=command, stop_after=args.stop_after)
    except (ValueError, TransportError) as e:
        ap.error(str(e))
    for row in doc["rows"]:
        mfu = f"{100 * row['mfu']:.1f} %" if row["mfu"] is not None else "-"
        print(f"done    {row['label']:32s} ratio {row['final_ratio_mean']:.2f} share {row['final_outlier_share']:.4f} "
              f"sink {row['final_sink_mass']:.2f} acc {row['test_acc']:.3f} {row['train_seconds']:.0f} s MFU {mfu}",
              file=sys.stderr)
    for p in doc["pending"]:
        print(f"pending {p['label']:32s} at step {p['step']} of {p['steps']}: {p.get('pack') or p.get('why')}",
              file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
