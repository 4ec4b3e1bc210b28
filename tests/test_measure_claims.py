"""Chapter measurements (measure.py) at smoke scale, and the claims file: rules, merging, corrupt files."""

import json

import pytest
import torch

from regvit_lib import claims, measure
from regvit_lib.analysis import detect_outliers, ratio_per_layer
from regvit_lib.profiles import get_profile

SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    import os

    old = os.environ.get("REGVIT_CACHE")
    os.environ["REGVIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield [measure.load_subject(SMOKE, registers=r, images=64) for r in (0, 2)]
    finally:
        if old is None:
            del os.environ["REGVIT_CACHE"]
        else:
            os.environ["REGVIT_CACHE"] = old


def test_subject_holds_one_pass_over_labelled_scenes(subjects) -> None:
    s0, s2 = subjects
    assert s0.feats.blocks.shape[:2] == (64, SMOKE.model.depth) and s0.batch.seg is not None and s0.batch.seg.shape[0] == 64
    assert s2.model.cfg.num_registers == 2 and s2.run is not None and s2.run.cached is False
    assert 0 <= s0.layer < SMOKE.model.depth and s0.scale == "smoke"
    r = measure.norm_report(s0)
    assert 0 <= r["share"] <= 1 and r["ratio_max"] >= r["ratio_mean"] >= 1
    assert 0 < r["background_patches"] < 1
    assert measure.share_per_layer(s0).shape == (SMOKE.model.depth,)
    assert ratio_per_layer(s0.feats).shape == (64, SMOKE.model.depth)
    assert set(measure.layer_norms(s2)) == {"cls", "reg", "patch"}
    assert list(measure.register_maps(s2)) == ["[CLS]", "register 0", "register 1", "PCA of patches"]
    t = measure.sinks(s2)
    assert len(t) == SMOKE.model.depth and set(t["sink_on"]) <= {"cls", "reg", "patch"}
    assert t["sink_mass"].between(0, 1).all()


def test_tables_have_a_row_per_model(subjects) -> None:
    dense = measure.dense_table(subjects)
    assert list(dense["model"]) == [s.name for s in subjects] and list(dense["seed"]) == [SMOKE.seed] * 2
    assert dense["segmentation_miou"].between(0, 1).all() and (dense["depth_rmse"] > 0).all()
    assert measure.object_discovery(subjects)["corloc"].between(0, 1).all()


def test_planted_control_passes_c1_and_c4_rules(subjects) -> None:
    """What the claims pipeline says when outliers are there: the positive control."""
    s0 = subjects[0]
    planted = measure.planted(s0)
    assert planted is not None
    found = detect_outliers(planted, s0.layer)
    assert found.share == pytest.approx(2 / SMOKE.model.num_patches, abs=0.02)
    assert claims.verdict("C1", {"share": found.share})[0] == "reproduced"
    row = measure.local_and_global(s0, control=True)
    c4 = {"share": found.share, **{key: row[key] for key in claims.NEEDS["C4"][1:]}}
    assert row["pixel_l2_outlier"] > row["pixel_l2_normal"]
    assert claims.verdict("C4", c4)[0] in ("reproduced", "partly")


def test_size_ladder_divides_heads() -> None:
    for name in ("smoke", "cpu", "gpu"):
        p = get_profile(name)
        widths = measure.size_ladder(p)
        assert p.model.embed_dim in widths and all(w % p.model.num_heads == 0 for w in widths)


def test_pretrained_without_a_register_twin_is_refused_before_any_download() -> None:
    with pytest.raises(ValueError, match="has no twin with registers"):
        measure.load_subject(SMOKE, registers=4, pretrained="deit3-b")
    with pytest.raises(ValueError, match="images must be an int >= 4"):
        measure.load_subject(SMOKE, images=2)


@pytest.mark.parametrize("claim,measured,expected", [
    ("C1", {"share": 0.0}, "not at this scale"),
    ("C1", {"share": 0.001}, "partly"),
    ("C1", {"share": 0.02}, "reproduced"),
    ("C3", {"share": 0.0}, "not at this scale"),
    ("C3", {"share": 0.02, "top_on_background": 0.9, "background_patches": 0.6, "top_similarity": 0.8,
            "all_similarity": 0.5}, "reproduced"),
    ("C3", {"share": 0.02, "top_on_background": 0.1, "background_patches": 0.6, "top_similarity": 0.8,
            "all_similarity": 0.5}, "partly"),
    ("C5", {"share": 0.02, "class_normal": 0.3, "class_outlier": 0.5}, "reproduced"),
    ("C6", {"share_without": 0.0, "share_with": 0.0}, "not at this scale"),
    ("C6", {"share_without": 0.02, "share_with": 0.001}, "reproduced"),
    ("C6", {"share_without": 0.02, "share_with": 0.015}, "partly"),
    ("C7", {"without": {"classification": 0.5, "segmentation_miou": 0.3, "depth_rmse": 0.2},
            "with": {"classification": 0.5, "segmentation_miou": 0.35, "depth_rmse": 0.15}}, "reproduced"),
    ("C7", {"without": {"classification": 0.5, "segmentation_miou": 0.3, "depth_rmse": 0.2},
            "with": {"classification": 0.4, "segmentation_miou": 0.35, "depth_rmse": 0.15}}, "not at this scale"),
    ("C8", {"without": 0.1, "with": 0.3}, "reproduced"),
    ("C8", {"without": 0.1, "with": 0.105}, "not at this scale"),
])
def test_verdict_rules(claim, measured, expected) -> None:
    v, rule = claims.verdict(claim, measured)
    assert v == expected and rule


def test_record_merges_writes_json_and_refuses_a_corrupt_file(tmp_path) -> None:
    claims.record("cpu", "C1", {"share": float("nan"), "ratio": torch.tensor(1.5)}, "cpu", "m", "ch", root=tmp_path)
    claims.record("cpu", "C8", {"without": 0.1, "with": 0.3}, "cpu", "m", "ch", root=tmp_path)
    path = claims.claims_path("cpu", tmp_path)
    doc = json.loads(path.read_text())
    assert list(doc) == ["C1", "C8"] and doc["C1"]["measured"] == {"share": None, "ratio": 1.5}
    assert doc["C8"]["verdict"] == "reproduced" and doc["C8"]["paper"] == claims.PAPER["C8"]
    assert list(claims.table(doc)["verdict"]) == ["not at this scale", "reproduced"]
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"corrupt claims file {path}"):
        claims.record("cpu", "C1", {"share": 0.0}, "cpu", "m", "ch", root=tmp_path)
    assert path.read_text() == "{not json"  # left for inspection, not overwritten
    with pytest.raises(KeyError, match="unknown claim 'C9'"):
        claims.verdict("C9", {})


