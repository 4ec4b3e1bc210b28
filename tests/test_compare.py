"""Chapter 5's comparison (regvit_lib.compare): bad input refused before compute, the real path end to end."""

import json
import math

import pytest
import torch

from regvit_lib import compare
from regvit_lib.analysis import Features
from regvit_lib.config import ConfigError, ModelConfig
from regvit_lib.profiles import get_profile

SMOKE = get_profile("smoke")


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_every_method_is_a_valid_run_of_every_profile(profile):
    p = get_profile(profile)
    runs = compare.comparison_runs(p)
    assert len(runs) == len(compare.METHODS) * p.seeds
    assert runs[0] == p.run(seed=p.seed)  # the ViT rows are the book's own runs: trained once
    assert runs[p.seeds] == p.run(seed=p.seed, num_registers=4)


def test_bad_input_is_refused_naming_the_value():
    with pytest.raises(ValueError, match="unknown method\\(s\\) \\['vit-huge'\\]"):
        compare.check_methods(["vit", "vit-huge"])
    with pytest.raises(ValueError, match="seeds must be an int >= 2"):
        compare.comparison_runs(SMOKE, seeds=1)
    with pytest.raises(SystemExit):
        compare.main(["--profile", "smoke", "--methods", "nope", "--out", "/nonexistent"])


def test_a_setting_the_grid_does_not_fit_is_refused():
    tiny = get_profile("smoke")
    method = compare.Method("bad", "test", lambda c: {"class_token": False, "global_pool": "avg",
                                                      "variant": compare.HMHSA(window=3)})
    compare.METHODS["bad-hmhsa"] = method
    try:
        with pytest.raises(ConfigError, match="window=3 does not divide the 4x4 patch grid"):
            compare.method_run(tiny, "bad-hmhsa", 0)
    finally:
        del compare.METHODS["bad-hmhsa"]


def _features(received: torch.Tensor, cfg: ModelConfig) -> Features:
    B, L, H, T = received.shape
    z = torch.zeros(B, cfg.num_patches, 4)
    return Features(cfg, torch.zeros(B, 3, cfg.img_size, cfg.img_size), z, (), z[:, None], torch.ones(B, L, T),
                    torch.zeros(B, T, 4), None, received)


def test_sink_names_its_holder_including_the_nothing_slot():
    cfg = ModelConfig(img_size=8, patch_size=4, embed_dim=8, num_heads=2, num_registers=1)  # T = 1 + 1 + 4
    rec = torch.full((2, 1, 2, 6), 0.1)
    rec[:, 0, 0, 1] = 0.5  # head 0: the register takes half
    mass, holder, block = compare._sink(_features(rec, cfg))
    assert holder == "register" and block == 0 and mass == pytest.approx(0.5)
    rec = torch.full((2, 1, 2, 6), 0.05)  # rows sum to 0.3: 0.7 left for "nothing"
    assert compare._sink(_features(rec, cfg))[:2] == (pytest.approx(0.7), "bias")
    rec = torch.full((2, 1, 2, 6), 1 / 6)
    assert compare._sink(_features(rec, cfg))[1] == "none"


def test_the_real_path_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("REGVIT_CACHE", str(tmp_path / "cache"))
    methods = ["vit", "tokenlearner", "avit", "mamba-r", "off-by-one", "victor"]
    doc = compare.run_comparison(SMOKE, methods, seeds=2, images=32, workers=1, progress=False)
    rows = doc["rows"]
    assert [r["method"] for r in rows] == [m for m in methods for _ in range(2)]
    by = {r["method"]: r for r in rows}
    assert by["avit"]["gflops"] <= compare.count_flops(compare.method_run(SMOKE, "avit", 0).model) / 1e9
    assert 0 < by["avit"]["expected_depth"] <= SMOKE.model.depth
    assert by["mamba-r"]["sink_on"] == "n/a" and math.isnan(by["mamba-r"]["sink_mass"])
    assert by["tokenlearner"]["blocks_with_patches"] == SMOKE.model.depth // 2
    assert by["victor"]["lost_on"].startswith("keys of block 0")
    assert all(0 <= r["corloc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in rows)
    assert set(doc["speed"]) == set(methods) and all(s["img_s"] > 0 for s in doc["speed"].values())
    table = compare.method_table(doc)
    assert table["method"].tolist()[: len(methods)] == [compare.METHODS[m].label for m in methods]
    verdicts = compare.against_vit(doc)
    assert len(verdicts) == len(methods) - 1 and set(verdicts.iloc[:, 1:].stack()) <= {
        "better", "worse", "within spread", "n/a"}
    # measured again: every row comes from the cache
    again = compare.run_comparison(SMOKE, methods[:2], seeds=2, images=32, workers=1, progress=False)
    assert [r["key"] for r in again["rows"]] == [r["key"] for r in rows[:4]]
    path = tmp_path / "out" / "smoke.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    assert compare.load_or_run("smoke", folder=path.parent)["source"] == str(path)
    path.write_text("{ not json")
    with pytest.raises(ValueError, match="smoke.json"):
        compare.load_or_run("smoke", folder=path.parent)
