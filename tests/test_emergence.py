"""The emergence study: its grid, its summaries, its table and figure (run at smoke scale)."""

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from regvit_lib import plots
from regvit_lib.cache import Store
from regvit_lib.profiles import get_profile
from regvit_lib.emergence import (COMPUTE_AXES, _share_above, headline, headline_texts, run_study, stored_study,
                                  study_points, study_table)
from regvit_lib.summaries import RATIO_BINS
from regvit_lib.train import TRAIN_CODE

matplotlib.use("Agg")


def test_every_point_is_a_distinct_run_and_every_axis_is_there() -> None:
    pts = study_points(get_profile("cpu"))
    assert {a for a, _, _ in pts} == {"baseline", "compute", "tokens", "pooling", "optimiser", "shape", "data",
                                      "objective", "registers", "seeds"}
    keys = [Store("runs", r, TRAIN_CODE).key for _, _, r in pts]
    assert len(set(keys)) == len(keys)
    seeds = {(r.train.steps, r.seed) for a, _, r in pts if a in ("baseline", "compute", "seeds")}
    steps = get_profile("cpu").train.steps
    assert {(steps * f, s) for f in (1, 2, 4) for s in (0, 1, 2)} <= seeds  # every compute, three seeds
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
    assert len(table) == len(rows) and table["ratio_mean"].min() >= 1.0
    assert set(table["sink_on"]) <= {"cls", "reg", "patch"}
    row = rows[0]
    assert row["curve"][0]["step"] == 0 and row["curve"][-1]["step"] == get_profile("smoke").train.steps
    assert 0 <= row["top_on_background"] <= 1 and 0.3 < row["background_patches"] < 1
    fractal = [r for r in rows if r["label"] == "fractals on black"][0]
    assert fractal["background_patches"] > row["background_patches"]  # black canvas: more background
    dino = [r for r in rows if r["axis"] == "objective"]
    assert len(dino) == 2 and all(0 <= r["test_acc"] <= 1 for r in dino)  # k-NN accuracy
    fig = plots.emergence(rows, along=COMPUTE_AXES)
    assert len(fig.axes) == 2


def _row(axis: str, flops: float, ratio: float, sink: float = 0.5, share: float = 0.0) -> dict:
    return {"axis": axis, "label": f"{axis} {flops:g}", "train_flops": flops, "final_ratio_mean": ratio,
            "final_ratio_mean_layer": 2, "final_ratio_max": ratio + 1, "final_outlier_share": share,
            "final_sink_mass": sink, "final_sink_kind": "patch", "final_sink_fixed": 0.25,
            "top_on_background": 0.1, "background_patches": 0.6, "top_similarity": 0.2, "all_similarity": 0.5}


def test_headline_bound_and_extrapolation() -> None:
    rows = [_row("baseline", 1e13, 2.0), _row("compute", 1e14, 3.0), _row("compute", 1e15, 4.0),
            _row("data", 1e13, 2.5, sink=0.9)]
    h = headline(rows, paper_ratio=10.0)
    assert h["best_ratio"] == 4.0 and h["run"] == "compute 1e+15" and h["best_ratio_any"] == 5.0
    assert h["best_sink"] == 0.9 and h["sink_run"] == "data 1e+13"
    assert h["slope"] == pytest.approx(1.0) and h["flops_to_paper"] == pytest.approx(1e21, rel=1e-6)
    assert h["slope_se"] == pytest.approx(0.0, abs=1e-9)  # three points on a line
    assert (h["max_top_on_background"], h["max_top_run"], h["max_top_ratio"]) == (0.1, "baseline 1e+13", 2.0)
    assert headline_texts(h)["extrapolation"] == "at 1e+21 training FLOPs"
    assert headline_texts(headline([_row("baseline", 1e13, 2.0)]))["verdict"] == "No run develops high-norm outliers."
    some = headline(rows + [_row("data", 1e13, 2.0, share=0.02)])
    assert (some["share_run"], some["best_share"]) == ("data 1e+13", 0.02)
    verdict = headline_texts(some)["verdict"]
    assert "data 1e+13: 2.00 %" in verdict and "on objects" in verdict  # 0.1 < 0.6
    noisy = headline(rows + [_row("seeds", 1e13, 3.5), _row("seeds", 1e15, 2.5)])
    assert 0 < noisy["slope"] < 2 * noisy["slope_se"] and "means little" in headline_texts(noisy)["extrapolation"]
    flat = headline([_row("baseline", 1e13, 2.0), _row("compute", 1e14, 1.9)])
    assert headline_texts(flat)["extrapolation"].startswith("never")
    assert flat["flops_to_paper"] is None and flat["slope"] < 0
    assert flat["seed_sd"] is None and [c["seeds"] for c in flat["by_compute"]] == [1, 1]
    assert flat["slope_se"] is None  # two points: no error estimate
    # other seeds join the compute axis: per compute, their mean and spread
    seeded = headline(rows + [_row("seeds", 1e13, 3.0), _row("seeds", 1e13, 4.0), _row("seeds", 1e15, 4.0)])
    assert seeded["slope_se"] > 0  # the seeds scatter about the line
    first = seeded["by_compute"][0]
    assert (first["train_flops"], first["seeds"], first["ratio_mean"]) == (1e13, 3, 3.0)
    assert first["ratio_sd"] == pytest.approx(1.0) and seeded["seed_sd"] == pytest.approx(1.0)
    assert seeded["by_compute"][1]["ratio_sd"] is None  # one seed at 1e14
    assert seeded["sink_onset"] is None  # rows without curves
    curve = lambda *pts: [{"step": s, "train_flops": f, "sink_mass": m} for s, f, m in pts]  # noqa: E731
    with_curves = [{**_row("baseline", 1e13, 2.0), "curve": curve((0, 0, 0.1), (50, 3e12, 0.6), (100, 6e12, 0.9))},
                   {**_row("compute", 2e13, 2.0), "curve": curve((0, 0, 0.1), (100, 6e12, 0.4))},
                   {**_row("data", 1e13, 2.0), "curve": curve((0, 0, 0.1), (10, 1e11, 0.99))}]  # not compute
    h = headline(with_curves)
    assert (h["sink_onset"], h["sink_onset_step"]) == (3e12, 50)
    assert headline(with_curves, sink_level=0.95)["sink_onset"] is None