def test_a_rule_names_the_measured_keys_it_misses() -> None:
    with pytest.raises(KeyError, match=r"claim C4 needs the measured keys \['pixel_l2_outlier'\]"):
        claims.verdict("C4", {"share": 0.02, "position_top1_normal": 0.4, "position_top1_outlier": 0.2,
                              "pixel_l2_normal": 0.1})
    with pytest.raises(KeyError, match="claim C7 needs"):
        claims.verdict("C7", {"without": {}})


def test_builders_give_every_rule_its_keys(subjects) -> None:
    """The chapters' measured dictionaries come from claims' builders, with the keys each rule reads:
    every number a list over seeds (here one seed per model)."""
    s0, s2 = subjects
    report, probes = measure.norm_report(s0), measure.local_and_global(s0)
    built = claims.high_norm_claims([report, report], [probes, probes], s0.model.cfg.depth,
                                    [{"share": 0.0, "params": 10}], 4.0)
    assert built["C1"]["share"] == [report["share"]] * 2
    reports = {s.name: [measure.norm_report(s)] for s in subjects}
    sinks = {s.name: [measure.sinks(s).iloc[-1]] for s in subjects}
    dense = measure.dense_table(subjects).to_dict("records")
    lost = measure.object_discovery(subjects).to_dict("records")
    built |= claims.register_claims(reports, sinks, dense, lost)
    grid = [{"registers": r, "seed": s, "share": 0.0, "ratio_mean": 1.5, "sink_mass": 0.5, "segmentation_miou": 0.2,
             "depth_rmse": 0.2, "classification": (30 + r + s) / 100, "test_acc": 0.3} for r in (0, 1, 4) for s in (0, 1)]
    built |= claims.ablation_claims(grid)
    rows = [{"seed": seed, "img_size": size, "antialias": aa, "share": 0.0, "stripe": 0.1, "accuracy": 0.5}
            for seed in (0, 1) for size in (16, 64) for aa in (True, False)]
    built |= claims.resolution_claim(rows, trained_at=32)
    assert sorted(built) == sorted(claims.CLAIMS)
    for claim, m in built.items():
        assert set(claims.NEEDS[claim]) <= set(m), claim
        assert claims.verdict(claim, m)[0] in ("reproduced", "partly", "not at this scale")
    assert built["C7"]["with"] == {key: [dense[1][key]] for key in ("classification", "segmentation_miou", "depth_rmse")}
    assert built["A3"]["acc_by_count"] == {"0": [0.3, 0.31], "1": [0.31, 0.32], "4": [0.34, 0.35]}
    assert built["A4"]["img_size"] == 16 and built["A4"]["share_aa"] == [0.0, 0.0]


