"""Data-parallel training: 2 gloo processes on the CPU train what one process trains on the same
global batch, a 2-process run interrupted mid-way resumes to the same result, and the README's
torchrun command (N = 2) fills the cache one process then finds."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from regvit_lib import ConfigError, RunConfig, train
from regvit_lib import distributed as D
from regvit_lib.config import AViT

from test_train_cache import RUN, Interrupt, _stop_at

# Two processes sum their gradients in another order than one process does; after 12 AdamW steps
# the weights agree to this (measured on 2 CPU cores: at most 4.6e-6 plain, 1.8e-6 with
# Mixup/CutMix; the train losses to 2e-7, the test accuracies exactly).
ATOL = 5e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, size: int, port: int, run: RunConfig, root: str, stop_at: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    world = D.init_from_env()
    assert world == D.World(rank, size)

    try:  # every process stops at the same step, like a killed job
        train(run, root=root, device="cpu", progress=False, on_step=None if stop_at is None else _stop_at(stop_at))
    except Interrupt:
        pass
    finally:
        torch.distributed.destroy_process_group()


def _train_on(processes: int, run: RunConfig, root: Path, stop_at: int | None = None) -> None:
    mp.spawn(_rank, args=(processes, _free_port(), run, str(root), stop_at), nprocs=processes)


def _close(a, b) -> None:
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst < ATOL, f"weights differ by up to {worst:.2e}"
    la = [r["train_loss"] for r in a.curves if r["train_loss"] is not None]
    lb = [r["train_loss"] for r in b.curves if r["train_loss"] is not None]
    assert len(la) == len(lb) == 3 and np.allclose(la, lb, rtol=1e-5, atol=1e-6), (la, lb)
    assert a.metrics["test_acc"] == pytest.approx(b.metrics["test_acc"], abs=1 / 32)


@pytest.mark.parametrize("recipe", [{}, {"mixup": 0.8, "cutmix": 1.0}], ids=["plain", "mixup-cutmix"])
def test_two_processes_train_what_one_trains_on_the_same_global_batch(tmp_path, recipe) -> None:
    run = replace(RUN, train=replace(RUN.train, **recipe))
    _train_on(2, run, tmp_path / "two")
    two = train(run, root=tmp_path / "two", progress=False)  # rank 0 wrote the cache; one process finds it
    assert two.cached and two.metrics["processes"] == 2
    one = train(run, root=tmp_path / "one", progress=False)
    assert one.metrics["processes"] == 1 and one.key == two.key  # the key ignores how many processes trained
    _close(one, two)


def test_an_interrupted_two_process_run_resumes_to_the_same_result(tmp_path) -> None:
    _train_on(2, RUN, tmp_path / "a", stop_at=7)  # killed after step 7: the checkpoint of step 5 is kept
    store_dir = next((tmp_path / "a" / "runs").iterdir())
    assert (store_dir / "checkpoint.pt").is_file() and not (store_dir / "result.json").is_file()
    _train_on(2, RUN, tmp_path / "a")
    resumed = train(RUN, root=tmp_path / "a", progress=False)
    assert resumed.cached and resumed.metrics["resumed_from"] == 5
    _train_on(2, RUN, tmp_path / "b")
    _close(resumed, train(RUN, root=tmp_path / "b", progress=False))


def test_batches_split_into_disjoint_slices_that_keep_mixup_pairs() -> None:
    for paired in (False, True):
        parts = [D.positions(16, D.World(r, 4), paired) for r in range(4)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(16))
    for r in range(4):  # a process's own flip(0) pairs i with B - 1 - i, as the whole batch does
        mine = D.positions(16, D.World(r, 4), paired=True)
        assert (mine + mine[::-1] == 15).all()
    assert D.positions(16, D.World()).tolist() == list(range(16))


def test_what_cannot_be_split_is_refused_before_training() -> None:
    two = D.World(0, 2)
    D.check_run(RUN, two)
    with pytest.raises(ConfigError, match=r"batch_size=15 does not split over 2 processes"):
        D.check_run(replace(RUN, train=replace(RUN.train, batch_size=15)), two)
    with pytest.raises(ConfigError, match=r"in pairs \(Mixup/CutMix\): use a multiple of 4"):
        D.check_run(replace(RUN, train=replace(RUN.train, batch_size=18, mixup=0.8)), two)
    with pytest.raises(ConfigError, match=r"drop_path_rate > 0 is not split"):
        D.check_run(replace(RUN, model=replace(RUN.model, drop_path_rate=0.1)), two)
    with pytest.raises(ConfigError, match=r"variant A-ViT"):
        D.check_run(replace(RUN, model=replace(RUN.model, variant=AViT())), two)
    D.check_run(replace(RUN, model=replace(RUN.model, drop_path_rate=0.1)), D.World())  # one process: anything


def test_the_readme_torchrun_command_fills_the_cache_that_one_process_reads(tmp_path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    command = "torchrun --standalone --nproc_per_node=2 -m regvit_lib.prepare"
    assert command.replace("=2", "=N") + "\n" in readme  # the runbook's command, with N = 2 ...
    env = {**os.environ, "REGVIT_PROFILE": "smoke",  # ... and the smoke profile in place of gpu
           "REGVIT_CACHE": str(tmp_path / "cache"), "REGVIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", *command.split()[1:]]
    done = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prepare: 2 processes train" in done.stderr
    from regvit_lib.prepare import book_runs
    from regvit_lib.profiles import get_profile

    found = [train(run, root=tmp_path / "cache", progress=False) for run in book_runs(get_profile("smoke"))]
    assert all(r.cached and r.metrics["processes"] == 2 for r in found)


@pytest.mark.parametrize("runner, extra", [
    ("emergence", ["--axes", "pooling"]),
    ("compare", ["--methods", "vit", "avit", "--seeds", "2", "--images", "32"]),
])
def test_the_readme_study_commands_run_under_torchrun(tmp_path, runner, extra) -> None:
    """The runbook's study and comparison commands, N = 2 and the smoke profile in place of gpu: the
    runs that split are trained by both processes, A-ViT (refused for splitting) by rank 0 after, and
    rank 0 alone writes the file."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith(f"torchrun --standalone --nproc_per_node=N -m "
                                                              f"regvit_lib.{runner} --profile gpu"))
    args = line.replace("=N", "=2").replace("--profile gpu", "--profile smoke").split()
    args = [a for a in args if a != "--out" and a != "data/emergence"]
    env = {**os.environ, "REGVIT_CACHE": str(tmp_path / "cache"), "REGVIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args[1:], *extra, "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "smoke.json").read_text())
    assert doc["profile"] == "smoke" and doc["rows"]
    results = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("result.json")]  # one per trained run
    processes = sorted(r["metrics"]["processes"] for r in results if "metrics" in r)
    if runner == "emergence":
        assert len(doc["rows"]) == 1 and processes == [2]
    else:
        assert len(doc["rows"]) == 4 and processes == [1, 1, 2, 2]  # A-ViT trained by rank 0 alone
