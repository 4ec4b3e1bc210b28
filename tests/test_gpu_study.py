"""The GPU driver, exercised on the CPU at smoke scale: a budgeted call stops at a checkpoint and
packs the run; the next call, on a fresh cache, goes on and ends where one call would."""

import json

import pytest

from regvit_lib import gpu_study, train
from regvit_lib.profiles import get_profile
from regvit_lib.study import study_points

POINTS = ["profile recipe", "4 registers"]


def _run(tmp_path, name: str, **kw):
    return gpu_study.run_points("smoke", POINTS, kw.pop("budget_s", 600.0), tmp_path / name / "out",
                                root=tmp_path / name / "cache", device="cpu", **kw)


def test_a_run_split_over_two_calls_equals_one_call(tmp_path) -> None:
    first = _run(tmp_path, "a", stop_after=10)
    assert first["rows"] == [] and [p["label"] for p in first["pending"]] == POINTS
    assert all(p["step"] == 10 and p["mode"] == "exact" for p in first["pending"])
    assert json.loads((tmp_path / "a" / "out" / "gpu.json").read_text())["pending"] == first["pending"]
    second = _run(tmp_path, "b", state=tmp_path / "a" / "out" / "state")
    assert [u["step"] for u in second["unpacked"]] == [10, 10] and second["pending"] == []
    whole = _run(tmp_path, "c")
    for split, one in zip(second["rows"], whole["rows"]):
        assert split["resumes"] == [{"step": 10, "lossy": False, "sha256": split["resumes"][0]["sha256"]}]
        assert one["resumes"] == [] and one["mfu"] is None and split["achieved_tflops"] > 0
        same = ("key", "test_acc", "train_flops", "final_ratio_mean", "final_sink_mass", "top_on_background")
        assert {k: split[k] for k in same} == {k: one[k] for k in same}
        assert [c["val_acc"] for c in split["curve"]] == [c["val_acc"] for c in one["curve"]]


def test_compact_mode_is_recorded_as_lossy(tmp_path) -> None:
    first = _run(tmp_path, "a", stop_after=10, mode="compact")
    assert all(p["mode"] == "compact" for p in first["pending"])
    second = _run(tmp_path, "b", state=tmp_path / "a" / "out" / "state")
    assert all(r["resumes"][0]["lossy"] for r in second["rows"])


def test_deadline_stops_only_at_checkpoints() -> None:
    run = get_profile("smoke").run()  # 20 steps, a checkpoint every 10
    late = gpu_study.Deadline(run, end=0.0, reserve_s=0.0)  # the budget is already spent
    for done in range(1, 10):
        late(done)  # no checkpoint: goes on
    with pytest.raises(gpu_study.OutOfTime) as stop:
        late(10)
    assert stop.value.step == 10
    roomy = gpu_study.Deadline(run, end=float("inf"), reserve_s=0.0)
    for done in range(1, 21):
        roomy(done)


def test_no_time_left_leaves_every_point_pending(tmp_path) -> None:
    doc = _run(tmp_path, "a", budget_s=0.0)
    assert doc["rows"] == [] and all(p["why"] == "no time left to start" for p in doc["pending"])


def test_bad_arguments_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown study points.*'no such point'"):
        gpu_study.run_points("smoke", ["no such point"], 10.0, tmp_path)
    with pytest.raises(ValueError, match="budget_s"):
        gpu_study.run_points("smoke", POINTS, -1.0, tmp_path)
    with pytest.raises(ValueError, match="mode"):
        gpu_study.run_points("smoke", POINTS, 10.0, tmp_path, mode="zip")
    with pytest.raises(ValueError, match="stop_after"):
        gpu_study.run_points("smoke", POINTS, 10.0, tmp_path, stop_after=0)
    with pytest.raises(SystemExit):
        gpu_study.main(["run", "--profile", "smoke", "--points", "nope", "--out", str(tmp_path)])


def test_merge_keeps_the_latest_row_of_each_point(tmp_path) -> None:
    labels = [label for _, label, _ in study_points(get_profile("smoke"))]

    def doc(command: str, rows: list[tuple[str, float]], pending: list[str]) -> dict:
        return {"command": command, "profile": "smoke", "k": 4.0, "code": "c", "commit": None, "device": "H",
                "matmul_tflops": 700.0, "rows": [{"label": lb, "axis": "x", "test_acc": a, "code": "c"} for lb, a in rows],
                "pending": [{"label": lb, "step": 10} for lb in pending]}

    (tmp_path / "1.json").write_text(json.dumps(doc("one", [(labels[3], 0.1)], [labels[0]])))
    (tmp_path / "2.json").write_text(json.dumps(doc("two", [(labels[0], 0.2), (labels[3], 0.3)], [labels[5]])))
    into = tmp_path / "data" / "gpu.json"
    merged = gpu_study.main(["merge", str(tmp_path / "1.json"), str(tmp_path / "2.json"), "--into", str(into)])
    assert [(r["label"], r["test_acc"], r["command"]) for r in merged["rows"]] == [(labels[0], 0.2, "two"),
                                                                                 (labels[3], 0.3, "two")]
    assert [p["label"] for p in merged["pending"]] == [labels[5]]
    assert json.loads(into.read_text()) == merged
    (tmp_path / "3.json").write_text(json.dumps({**doc("three", [], []), "profile": "cpu"}))
    with pytest.raises(ValueError, match="several profiles"):
        gpu_study.merge([tmp_path / "3.json"], into)


def test_one_call_row_matches_the_cpu_study_row(tmp_path) -> None:
    """The GPU driver's rows are the study's rows: the chapter can read either."""
    doc = _run(tmp_path, "a")
    run = [r for _, label, r in study_points(get_profile("smoke")) if label == POINTS[0]][0]
    trained = train(run, root=tmp_path / "a" / "cache", progress=False)
    assert trained.cached and doc["rows"][0]["key"] == trained.key[:24]
    assert doc["rows"][0]["test_acc"] == trained.metrics["test_acc"]
