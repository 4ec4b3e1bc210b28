"""The pretrained path, offline: a timm-format checkpoint written here, loaded by the real code."""

import pytest
import timm
import torch

from regvit_lib import ConfigError
from regvit_lib.analysis import collect, detect_outliers
from regvit_lib.data import photos
from regvit_lib.pretrained import PRETRAINED, load_pretrained, resolve, twin


def test_names_resolve_and_twins_pair_up() -> None:
    assert resolve("dinov2-g") == "vit_giant_patch14_dinov2.lvd142m"
    assert resolve("vit_giant_patch14_dinov2.lvd142m") == "vit_giant_patch14_dinov2.lvd142m"
    for size in "sblg":
        assert twin(f"dinov2-{size}") == PRETRAINED[f"dinov2-{size}-reg"]
        assert twin(f"dinov2-{size}-reg") == PRETRAINED[f"dinov2-{size}"]
    assert twin("deit3-b") is None
    with pytest.raises(ConfigError, match="unknown pretrained model 'dinov3-g'"):
        resolve("dinov3-g")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A DINOv2-S/14 with 4 registers, randomly initialised by timm at 56 px, saved as a state dict."""
    torch.manual_seed(0)
    tm = timm.create_model(PRETRAINED["dinov2-s-reg"], pretrained=False, img_size=56, num_classes=0).eval()
    with torch.no_grad():
        for p in tm.parameters():  # move away from the init, where small errors could hide
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "dinov2_s_reg4.pth"
    torch.save({"model": tm.state_dict()}, path)
    return tm, path


def test_checkpoint_loads_into_the_same_function(checkpoint) -> None:
    tm, path = checkpoint
    ours = load_pretrained("dinov2-s-reg", img_size=56, checkpoint=path)
    assert ours.cfg.num_registers == 4 and ours.cfg.patch_size == 14 and ours.cfg.embed_dim == 384
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x)["tokens"], tm.forward_features(x), atol=1e-4, rtol=1e-4)


def test_checkpoint_loads_at_another_resolution_and_the_toolkit_runs(checkpoint) -> None:
    _, path = checkpoint
    ours = load_pretrained("dinov2-s-reg", img_size=84, checkpoint=path)  # pos-embed 4x4 -> 6x6
    assert ours.pos_embed.shape == (1, 36, 384)
    feats = collect(ours, photos(84)[:2])
    assert feats.blocks.shape[:3] == (2, 12, 1 + 4 + 36) and torch.isfinite(feats.blocks).all()
    assert 0.0 <= detect_outliers(feats).share <= 1.0


def test_bad_inputs_are_named(checkpoint, tmp_path) -> None:
    _, path = checkpoint
    with pytest.raises(ConfigError, match="img_size=100 is not a positive multiple"):
        load_pretrained("dinov2-s-reg", img_size=100, checkpoint=path)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_pretrained("dinov2-s-reg", checkpoint=tmp_path / "missing.pth")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": object()}}, evil)  # a pickled object: weights_only refuses it
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_pretrained("dinov2-s-reg", img_size=56, checkpoint=evil)


def test_photos_are_real_colour_images() -> None:
    imgs = photos(64)
    assert imgs.shape == (4, 3, 64, 64) and imgs.dtype == torch.float32
    assert 0.0 <= float(imgs.min()) and float(imgs.max()) <= 1.0
    assert float(imgs.std()) > 0.1  # not blank
    with pytest.raises(ConfigError):
        photos(0)


# ---- fetching, identity, the lean forward pass, the cache and the chapters' pretrained path ----

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from regvit_lib import analysis, measure, pretrained
from regvit_lib.model import count_parameters
from regvit_lib.config import ConfigError as CfgError
from regvit_lib.profiles import PROFILES, PretrainedSet
from regvit_lib.summaries import received_attention

SMOKE = PROFILES["smoke"]


def write_weights(folder: Path, aliases, seed: int = 0) -> dict[str, Path]:
    """Hub-format files (``<timm name>.safetensors``, timm's default size, heads kept) of random
    models of the same architectures, nudged away from the init."""
    torch.manual_seed(seed)
    out = {}
    for alias in aliases:
        tm = timm.create_model(resolve(alias), pretrained=False)
        with torch.no_grad():
            for p in tm.parameters():
                p.add_(0.02 * torch.randn_like(p))
        out[alias] = folder / f"{resolve(alias)}.safetensors"
        save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, out[alias])
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    pset = SMOKE.pretrained
    write_weights(folder, dict.fromkeys((*pset.pair, *pset.others, *pset.sizes)))
    return folder


def test_weights_are_found_in_the_folder_or_refused_with_the_reason(weights, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(pretrained.WEIGHTS_ENV_VAR, str(weights))
    monkeypatch.setenv("REGVIT_CACHE", str(tmp_path / "cache"))
    path = pretrained.weights_file("dinov2-s")
    assert path == weights / "vit_small_patch14_dinov2.lvd142m.safetensors"
    assert pretrained.weights_id(path) == pretrained.weights_id(str(path)) and len(pretrained.weights_id(path)) == 64
    with pytest.raises(pretrained.WeightsUnavailable, match=r"no vit_large_patch14_dinov2.lvd142m.safetensors or"):
        pretrained.weights_file("dinov2-l")
    wider = replace(SMOKE, pretrained=replace(SMOKE.pretrained, sizes=("dinov2-s", "dinov2-b")))
    subjects, note = measure.pretrained_subjects(wider, True)  # the size sweep's weights are looked for too
    assert subjects == [] and "the weights of dinov2-s, deit3-s, dinov2-b could not be fetched (no vit_base" in note
    assert len(measure.pretrained_subjects(wider, True, pairs=True)[0]) == 2
    # no folder, no hub: a clear reason, quickly, and nothing downloaded
    monkeypatch.delenv(pretrained.WEIGHTS_ENV_VAR)
    monkeypatch.setattr(pretrained, "_hub_reachable", lambda: False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(pretrained.WeightsUnavailable, match="model hub cannot be reached to download timm/vit_large"):
        pretrained.weights_file("dinov2-l")
    subjects, note = measure.pretrained_subjects(SMOKE, True)
    assert subjects == [] and note.startswith("Skipped in this build: the weights of dinov2-s, deit3-s could not be")
    assert "make book" in note
    assert measure.pretrained_subjects(SMOKE, False)[1].startswith("Not run in this build")


def test_a_hub_file_loads_like_timm_loads_it(weights) -> None:
    path = weights / f"{resolve('deit3-s')}.safetensors"
    tm = timm.create_model(resolve("deit3-s"), pretrained=True, num_classes=0, img_size=112,
                           pretrained_cfg_overlay={"file": str(path)})  # timm's own loading of the file
    ours = load_pretrained("deit3-s", img_size=112, checkpoint=path)
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x)["tokens"], tm.eval().forward_features(x), atol=1e-4, rtol=1e-4)


def test_the_lean_pass_keeps_exactly_what_the_full_pass_has(checkpoint) -> None:
    _, path = checkpoint
    model = load_pretrained("dinov2-s-reg", img_size=56, checkpoint=path)
    images = photos(56).repeat(3, 1, 1, 1)
    full = collect(model, images, batch_size=4)
    chosen: list[torch.Tensor] = []
    lean = collect(model, images, attn="received", batch_size=4, layers=lambda n: chosen.append(n) or (5, -2))
    assert lean.layers == (5, 10) and lean.attn is None and chosen[0].shape == (4, 12, 1 + 4 + 16)
    torch.testing.assert_close(lean.norms, full.norms)
    torch.testing.assert_close(lean.blocks, full.blocks[:, [5, 10]])
    torch.testing.assert_close(lean.received, received_attention(full.attn, 5))
    torch.testing.assert_close(analysis.block_tokens(lean, -2), full.blocks[:, 10])
    assert detect_outliers(lean, 3).share == detect_outliers(full, 3).share  # norms of every block are kept
    with pytest.raises(ValueError, match=r"block 3 was not kept by collect\(layers=...\); kept: \(5, 10\)"):
        analysis.tokens_at(lean, 3)
    with pytest.raises(IndexError, match="block 12 does not exist in a model of depth 12"):
        collect(model, images, layers=(12,))
    with pytest.raises(ValueError, match="attn must be True, False or 'received'"):
        collect(model, images, attn="all")


def test_pretrained_sets_are_checked() -> None:
    with pytest.raises(CfgError, match="unknown pretrained alias 'dinov3-l'"):
        PretrainedSet(others=("dinov3-l",))
    with pytest.raises(CfgError, match="img_size=120 is not a multiple of dinov2-l's patch size 14"):
        PretrainedSet(img_size=120)
    with pytest.raises(CfgError, match="must name a model without registers, then one with them"):
        PretrainedSet(pair=("dinov2-l-reg", "dinov2-l"))
    with pytest.raises(CfgError, match="images must be >= 8"):
        PretrainedSet(images=4)
    assert measure.pretrained_set(SMOKE, "dinov2-g-reg").pair == ("dinov2-g", "dinov2-g-reg")
    assert measure.pretrained_set(SMOKE, "dinov2-g").others == ()


def test_features_are_cached_by_the_weights_identity(weights, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(pretrained.WEIGHTS_ENV_VAR, str(weights))
    monkeypatch.setenv("REGVIT_CACHE", str(tmp_path / "cache"))
    first = measure.load_subject(SMOKE, 0, "dinov2-s", images=16, img_size=112)
    assert first.scale == "pretrained" and first.name == "dinov2-s" and first.feats.layers[-1] == 10
    assert first.layer in first.feats.layers and first.visual.shape == (4, 3, 112, 112)
    maps = measure.photo_maps(first)
    assert set(maps) == {"[CLS]", "PCA of patches"} and maps["[CLS]"].shape == (4, 8, 8)
    monkeypatch.setattr(measure, "collect", lambda *a, **k: pytest.fail("computed again"))
    monkeypatch.setattr(measure, "load_pretrained", lambda *a, **k: pytest.fail("model loaded though all is cached"))
    again = measure.load_subject(SMOKE, 0, "dinov2-s", images=16, img_size=112)
    torch.testing.assert_close(again.feats.norms, first.feats.norms)
    assert again.layer == first.layer and again.params == first.params == count_parameters(first.model)
    assert again.cfg == first.model.cfg
    torch.testing.assert_close(measure.photo_maps(again)["[CLS]"], maps["[CLS]"])  # the figures, from the cache
    assert json.dumps(measure.local_and_global(again)) == json.dumps(measure.local_and_global(first))  # NaN-safe
    with pytest.raises(ValueError, match="dinov2-s is pretrained: it has no planted positive control"):
        measure.local_and_global(first, control=True)
    # other weights under the same name: a new entry, never the old numbers
    write_weights(weights, ["dinov2-s"], seed=1)
    with pytest.raises(pytest.fail.Exception, match="model loaded though all is cached"):  # i.e. not from the cache
        measure.load_subject(SMOKE, 0, "dinov2-s", images=16, img_size=112)
    write_weights(weights, ["dinov2-s"], seed=0)


def test_chapters_2_and_3_run_their_pretrained_sections_on_local_weights(weights, tmp_path, monkeypatch) -> None:
    """The whole pretrained path of chapters 2 and 3, as a reader's build runs it, on the files above."""
    import papermill

    monkeypatch.setenv(pretrained.WEIGHTS_ENV_VAR, str(weights))
    monkeypatch.setenv("REGVIT_CACHE", str(tmp_path / "cache"))
    chapters = Path(__file__).parents[1] / "chapters"
    for name, key in (("02_high_norm_tokens", "ch2_pre_note"), ("03_registers", "ch3_pre_note")):
        out = tmp_path / f"{name}.ipynb"
        papermill.execute_notebook(str(chapters / f"{name}.ipynb"), str(out), parameters={"profile": "smoke"},
                                   kernel_name="python3", cwd=str(chapters), progress_bar=False)
        cells = json.loads(out.read_text())["cells"]
        glued = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]
                 if o.get("metadata", {}).get("scrapbook", {}).get("name") == key]
        note = next(iter(glued[0]["data"].values()))
        assert "Skipped" not in note and "dinov2-s" in note
        start = next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith(f"(ch{name[1]}-pretrained)="))
        images = sum("image/png" in o.get("data", {}) for c in cells[start:] for o in c.get("outputs", []))
        assert images >= 3, f"{name}: section 6 drew {images} figures"
    record = json.loads((tmp_path / "cache" / "claims" / "smoke-dinov2-s.json").read_text())
    assert set(record) == {f"C{i}" for i in range(1, 9)}  # chapter 2's C1-C5 and chapter 3's C6-C8
    assert {e["scale"] for e in record.values()} == {"pretrained"}
    assert json.loads((tmp_path / "cache" / "claims" / "smoke-deit3-s.json").read_text())["C1"]["model"] == "deit3-s"


def test_test_time_registers_run_on_local_pretrained_weights(weights, tmp_path, monkeypatch) -> None:
    """Chapter 5's test-time registers on the profile's pretrained models without registers, on the files above."""
    from regvit_lib import compare

    monkeypatch.setenv(pretrained.WEIGHTS_ENV_VAR, str(weights))
    monkeypatch.setenv("REGVIT_CACHE", str(tmp_path / "cache"))
    rows, note = compare.pretrained_test_time_registers(SMOKE, True, images=16)
    assert note == "" and rows["model"].tolist() == ["dinov2-s", "deit3-s"]  # the one with registers is left out
    for _, r in rows.iterrows():  # random weights: measured, and either applied or not applicable with the ratio
        assert r["test-time registers"].startswith(("applied", "not applicable: no outliers"))
        assert r["ratio_before"] > 1
    rows, note = compare.pretrained_test_time_registers(SMOKE, False)
    assert rows.empty and "pretrained is False" in note
