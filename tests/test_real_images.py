"""Real images as a data option of the profiles, the chapters and the study, offline: an image folder
written by the test stands in for CIFAR-10 / STL-10 / Imagenette (class labels only, so every probe
that needs masks, segmentation, depth or boxes says "no labels")."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from regvit_lib import ablations, claims, compare, emergence, measure
from regvit_lib.config import ConfigError, ImageData, parse_data, same_data
from regvit_lib.data import labelled
from regvit_lib.params import chapter_params
from regvit_lib.prepare import main as prepare_main
from regvit_lib.profiles import get_profile

SMOKE = get_profile("smoke")


def _write_folder(root, classes: int = 3, train: int = 24, val: int = 12) -> None:
    """``root/{train,val}/<class>/<image>.png``: each class its own colour and stripe direction, so the
    classes can be learnt, with noise so no two images are equal."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 60, (40, 48, 3))
                arr[..., c % 3] += 150
                if c % 2:
                    arr[::4] = 255
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    _write_folder(root)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    old = os.environ.get("REGVIT_CACHE")
    os.environ["REGVIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["REGVIT_CACHE"]
    else:
        os.environ["REGVIT_CACHE"] = old


def test_a_data_option_is_checked_at_the_door(folder, tmp_path) -> None:
    assert parse_data("scenes", SMOKE.scenes) == SMOKE.data
    assert parse_data("fractals", SMOKE.scenes).kind == "fractals"
    for bad in ("imagenet:/x", "cifar10", "cifar10:", "photos"):
        with pytest.raises(ConfigError, match=f"data={bad!r} is not one of"):
            parse_data(bad, SMOKE.scenes)
    with pytest.raises(ConfigError, match=r"parameter data=3 \(int\)"):
        chapter_params(profile="smoke", data=3)
    # a missing set stops before any compute, naming the folder and the command that fetches it
    with pytest.raises(FileNotFoundError, match=rf"cifar10 is not in {tmp_path}.*python -m regvit_lib.data fetch "
                                                rf"cifar10 --root {tmp_path}"):
        chapter_params(profile="smoke", data=f"cifar10:{tmp_path}")
    with pytest.raises(SystemExit):
        prepare_main(["--profile", "smoke", "--data", f"folder:{tmp_path / 'nowhere'}"])


def test_a_profile_on_real_images_is_its_own_profile(folder, monkeypatch) -> None:
    P = get_profile("smoke", f"folder:{folder}")
    assert P.name == "smoke-folder" and P.base == "smoke" and P.data_spec == f"folder:{folder}"
    assert isinstance(P.data, ImageData) and P.data.img_size == SMOKE.data.img_size
    assert P.model.num_classes == 3 and P.train == SMOKE.train and P.run().data == P.data
    assert P.with_data("scenes") == SMOKE and P.scenes == SMOKE.data
    monkeypatch.setenv("REGVIT_DATA", f"folder:{folder}")
    assert chapter_params(profile="smoke") == P  # the default comes from $REGVIT_DATA
    b = labelled(P.data, "val", np.arange(5))
    assert b.image.shape == (5, 3, 32, 32) and b.label.tolist() == [0] * 5
    assert b.foreground is None and b.seg is None and b.boxes is None and b.seg_classes == 0
    # the scenes carry every label; the fractals their drawn pixels
    s = labelled(SMOKE.data, "val", np.arange(3))
    assert s.seg is not None and s.foreground is not None and s.seg_classes == 1 + len(SMOKE.data.shapes)
    f = labelled(parse_data("fractals", SMOKE.scenes), "val", np.arange(3))
    assert f.seg is None and f.foreground is not None and 0 < float(f.foreground.float().mean()) < 0.5


def test_chapter_measurements_on_real_images_say_no_labels(folder, cache) -> None:
    P = get_profile("smoke", f"folder:{folder}")
    subjects = [measure.load_subject(P, registers=r, images=64) for r in (0, 4)]
    s0 = subjects[0]
    assert len(s0.batch) == 36 and s0.run is not None and s0.run.metrics["test_acc"] >= 0  # all 36 val images
    r = measure.norm_report(s0)
    assert 0 <= r["share"] <= 1 and r["ratio_max"] >= r["ratio_mean"] >= 1 and -1 <= r["top_similarity"] <= 1
    assert math.isnan(r["top_on_background"]) and math.isnan(r["background_patches"])
    assert not measure.sinks(s0).empty
    dense = measure.dense_table(subjects)
    assert dense["classification"].between(0, 1).all()
    assert dense["segmentation_miou"].isna().all() and dense["depth_rmse"].isna().all()
    lost = measure.object_discovery(subjects)
    assert lost["corloc"].isna().all()
    # the claims that read those labels say so; the others keep their rules
    reports = {s.name: [measure.norm_report(s)] for s in subjects}
    last = {s.name: [measure.sinks(s).iloc[-1].to_dict()] for s in subjects}
    m = claims.register_claims(reports, last, dense.to_dict("records"), lost.to_dict("records"))
    for claim in ("C7", "C8"):
        v, rule = claims.verdict(claim, m[claim])
        assert v == claims.NO_LABELS and "no labels for it" in rule
    assert claims.verdict("C6", m["C6"])[0] != claims.NO_LABELS
    c3 = {"share": [0.05], "top_on_background": [math.nan], "background_patches": [math.nan],
          "top_similarity": [0.5], "all_similarity": [0.4]}
    assert claims.verdict("C3", c3) == (claims.NO_LABELS, "not measured on these images, which have no labels "
                                                          "for it: top_on_background, background_patches")
    # chapter 4's positive control and resolution study read the photographs, resized
    pc = ablations.positive_control_report(s0.run, P.data, 400, P.model.depth // 2)
    assert pc["found_all"] and 0 <= pc["natural_share"] <= 1
    res = ablations.resolution_study(P, (16, 64), images=16)
    assert set(res["img_size"]) == {16, 64} and res["accuracy"].between(0, 1).all()


def test_the_study_runs_on_real_images(folder, cache, tmp_path) -> None:
    P = get_profile("smoke", f"folder:{folder}")
    points = emergence.study_points(P)
    axes = {a for a, _, _ in points}
    assert "data" not in axes and {"compute", "tokens", "objective", "registers"} <= axes  # the scenes' axis only
    assert all(run.data == P.data for _, _, run in points)
    with pytest.raises(FileNotFoundError, match=rf"no stored study of 'smoke-folder'.*--profile smoke "
                                                rf"--data folder:DIR"):
        emergence.stored_study(P.name, tmp_path)
    run = measure.load_subject(P, images=16).run
    assert run is not None
    where = emergence.placement(run, 1)
    assert math.isnan(where["top_on_background"]) and math.isfinite(where["top_similarity"])


def test_the_register_grid_on_real_images_says_no_labels_where_it_has_none(folder, cache) -> None:
    P = get_profile("smoke", f"folder:{folder}")
    grid = ablations.register_grid(P, images=32)
    assert set(grid["registers"]) == set(P.register_counts) and grid["classification"].between(0, 1).all()
    texts = ablations.grid_texts(ablations.grid_summary(grid), {"device": "cpu", "slowdown_pct": {"4": 1.0}})
    assert texts["abl_best_miou"] == texts["abl_best_rmse"] == "no count (these images have no labels for it)"
    assert texts["abl_best_acc"] in {f"{c} register{'' if c == 1 else 's'}" for c in P.register_counts}
    entries = claims.ablation_claims(grid.to_dict("records"))
    assert claims.verdict("A2", entries["A2"])[0] == claims.NO_LABELS
    assert claims.verdict("A3", entries["A3"])[0] != claims.NO_LABELS


def test_a_folder_is_one_place_whatever_the_working_folder(folder, monkeypatch) -> None:
    """A chapter runs in chapters/, a command in the checkout: a relative folder is made absolute at
    the door, so both find the images and share one cache key; a named set is the same set anywhere,
    a folder only at the same place."""
    monkeypatch.chdir(folder.parent)
    rel = parse_data(f"folder:{folder.name}", SMOKE.scenes)
    assert isinstance(rel, ImageData) and rel.root == str(folder.resolve())
    assert rel == parse_data(f"folder:{folder}", SMOKE.scenes)
    assert same_data(f"folder:{folder.name}", f"folder:{folder}")
    assert not same_data(f"folder:{folder}", f"folder:{folder / 'train'}")
    assert same_data("cifar10:/data", "cifar10:/content/data") and not same_data("cifar10:/d", "stl10:/d")
    assert same_data("scenes", "scenes") and not same_data("scenes", "fractals")
    # a real set gives up at most 1,000 held-out images: STL-10's 5,000 keep 4,000 for training at the gpu profile
    assert parse_data("stl10:/d", get_profile("gpu").scenes).val_size == 1_000
    assert parse_data("stl10:/d", SMOKE.scenes).val_size == SMOKE.scenes.val_size


def test_a_study_or_comparison_of_another_folder_is_not_shown_as_this_ones(folder, cache, tmp_path,
                                                                           monkeypatch) -> None:
    """Every folder's profile is <profile>-folder: a file committed from another folder is shown among
    the other machines' studies, never as the reader's own; the reader's own is run instead."""
    P = get_profile("smoke", f"folder:{folder}")
    other = {"profile": P.name, "data": f"folder:{tmp_path / 'elsewhere'}", "k": 4.0, "command": "x", "rows": []}
    (tmp_path / f"{P.name}.json").write_text(json.dumps(other))
    with pytest.raises(FileNotFoundError, match=rf"no stored study of 'smoke-folder' on folder:{folder}"):
        emergence.stored_study(P.name, tmp_path, data=P.data_spec)
    assert emergence.stored_study(P.name, tmp_path)[0]["data"] == other["data"]  # any data: the file as stored
    ran: list[str] = []
    monkeypatch.setattr(emergence, "run_study", lambda prof, root=None, **kw: ran.append(prof.name) or [{"label": "r"}])
    doc, source = emergence.study_for(P, folder=tmp_path)
    assert ran == [P.name] and doc["rows"] == [{"label": "r"}] and doc["data"] == P.data_spec
    assert source.startswith("this build")
    (tmp_path / f"{P.name}.json").write_text(json.dumps({**other, "data": P.data_spec}))
    doc, source = emergence.study_for(P, folder=tmp_path)  # its own folder's file: shown as stored
    assert ran == [P.name] and source.startswith(f"{P.name}.json") and doc["replaced"] == []
    with pytest.raises(FileNotFoundError, match=r"--profile smoke --data fractals$"):
        emergence.stored_study("smoke-fractals", tmp_path)
    # the comparison: the same rule, and its measurements on the photographs
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / f"{P.name}.json").write_text(json.dumps({**other, "code": None}))
    doc = compare.load_or_run(P, folder=tmp_path / "cmp", methods=["vit", "registers"], seeds=2, images=16,
                              workers=1)
    assert doc["source"].startswith("this build") and doc["data"] == P.data_spec
    rows = {r["method"]: r for r in doc["rows"]}
    assert set(rows) == {"vit", "registers"} and all(0 <= r["test_acc"] <= 1 for r in rows.values())
    assert all(math.isnan(r["corloc"]) and math.isnan(r["segmentation_miou"]) and r["ratio_mean"] >= 1
               for r in rows.values())  # no boxes, no segmentation: NaN, the norms measured


def test_make_thesis_and_the_build_log_name_the_build_with_its_data(folder, monkeypatch) -> None:
    from regvit_lib.profiles import default_build_name

    monkeypatch.setenv("REGVIT_PROFILE", "smoke")
    assert default_build_name() == "smoke"
    monkeypatch.setenv("REGVIT_DATA", f"folder:{folder}")
    assert default_build_name() == get_profile("smoke", f"folder:{folder}").name == "smoke-folder"
    monkeypatch.setenv("REGVIT_DATA", "fractals")
    assert default_build_name() == "smoke-fractals"
    monkeypatch.setenv("REGVIT_DATA", "photos")
    with pytest.raises(ConfigError, match=r"data='photos' is not one of"):
        default_build_name()
