"""The scenes generator and the data sources: labels, determinism, splits, real-image loaders."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regvit_lib import ConfigError, ImageData, ScenesConfig, make_source, normalize, render_scenes
from regvit_lib.config import BACKGROUNDS, SHAPES
from regvit_lib.data import batch_indices
from regvit_lib.scenes import scene_stats
from regvit_lib.profiles import get_profile

CFG = ScenesConfig(img_size=48, object_texture=0.5, train_size=1_000, val_size=300, test_size=300)


def test_same_seed_and_index_same_scene_in_any_order() -> None:
    a = render_scenes(CFG, "train", [3, 7, 11])
    b = render_scenes(CFG, "train", [11, 3])
    c = render_scenes(CFG, "train", [3, 7, 11])
    for x, y in zip(a, c):
        assert torch.equal(x, y)
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[1]) and torch.equal(x[2], y[0])
    other = render_scenes(ScenesConfig(**{**CFG.__dict__, "seed": 1}), "train", [3])
    assert not torch.equal(other.image[0], a.image[0])


def _digests(split: str, n: int) -> set[str]:
    imgs = render_scenes(CFG, split, np.arange(n)).image
    return {hashlib.sha256(im.numpy().tobytes()).hexdigest() for im in imgs}


def test_splits_never_share_an_image() -> None:
    tr, va, te = (_digests(s, 300) for s in ("train", "val", "test"))
    assert len(tr) == len(va) == len(te) == 300  # no repeats inside a split either
    assert not (tr & va) and not (tr & te) and not (va & te)


def test_labels_masks_boxes_depth_agree() -> None:
    out = render_scenes(CFG, "val", np.arange(200))
    B, K = out.box_valid.shape
    assert out.image.shape == (B, 3, 48, 48) and out.image.min() >= 0 and out.image.max() <= 1
    objects = out.seg > 0
    # depth: background exactly 1, objects strictly nearer, and only where the mask says
    assert torch.equal(objects, out.depth < 1.0)
    assert out.depth[objects].min() >= 0.2 and out.depth[objects].max() <= 0.8
    # count task: the label is the number of objects - 1
    assert torch.equal(out.box_valid.sum(1), out.label + 1)
    covered = torch.zeros_like(objects)
    sizes, depths = [], []
    for b in range(B):
        for k in torch.nonzero(out.box_valid[b])[:, 0].tolist():
            x0, y0, x1, y1 = out.boxes[b, k].long().tolist()
            inside = out.seg[b, y0:y1, x0:x1] == out.box_label[b, k] + 1
            # the box is tight: the object touches all four sides
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[b, y0:y1, x0:x1] |= inside
            d = out.depth[b, y0:y1, x0:x1][inside]
            assert torch.all(d == d[0])  # one depth per object
            if out.box_label[b, k] == 0:  # circles: size against depth
                sizes.append(float(inside.sum()))
                depths.append(float(d[0]))
        assert not out.box_valid[b, out.label[b] + 1 :].any()
    assert torch.equal(covered, objects)  # every object pixel lies in its object's box
    # perspective: nearer circles are drawn larger
    assert np.corrcoef(sizes, depths)[0, 1] < -0.8


def test_majority_task_label_is_the_strict_majority() -> None:
    cfg = ScenesConfig(img_size=40, task="majority", shapes=("circle", "square", "ring"), max_per_shape=4)
    out = render_scenes(cfg, "train", np.arange(300))
    assert cfg.num_classes == 3 and cfg.max_objects == 4 + 2 * 3
    for b in range(300):
        counts = torch.bincount(out.box_label[b][out.box_valid[b]], minlength=3)
        c = int(out.label[b])
        assert counts[c] >= 2 and all(counts[c] > counts[j] for j in range(3) if j != c)
    assert set(out.label.tolist()) == {0, 1, 2}


def test_every_shape_and_background_renders() -> None:
    for bg in BACKGROUNDS:
        cfg = ScenesConfig(img_size=32, shapes=SHAPES, backgrounds=(bg,), max_per_shape=2)
        out = render_scenes(cfg, "test", np.arange(64))
        assert out.image.isfinite().all()
        assert set(out.box_label[out.box_valid].tolist()) == set(range(len(SHAPES)))
        # per-image spread of the background colour: none for flat, some for every other kind
        spread = torch.stack([out.image[b][:, out.seg[b] == 0].std(1).mean() for b in range(64)])
        if bg == "flat":
            assert spread.max() < 1e-6
        else:
            assert spread.median() > 0.01


def test_bad_values_are_named() -> None:
    with pytest.raises(ConfigError, match="shapes must be distinct values"):
        ScenesConfig(shapes=("circle", "hexagon"))
    with pytest.raises(ConfigError, match="object_size"):
        ScenesConfig(object_size=(0.5, 1.5))
    with pytest.raises(ConfigError, match="img_size=12 leaves"):
        ScenesConfig(img_size=12)
    with pytest.raises(ConfigError, match="split must be one of"):
        render_scenes(CFG, "holdout", [0])
    with pytest.raises(IndexError, match="scene index 300 is outside the 'val' split of size 300"):
        render_scenes(CFG, "val", [0, 300])
    with pytest.raises(ConfigError, match="task must be one of"):
        ScenesConfig(task="colour")


def test_batch_indices_are_seeded_epochs() -> None:
    n, bs = 50, 16
    first = np.concatenate([batch_indices(n, bs, seed=3, step=s) for s in range(4)])  # 64 > one epoch
    assert sorted(first[:n].tolist()) == list(range(n))  # the first epoch is a permutation
    assert np.array_equal(first, np.concatenate([batch_indices(n, bs, 3, s) for s in range(4)]))
    assert not np.array_equal(first[:n], np.concatenate([batch_indices(n, bs, 4, s) for s in range(4)])[:n])


def test_scenes_source_and_normalize() -> None:
    src = make_source(CFG)
    x, y = src.batch("train", np.arange(5))
    assert x.shape == (5, 3, 48, 48) and y.dtype == torch.int64 and src.num_classes == CFG.max_objects
    z = normalize(torch.full((1, 3, 2, 2), 0.485))
    assert torch.allclose(z[0, 0], torch.zeros(2, 2), atol=1e-6)


def _write_folder(root, split: str, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        d = root / split / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(colour) + rng.integers(-20, 20, (20, 30, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")


def test_image_folder_loader_offline(tmp_path) -> None:
    _write_folder(tmp_path, "train", 3)
    _write_folder(tmp_path, "val", 2)
    src = make_source(ImageData(name="folder", root=str(tmp_path), img_size=16))
    assert src.num_classes == 2 and src.split_size("train") == 6 and src.split_size("test") == 4
    x, y = src.batch("train", np.array([0, 5]))
    assert x.shape == (2, 3, 16, 16) and y.tolist() == [0, 1]
    assert x[0, 0].mean() > 0.8 and x[1, 2].mean() > 0.8  # red, then blue: resized, in [0, 1]
    with pytest.raises(IndexError, match="image index 6 is outside the 'train' split of size 6"):
        src.batch("train", np.array([6]))


def test_missing_data_sets_say_where_and_how(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"image folder .*nowhere/train does not exist: an image folder "
                                                r"holds .*nowhere/train/<class>/<image>"):
        make_source(ImageData(name="folder", root=str(tmp_path / "nowhere"))).split_size("train")
    with pytest.raises(FileNotFoundError, match=rf"cifar10 is not in {tmp_path}.*fetch it on a machine with a "
                                                rf"network: python -m regvit_lib.data fetch cifar10 --root {tmp_path}"):
        make_source(ImageData(name="cifar10", root=str(tmp_path))).split_size("train")
    with pytest.raises(ConfigError, match="name must be one of"):
        ImageData(name="imagenet")


def test_data_card_is_written_from_measurements(tmp_path) -> None:
    from regvit_lib.datacard import write_card

    stats = write_card(tmp_path, n=200)
    card = (tmp_path / "README.md").read_text()
    assert (tmp_path / "grid.png").stat().st_size > 10_000 and (tmp_path / "labels.png").exists()
    cpu = stats["cpu"]
    assert f"{100 * cpu['object_pixels']:.1f} %" in card and f"{100 * cpu['background_patches']:.1f} %" in card
    assert 0.0 < cpu["object_pixels"] < 0.5 < cpu["background_patches"]
    assert cpu["per_background"]["flat"]["background_spread"] == 0.0
    # the committed card is the one the code writes (same measured numbers)
    committed = json.loads((Path(__file__).parents[1] / "data" / "scenes" / "stats.json").read_text())
    assert committed["cpu"]["object_pixels"] == pytest.approx(scene_stats(get_profile("cpu").data, 4)["object_pixels"])


def test_fractals_are_deterministic_class_consistent_and_mostly_black() -> None:
    from regvit_lib.data import FractalConfig, render_fractals

    cfg = FractalConfig(img_size=32, num_classes=5, train_size=500, val_size=200, test_size=200)
    x, y = render_fractals(cfg, "train", np.arange(200))
    x2, y2 = render_fractals(cfg, "train", np.arange(200))
    assert torch.equal(x, x2) and torch.equal(y, y2) and set(y.tolist()) == set(range(5))
    assert x.shape == (200, 3, 32, 32) and 0.8 < float((x.sum(1) == 0).float().mean()) < 0.99
    # images of one class look alike (same IFS, small jitter) and unlike other classes
    flat = (x.sum(1) > 0).float().flatten(1)
    flat = flat / flat.norm(dim=1, keepdim=True)
    sim = flat @ flat.T
    same = (y[:, None] == y[None, :]) & ~torch.eye(200, dtype=torch.bool)
    assert sim[same].mean() > 2 * sim[y[:, None] != y[None, :]].mean()
    tr = {hashlib.sha256(im.numpy().tobytes()).hexdigest() for im in x}
    va = {hashlib.sha256(im.numpy().tobytes()).hexdigest() for im in render_fractals(cfg, "val", np.arange(200))[0]}
    assert not tr & va
    with pytest.raises(ConfigError, match="jitter must be in"):
        FractalConfig(jitter=0.7)
    with pytest.raises(IndexError, match="fractal index 200 is outside the 'val' split"):
        render_fractals(cfg, "val", [200])
    src = make_source(cfg)
    assert src.num_classes == 5 and src.batch("test", np.arange(3))[0].shape == (3, 3, 32, 32)


def test_the_fetch_command_downloads_through_torchvision(tmp_path, monkeypatch, capsys) -> None:
    from torchvision import datasets

    from regvit_lib import data

    calls = []

    class FakeCIFAR10(list):  # what torchvision would give, without the network
        classes = [str(i) for i in range(10)]

        def __init__(self, root, train, download, transform):
            calls.append((root, train, download))
            super().__init__([(torch.zeros(3, 32, 32), 0)] * (1_500 if train else 100))

    monkeypatch.setattr(datasets, "CIFAR10", FakeCIFAR10)
    data.main(["fetch", "cifar10", "--root", str(tmp_path)])
    assert calls and all(root == str(tmp_path) and download for root, _, download in calls)
    assert capsys.readouterr().out.strip() == f"cifar10: 500 training images in {tmp_path}"  # 1,500 less val_size
    with pytest.raises(ConfigError, match="cannot fetch 'folder'"):
        data.fetch("folder", tmp_path)