def test_a_difference_counts_only_beyond_the_seeds_spread() -> None:
    assert claims.spread([0.1, 0.3]) == pytest.approx((0.2, 0.1414, 2), abs=1e-4)
    assert claims.spread(0.5) == (0.5, 0.0, 1) and claims.spread([float("nan"), 1.0])[2] == 1
    # CorLoc up by 0.1 on average: reproduced with tight seeds, not with seeds that scatter more than that
    assert claims.verdict("C8", {"without": [0.10, 0.11, 0.12], "with": [0.20, 0.21, 0.22]})[0] == "reproduced"
    assert claims.verdict("C8", {"without": [0.0, 0.1, 0.2], "with": [0.1, 0.2, 0.3]})[0] == "not at this scale"
    # one seed with a stray outlier token and two without: not distinguishable from none
    assert claims.verdict("C1", {"share": [0.0, 0.0, 0.001]})[0] == "not at this scale"
    assert claims.verdict("C1", {"share": [0.02, 0.021, 0.019]})[0] == "reproduced"
    # A3: a rise within the spread is no rise
    noisy = {"acc_by_count": {"0": [0.3, 0.5], "1": [0.35, 0.45], "4": [0.32, 0.52]}}
    assert claims.verdict("A3", noisy)[0] == "not at this scale"
    text, seeds = claims.evidence("C8", {"without": [0.1, 0.2], "with": [0.3, 0.4]})
    assert seeds == 2 and text == "without 0.15 ± 0.07071; with 0.35 ± 0.07071"
    assert claims.pm([0.1, 0.3], ".2f", 100) == "20.00 ± 14.14" and claims.pm(0.25, ".2f") == "0.25"
    assert claims.per_seed([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]) == {"a": [1.0, 2.0]}


def test_record_states_each_verdict_with_its_seeds_and_spread(tmp_path) -> None:
    entry = claims.record("cpu", "C8", {"without": [0.1, 0.12, 0.11], "with": [0.3, 0.31, 0.32]}, "cpu", "m", "ch",
                          root=tmp_path)
    assert entry["seeds"] == 3 and "± " in entry["evidence"] and entry["verdict"] == "reproduced"
    row = claims.table(claims.load_claims("cpu", tmp_path)).iloc[0]
    assert row["seeds"] == 3 and row["evidence"] == entry["evidence"] and "spread" in row["rule"]


def test_chapter_4s_positive_control_is_measured_once(subjects, monkeypatch) -> None:
    from regvit_lib import ablations

    run = subjects[0].run
    report = ablations.positive_control_report(run, SMOKE.data, 32, 1)
    assert report["found_all"] is True and report["natural_share"] >= 0
    assert report["probes"]["planted"]["pixel_l2_outlier"] > report["probes"]["planted"]["pixel_l2_normal"]
    assert set(report["probes"]) == {"natural", "planted"}
    monkeypatch.setattr(ablations, "positive_control", lambda *a, **k: pytest.fail("computed again"))
    again = ablations.positive_control_report(run, SMOKE.data, 32, 1)
    assert json.dumps(again, sort_keys=True) == json.dumps(report, sort_keys=True)  # NaN-safe equality
    with pytest.raises(pytest.fail.Exception, match="computed again"):  # another block: another entry
        ablations.positive_control_report(run, SMOKE.data, 32, 0)