def test_stored_study_falls_back_to_cpu(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m regvit_lib.emergence --profile smoke"):
        stored_study("smoke", tmp_path)
    (tmp_path / "cpu.json").write_text(json.dumps({"profile": "cpu", "command": "x", "rows": []}))
    doc, path = stored_study("smoke", tmp_path)
    assert doc["profile"] == "cpu" and path.name == "cpu.json"


def test_a_stored_row_of_a_run_trained_here_is_rebuilt_from_it(tmp_path) -> None:
    """A chapter never shows two numbers for one run: the stored row of a run in this cache gives way to it."""
    cache = tmp_path / "cache"
    rows = run_study(get_profile("smoke"), root=cache, axes={"baseline", "tokens"})
    stored = [dict(rows[0], test_acc=-1.0),  # the same run trained on another machine: other numbers
              dict(rows[1], key="0" * 24, test_acc=-2.0)]  # a run of other code: not in this cache
    (tmp_path / "smoke.json").write_text(json.dumps({"profile": "smoke", "k": 4.0, "command": "c", "rows": stored}))
    doc, path = stored_study("smoke", tmp_path, root=cache)
    assert path == tmp_path / "smoke.json" and doc["replaced"] == [rows[0]["label"]]
    assert doc["rows"][0]["test_acc"] == rows[0]["test_acc"] and doc["rows"][0]["source"] == "this build"
    assert doc["rows"][1]["test_acc"] == -2.0 and doc["rows"][1]["source"] == "stored"


def test_studies_committed_from_other_machines_are_found_and_shown(tmp_path) -> None:
    """A GPU study committed beside the cpu one shows in the cpu book (chapter 4 reads it as stored)."""
    from regvit_lib.emergence import STUDY_DIR, stored_elsewhere, study_table

    cpu = json.loads((STUDY_DIR / "cpu.json").read_text())
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    gpu = {**cpu, "profile": "gpu", "command": "python -m regvit_lib.emergence --profile gpu", "commit": "abc"}
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    found = stored_elsewhere(tmp_path, "cpu")
    assert [(d["profile"], p.name) for d, p in found] == [("gpu", "gpu.json")]
    table = study_table(found[0][0]["rows"])
    assert len(table) == len(cpu["rows"]) and table["ratio_mean"].notna().all()
    assert headline_texts(headline(found[0][0]["rows"]), cpu["k"])["verdict"]
    assert [d["profile"] for d, _ in stored_elsewhere(tmp_path, "smoke")] == ["cpu", "gpu"]
    (tmp_path / "colab.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"colab.json is not a readable result file"):
        stored_elsewhere(tmp_path, "cpu")


def test_headline_says_where_tokens_sit_is_not_measured_on_photographs() -> None:
    h = {"best_share": 0.01, "best_ratio": 5.0, "share_on_background": float("nan"),
         "share_background_patches": float("nan"), "share_run": "r"}
    rows = json.loads((Path(__file__).parents[1] / "data" / "emergence" / "cpu.json").read_text())["rows"]
    h = {**headline(rows), **h, "top_on_background": float("nan"), "background_patches": float("nan")}
    texts = headline_texts(h)
    assert "no object labels" in texts["verdict"] and "no object labels" in texts["placement"]
