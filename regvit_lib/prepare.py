"""Train every run a profile's chapters need, before they execute: ``python -m regvit_lib.prepare``.

``make book`` runs it first, so the notebooks read their models from the cache and no cell waits
on training (a reader who skips it still gets a correct book: the chapters train what is missing).
The runs are the register grid of chapter 4 (:func:`regvit_lib.ablations.grid_runs`: every
register count of the profile for each of its seeds, which also holds the pairs chapters 2 and 3
compare, :func:`regvit_lib.measure.seed_runs`) and the widths of Fig. 4c
(:func:`regvit_lib.measure.size_runs`).

On a CPU they train in parallel worker processes, one per core, each run with the one thread of its
recipe (``TrainConfig.cpu_threads``: the thread count changes a run's numbers, so it is part of it):
small models use one core far better than two (README, "Build time"). The largest go first; one progress bar
counts the training FLOPs of them all, with the time left. A GPU trains them one after another.
A run that is already in the cache costs nothing; an interrupted one resumes from its checkpoint.

Under ``torchrun --nproc_per_node=N -m regvit_lib.prepare`` the N processes train each run together,
one run after another (data-parallel: :mod:`regvit_lib.distributed`), and rank 0 reports.
"""

import argparse
import os
import queue
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import distributed
from .config import ConfigError, RunConfig
from .profiles import Profile, add_arguments, from_arguments
from .train import run_store, train

__all__ = ["book_runs", "run_cost", "describe", "train_all", "train_together", "prepare", "main"]


def book_runs(profile: Profile) -> list[RunConfig]:
    """Every trained run the chapters of ``profile`` read, each once (chapters share them)."""
    from .ablations import grid_runs
    from .measure import seed_runs, size_runs

    runs = [run for _, _, run in grid_runs(profile)] + seed_runs(profile, 4) + size_runs(profile)
    return list(dict.fromkeys(runs))


def run_cost(run: RunConfig) -> float:
    """A run's training FLOPs as the training loop counts them: the forward pass x 3 per image (x 8
    for DINO: a student on two views and a teacher), times the images it trains on."""
    from .flops import count_flops

    per_image = 8 if run.train.objective == "dino" else 3
    return float(per_image * count_flops(run.model) * run.train.steps * run.train.batch_size)


def describe(run: RunConfig) -> str:
    """A training run in a few words, for progress lines: its model, method, seed and steps."""
    m = run.model
    method = type(m.variant).__name__ if m.variant is not None else (m.attention if m.attention != "softmax" else "ViT")
    return (f"{method}, width {m.embed_dim}, depth {m.depth}, {m.num_registers} registers, seed {run.seed}, "
            f"{run.train.steps} steps")


def _train_one(run: RunConfig, root: Path | str | None, index: int, steps: Any, device: str | None) -> dict[str, Any]:
    t = time.perf_counter()
    done = train(run, root=root, device=device, progress=False, on_step=lambda n: steps.put((index, n)))
    return {"key": done.key, "cached": done.cached, "seconds": time.perf_counter() - t,
            "train_seconds": done.metrics["train_seconds"]}


def prepare(profile: Profile, workers: int | None = None, root: Path | str | None = None, progress: bool = True,
            device: str | None = None) -> list[dict[str, Any]]:
    """Train (or find in the cache) every run of :func:`book_runs`: :func:`train_all`."""
    return train_all(book_runs(profile), workers, root, progress, device)


def train_all(runs: list[RunConfig], workers: int | None = None, root: Path | str | None = None,
              progress: bool = True, device: str | None = None) -> list[dict[str, Any]]:
    """Train (or find in the cache) every run of ``runs``, in parallel on a CPU.

    Args:
        workers: parallel training processes (default: one per usable CPU core; 1 on a GPU, and 1 under
            ``torchrun``, whose processes train each run together).
        root: cache folder (default :func:`regvit_lib.cache.cache_root`).
        progress: one bar over the training FLOPs of the runs still to train, with the time left.
        device: ``"cuda"`` / ``"cpu"`` (default CUDA when available).

    Returns:
        One record per run, in the order of ``runs`` (a run listed twice is trained once): ``key``,
        ``cached``, ``seconds`` (wall time of its call) and ``train_seconds`` (of its optimiser
        steps; ``None`` when it was in the cache already).

    Raises:
        ValueError: ``workers`` is not an int >= 1, or more than 1 under ``torchrun``.
    """
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    world = distributed.current()
    workers = (1 if dev == "cuda" or world.size > 1 else cores) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if workers > 1 and world.size > 1:
        raise ValueError(f"workers={workers} under torchrun ({world.size} processes): its processes already "
                         "train each run together; leave workers at 1")
    progress = progress and world.main
    stores = {run: run_store(run, root) for run in runs}
    results: dict[RunConfig, dict[str, Any]] = {
        run: {"key": st.key, "cached": True, "seconds": 0.0, "train_seconds": None}
        for run, st in stores.items() if st.result_path.is_file()}
    todo = sorted((run for run in stores if run not in results), key=run_cost, reverse=True)  # largest first
    if progress:
        print(f"training: {len(results)} of {len(stores)} runs found in the cache (reused, not retrained); "
              f"{len(todo)} to train", file=sys.stderr, flush=True)
    if todo:
        workers = min(workers, len(todo))
        with tqdm(total=sum(map(run_cost, todo)) / 1e12, disable=not progress, file=sys.stderr, dynamic_ncols=True,
                  mininterval=2.0, desc=f"training {len(todo)} of {len(stores)} runs ({workers} "
                                        f"worker{'s' * (workers > 1)})",
                  bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} TFLOP [{elapsed}<{remaining}]{postfix}") as bar:
            results |= _train_todo(todo, workers, root, device, bar)
    return [results[run] for run in runs]


