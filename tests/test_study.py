"""The emergence study: its grid, its summaries, its table and figure (run at smoke scale)."""

import json

import matplotlib
import numpy as np
import pytest

from regvit_lib import plots
from regvit_lib.cache import config_key
from regvit_lib.profiles import get_profile
from regvit_lib.study import _share_above, run_study, study_points, study_table
from regvit_lib.summaries import RATIO_BINS

matplotlib.use("Agg")


def test_every_point_is_a_distinct_run_and_every_axis_is_there() -> None:
    pts = study_points(get_profile("cpu"))
    assert {a for a, _, _ in pts} == {"baseline", "compute", "tokens", "pooling", "optimiser", "shape", "data",
                                      "objective", "registers"}
    keys = [config_key(r)[0] for _, _, r in pts]
    assert len(set(keys)) == len(keys)
    assert pts[0][2] == get_profile("cpu").run()  # the baseline is the profile's own run (shared cache)


def test_share_above_reads_the_histogram() -> None:
    hist = np.zeros(len(RATIO_BINS) - 1, dtype=int)
    hist[np.searchsorted(RATIO_BINS, 0.0)] = 90  # ratio 1x
    hist[np.searchsorted(RATIO_BINS, 3.25)] = 10  # ratio ~9.5x
    assert _share_above(hist.tolist(), 4.0) == pytest.approx(0.10)
    assert _share_above(hist.tolist(), 16.0) == 0.0


def test_smoke_study_runs_and_summarises(tmp_path) -> None:
    axes = {"baseline", "tokens", "data", "objective"}
    rows = run_study(get_profile("smoke"), root=tmp_path, axes=axes)
    assert len(rows) == sum(a in axes for a, _, _ in study_points(get_profile("smoke")))
    json.dumps(rows)  # what main() writes
    again = run_study(get_profile("smoke"), root=tmp_path, axes={"baseline", "tokens"})
    assert all(r["cached"] for r in again)
    table = study_table(rows)
    assert len(table) == len(rows) and table["max/median (mean over images)"].min() >= 1.0
    assert set(table["sink on"]) <= {"cls", "reg", "patch"}
    row = rows[0]
    assert row["curve"][0]["step"] == 0 and row["curve"][-1]["step"] == get_profile("smoke").train.steps
    assert 0 <= row["top_on_background"] <= 1 and 0.3 < row["background_patches"] < 1
    fractal = [r for r in rows if r["label"] == "fractals on black"][0]
    assert fractal["background_patches"] > row["background_patches"]  # black canvas: more background
    dino = [r for r in rows if r["axis"] == "objective"]
    assert len(dino) == 2 and all(0 <= r["test_acc"] <= 1 for r in dino)  # k-NN accuracy
    fig = plots.emergence(rows)
    assert len(fig.axes) == 2


def _row(axis: str, flops: float, ratio: float, sink: float = 0.5, share: float = 0.0) -> dict:
    return {"axis": axis, "label": f"{axis} {flops:g}", "train_flops": flops, "final_ratio_mean": ratio,
            "final_ratio_mean_layer": 2, "final_ratio_max": ratio + 1, "final_outlier_share": share,
            "final_sink_mass": sink, "final_sink_kind": "patch", "final_sink_fixed": 0.25,
            "top_on_background": 0.1, "background_patches": 0.6, "top_similarity": 0.2, "all_similarity": 0.5}


def test_headline_bound_and_extrapolation() -> None:
    from regvit_lib.study import headline

    rows = [_row("baseline", 1e13, 2.0), _row("compute", 1e14, 3.0), _row("compute", 1e15, 4.0),
            _row("data", 1e13, 2.5, sink=0.9)]
    h = headline(rows, paper_ratio=10.0)
    assert h["best_ratio"] == 4.0 and h["run"] == "compute 1e+15" and h["best_ratio_any"] == 5.0
    assert h["best_sink"] == 0.9 and h["sink_run"] == "data 1e+13"
    assert h["slope"] == pytest.approx(1.0) and h["flops_to_paper"] == pytest.approx(1e21, rel=1e-6)
    flat = headline([_row("baseline", 1e13, 2.0), _row("compute", 1e14, 1.9)])
    assert flat["flops_to_paper"] is None and flat["slope"] < 0


def test_stored_study_falls_back_to_cpu(tmp_path) -> None:
    from regvit_lib.study import stored_study

    with pytest.raises(FileNotFoundError, match="python -m regvit_lib.study --profile smoke"):
        stored_study("smoke", tmp_path)
    (tmp_path / "cpu.json").write_text(json.dumps({"profile": "cpu", "command": "x", "rows": []}))
    doc, path = stored_study("smoke", tmp_path)
    assert doc["profile"] == "cpu" and path.name == "cpu.json"
