"""Training before the notebooks: the runs the chapters read, trained in parallel processes into the cache."""

import pytest

from regvit_lib import ablations, measure
from regvit_lib.cache import Store
from regvit_lib.prepare import book_runs, main, run_cost, train_all
from regvit_lib.profiles import get_profile
from regvit_lib.train import TRAIN_CODE, train

SMOKE = get_profile("smoke")


def test_book_runs_are_every_run_the_chapters_read_once() -> None:
    for name in ("smoke", "cpu", "gpu"):
        p = get_profile(name)
        runs = book_runs(p)
        assert len(runs) == len(set(runs))
        needed = {run for _, _, run in ablations.grid_runs(p)} | set(measure.seed_runs(p, 0))
        needed |= set(measure.seed_runs(p, 4)) | set(measure.size_runs(p))
        assert set(runs) == needed
        assert len([r for r in runs if r.model.embed_dim == p.model.embed_dim]) == len(p.register_counts) * p.seeds
    assert run_cost(SMOKE.run(num_registers=16)) > run_cost(SMOKE.run()) > 0


def test_train_all_trains_in_parallel_once_and_the_chapters_load_it(tmp_path) -> None:
    runs = [SMOKE.run(seed=s) for s in (0, 1)] + [SMOKE.run(num_registers=1)]
    first = train_all(runs + runs[:1], workers=2, root=tmp_path, progress=False)
    assert [r["cached"] for r in first] == [False, False, False, False]  # listed twice: trained once
    assert first[0] == first[-1] and len({r["key"] for r in first}) == 3
    assert all(r["train_seconds"] > 0 for r in first)
    for run, record in zip(runs, first):
        assert Store("runs", run, TRAIN_CODE, tmp_path).key == record["key"]
        assert train(run, root=tmp_path, progress=False).cached  # what a chapter then gets
    again = train_all(runs, root=tmp_path, progress=False)
    assert all(r["cached"] and r["train_seconds"] is None for r in again)


def test_one_worker_trains_in_this_process_and_matches_a_direct_run(tmp_path) -> None:
    run = SMOKE.run(seed=3)
    (record,) = train_all([run], workers=1, root=tmp_path / "a", progress=False)
    direct = train(run, root=tmp_path / "b", progress=False)
    assert record["key"] == direct.key
    assert train(run, root=tmp_path / "a", progress=False).metrics["test_acc"] == direct.metrics["test_acc"]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_a_bad_worker_count_is_named(workers, tmp_path) -> None:
    with pytest.raises(ValueError, match=f"workers must be an int >= 1, got {workers!r}"):
        train_all([SMOKE.run()], workers=workers, root=tmp_path)


def test_the_command_prepares_a_profile(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("REGVIT_CACHE", str(tmp_path))
    n = len(book_runs(SMOKE))
    main(["--profile", "smoke", "--workers", "1"])
    err = capsys.readouterr().err
    assert f"{n} runs, {n} trained now" in err and f"0 of {n} runs found in the cache" in err
    assert err.count("  trained ") == n  # a line per run as it finishes, naming it
    assert f"trained {n} of {n}: ViT, width " in err and f"depth {SMOKE.model.depth}, 0 registers, seed" in err
    main(["--profile", "smoke"])
    err = capsys.readouterr().err
    assert ", 0 trained now" in err and f"{n} of {n} runs found in the cache (reused, not retrained)" in err