def train_together(runs: list[RunConfig], root: Path | str | None = None, progress: bool = True) -> bool:
    """Under ``torchrun`` (N processes): train every run of ``runs`` that splits over them
    (:func:`regvit_lib.distributed.splits`), all N together, one after another; then leave the process
    group. Without ``torchrun``: nothing.

    Returns:
        Whether this process goes on: rank 0 (or the only process). What follows in a runner (the
        runs that cannot be split, measuring, writing files) is one process's work, and finds the
        trained runs in the cache.
    """
    world = distributed.init_from_env()
    if world.size == 1:
        return True
    together = [run for run in runs if distributed.splits(run, world)]
    t = time.perf_counter()
    if world.main:
        print(f"prepare: {world.size} processes train {len(together)} of {len(runs)} runs together (rank 0 writes "
              "the cache)" + ("; the others (DINO, A-ViT, drop-path) train afterwards in rank 0 alone"
                              if len(together) < len(runs) else ""), file=sys.stderr, flush=True)
    train_all(together, root=root, progress=progress)
    distributed.leave()
    if world.main:
        print(f"prepare: {world.size} processes done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return world.main


def _train_todo(todo: list[RunConfig], workers: int, root: Path | str | None, device: str | None,
                bar: Any) -> dict[RunConfig, dict[str, Any]]:
    """Train ``todo`` with ``workers`` processes (in this one when 1), moving ``bar`` by FLOPs as steps finish."""
    done: dict[int, dict[str, Any]] = {}
    seen, per_step = [0] * len(todo), [run_cost(run) / run.train.steps / 1e12 for run in todo]  # TFLOP per step
    ctx = get_context("spawn")
    manager = ctx.Manager() if workers > 1 else None
    steps = manager.Queue() if manager is not None else queue.Queue()

    def drain(timeout: float) -> None:
        try:
            while True:
                i, n = steps.get(timeout=timeout)
                bar.update(per_step[i] * (n - seen[i]))
                seen[i], timeout = n, 0.0
        except queue.Empty:
            pass

    def finished(i: int, record: dict[str, Any]) -> None:
        done[i] = record
        drain(0.0)
        bar.write(f"  trained {len(done)} of {len(todo)}: {describe(todo[i])} in {record['seconds']:.0f} s",
                  file=sys.stderr)
        bar.set_postfix_str(f"{len(done)} of {len(todo)} trained")

    if manager is None:
        for i, run in enumerate(todo):
            finished(i, _train_one(run, root, i, steps, device))
    else:
        with manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:  # each run trains with its cpu_threads
            jobs: dict[Future[dict[str, Any]], int] = {pool.submit(_train_one, run, root, i, steps, device): i
                                                       for i, run in enumerate(todo)}
            while len(done) < len(todo):
                drain(0.5)
                for job in [j for j in jobs if j.done() and jobs[j] not in done]:
                    finished(jobs[job], job.result())  # a worker's error is raised here
    return {todo[i]: record for i, record in done.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap)
    ap.add_argument("--workers", type=int, default=None, help="parallel training processes (default: one per core)")
    args = ap.parse_args(argv)
    profile = from_arguments(ap, args)
    show = os.environ.get("REGVIT_PROGRESS", "1") != "0"
    t = time.perf_counter()
    if not train_together(book_runs(profile), progress=show):  # torchrun: N processes train each run together
        return
    done = prepare(profile, args.workers, progress=show)
    trained = [r for r in {r["key"]: r for r in done}.values() if not r["cached"]]
    print(f"prepare: profile {profile.name!r}: {len(done)} runs, {len(trained)} trained now "
          f"({sum(r['train_seconds'] for r in trained):.0f} s of training steps), in {time.perf_counter() - t:.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
