"""The per-layer summaries the training loop records: norms relative to each image's median, sinks."""

from types import SimpleNamespace

import matplotlib
import pandas as pd
import pytest
import torch

from regvit_lib import ModelConfig, plots
from regvit_lib.measure import sink_heads
from regvit_lib.summaries import RATIO_BINS, norm_summary, received_attention, sink_summary, token_norms

matplotlib.use("Agg")
CFG = ModelConfig(img_size=16, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_registers=2)


def test_norms_are_split_by_kind_and_compared_per_image() -> None:
    B, L, T, D = 3, CFG.depth, CFG.num_tokens, CFG.embed_dim
    blocks = torch.ones(B, L, T, D)
    blocks[1] *= 5.0  # an image whose tokens are all larger is not an outlier image
    blocks[2, 1, CFG.num_prefix_tokens + 7] *= 10.0  # one planted outlier patch in layer 1
    norms = token_norms(blocks, CFG)
    assert norms["patch"].shape == (B, L, CFG.num_patches) and norms["reg"].shape == (B, L, 2)
    assert norms["cls"].shape == (B, L)
    rows = norm_summary(norms)
    assert rows[0]["ratio_max"] == pytest.approx(1.0) and rows[0]["ratio_mean"] == pytest.approx(1.0)
    assert rows[1]["ratio_max"] == pytest.approx(10.0)
    assert rows[1]["ratio_mean"] == pytest.approx((1 + 1 + 10) / 3)
    assert rows[1]["cls"] == pytest.approx(1.0) and rows[1]["reg"] == pytest.approx(1.0)
    hist = rows[1]["hist"]
    assert sum(hist) == B * CFG.num_patches and len(hist) == len(RATIO_BINS) - 1
    assert hist[int((3.32 + 3) / 0.25)] == 1  # log2(10) = 3.32: the planted token's bin


def test_sinks_find_the_key_that_patch_queries_attend_to() -> None:
    B, L, H, T = 4, CFG.depth, CFG.num_heads, CFG.num_tokens
    P = CFG.num_prefix_tokens
    attn = torch.full((B, L, H, T, T), 1.0 / T)
    attn[:, 0, 1, P:, :] = 0.0
    attn[:, 0, 1, P:, P + 5] = 1.0  # layer 0, head 1: every patch query -> patch 5
    attn[:, 1, 0, P:, :] = 0.5 / (T - 1)
    attn[:, 1, 0, P:, 1] = 0.5  # layer 1, head 0: half of the attention -> register 0
    rows = sink_summary(received_attention(attn, P), CFG)
    assert rows[0]["mass"] == pytest.approx(1.0) and rows[0]["token"] == P + 5
    assert rows[0]["kind"] == {"cls": 0.0, "reg": 0.0, "patch": 1.0} and rows[0]["fixed"] == 1.0
    assert rows[1]["mass"] == pytest.approx(0.5) and rows[1]["kind"]["reg"] == 1.0
    subject = SimpleNamespace(feats=SimpleNamespace(received=received_attention(attn, P)), cfg=CFG)
    grid = sink_heads(subject)  # type: ignore[arg-type]
    heads = grid.set_index(["block", "head"])
    assert len(heads) == L * H  # every block and head, not only the strongest
    assert heads.loc[(0, 1), "sink_mass"] == pytest.approx(1.0) and heads.loc[(0, 1), "sink_on"] == "patch"
    assert heads.loc[(1, 0), "sink_mass"] == pytest.approx(0.5) and heads.loc[(1, 0), "sink_on"] == "reg"
    assert heads.loc[(0, 0), "sink_mass"] == pytest.approx(1.0 / T)  # uniform attention: no sink
    fig = plots.sink_heatmap({"a": grid, "b": grid})
    mesh = fig.axes[0].collections[0]
    assert mesh.get_array().reshape(L, H)[0, 1] == pytest.approx(1.0)  # block 0, head 1 drawn where it belongs
    assert {t.get_text() for t in fig.axes[0].texts} >= {"p", "R"}


def test_training_curves_plot_with_seed_bands() -> None:
    def curves(seed: float) -> list[dict]:
        return [{"step": s, "val_acc": 0.1 * s + seed, "norms": [{"ratio_mean": 1.0 + s + seed}] * 3} for s in range(3)]

    fig = plots.training_curves([curves(0.0), curves(0.1)])
    assert len(fig.axes) == 2 and len(fig.axes[1].get_lines()) >= 3  # one line per block
    acc = fig.axes[0].get_lines()[0].get_ydata()
    assert list(acc) == pytest.approx([0.05, 0.15, 0.25])  # the mean over the two seeds
    assert len(fig.axes[0].collections) == 1  # the sd band
    with pytest.raises(ValueError, match="at least one run"):
        plots.training_curves([])


def test_outlier_share_axis_never_goes_below_zero() -> None:
    fig = plots.norms_per_layer(1 + torch.rand(8, 4), torch.zeros(4))  # no outliers anywhere
    low, high = fig.axes[-1].get_ylim()
    assert low == 0 and high >= 1
    assert fig.axes[0].get_ylim()[0] == 1  # nor a max/median ratio below 1
    fig = plots.norms_vs_size([{"params": 1e5 * (i + 1), "share": 0.0, "ratio_mean": 2.0, "name": str(i)}
                               for i in range(3)])
    assert fig.axes[-1].get_ylim()[0] == 0


# --- the toolkit (issue 4) -------------------------------------------------------------------

import numpy as np  # noqa: E402

from regvit_lib import ScenesConfig, build_model, render_scenes  # noqa: E402
from regvit_lib import analysis as A  # noqa: E402
from regvit_lib import probes as P  # noqa: E402

SCENES = ScenesConfig(img_size=32, val_size=600)
K = 15.0
MODEL = ModelConfig(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_registers=2,
                    num_classes=SCENES.num_classes)


@pytest.fixture(scope="module")
def scenes():
    return render_scenes(SCENES, "val", np.arange(600))


@pytest.fixture(scope="module")
def planted(scenes):
    """An untrained model with two planted outliers per image at block 1 (positions vary per image).

    Untrained, some natural patch tokens reach ~9x their image's median norm (high-contrast
    objects on a background near the normalisation mean), so the plant is 30x and the cut 15x.
    """
    model = build_model(MODEL, seed=0)
    B, N = scenes.image.shape[0], MODEL.num_patches
    pos = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(i))[:2] for i in range(B)])
    with A.plant_outliers(model, layer=1, positions=pos, factor=30.0):
        feats = A.collect(model, scenes.image, scenes.label, batch_size=128)
    return model, feats, pos


def test_detector_returns_exactly_the_planted_positions(planted) -> None:
    _, feats, pos = planted
    out = A.detect_outliers(feats, layer=1, k=K)
    assert out.positions() == [sorted(p) for p in pos.tolist()]
    assert out.share == pytest.approx(2 / MODEL.num_patches)
    assert out.norm_ratio > 15
    assert not A.detect_outliers(feats, layer=0, k=K).mask.any()  # nothing before the planted layer
    scaled = A.detect_outliers(feats, layer=1, k=1e6)
    assert scaled.share == 0 and np.isnan(scaled.norm_ratio)
    with pytest.raises(ValueError, match="k must be > 1"):
        A.detect_outliers(feats, 1, k=0.5)


def test_planted_global_tokens_lose_local_and_carry_global_information(planted) -> None:
    _, feats, _ = planted
    out = A.detect_outliers(feats, layer=1, k=K)
    local = P.local_probes(feats, out, layer=1)
    chance = 1 / MODEL.num_patches
    # normal tokens know where they are; the planted ones (an image-wide mean) do not
    # (measured: normal 22 % top-1 at 3.3 patches, planted 1.0 % at 3.8; chance 1.6 %)
    assert local["normal"]["position_top1"] > 5 * chance
    assert local["outlier"]["position_top1"] < 2 * chance
    assert local["outlier"]["position_distance"] > local["normal"]["position_distance"] + 0.3
    assert local["outlier"]["reconstruction_l2"] > 10 * local["normal"]["reconstruction_l2"]
    single = P.single_token_probe(feats, out, layer=1)
    assert set(single) == {"normal", "outlier", "cls", "reg0", "reg1"}
    assert single["outlier"]["accuracy"] > single["normal"]["accuracy"] + 0.05


def test_same_numbers_on_our_model_and_on_the_timm_model_with_its_weights(scenes) -> None:
    from regvit_lib.timm_interop import regvit_to_timm

    ours = build_model(MODEL, seed=3)
    with torch.no_grad():  # move away from the init so every weight matters
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = regvit_to_timm(ours)
    x, y = scenes.image[:200], scenes.label[:200]
    fa, fb = A.collect(ours, x, y), A.collect(theirs, x, y)
    for name in ("embed", "blocks", "final", "attn"):
        torch.testing.assert_close(getattr(fa, name), getattr(fb, name), rtol=0, atol=1e-5)
    oa, ob = A.detect_outliers(fa, 1, k=1.5), A.detect_outliers(fb, 1, k=1.5)
    assert oa.positions() == ob.positions()
    la, lb = P.local_probes(fa, oa, 1), P.local_probes(fb, ob, 1)
    for kind in ("normal", "outlier"):
        assert la[kind] == pytest.approx(lb[kind], rel=1e-4)
    torch.testing.assert_close(A.neighbour_similarity(fa), A.neighbour_similarity(fb))
    torch.testing.assert_close(A.lost_keys(ours, fa), A.lost_keys(theirs, fb), rtol=0, atol=1e-5)


def test_attention_maps_and_pca(planted) -> None:
    _, feats, _ = planted
    g = MODEL.grid_size
    cls = A.attention_to_patches(feats, "cls", layer=2)
    reg = A.attention_to_patches(feats, 1, layer=2)
    assert cls.shape == reg.shape == (600, g, g)
    assert float(cls.sum((1, 2)).max()) <= 1 + 1e-5 and float(cls.min()) >= 0
    with pytest.raises(ValueError, match="register index < 2"):
        A.attention_to_patches(feats, 2)
    rgb = A.pca_rgb(A.tokens_at(feats)["patch"], g)
    assert rgb.shape == (600, g, g, 3) and rgb.min() >= 0 and rgb.max() <= 1


def test_neighbour_similarity_of_a_flat_image_is_one() -> None:
    feats = A.Features(MODEL, torch.zeros(1, 3, 32, 32), torch.ones(1, MODEL.num_patches, 32), (0, 1, 2),
                       torch.zeros(1, 3, MODEL.num_tokens, 32), torch.zeros(1, 3, MODEL.num_tokens),
                       torch.zeros(1, MODEL.num_tokens, 32), None, None)
    feats.embed[0, 0] = -1  # patch 0 points the other way: its neighbours 1 and 8 see it
    sim = A.neighbour_similarity(feats)
    assert sim[0, 0] == pytest.approx(-1.0) and sim[0, 1] == pytest.approx((1 + 1 - 1) / 3)
    assert sim[0, 9] == pytest.approx(1.0)


def test_lost_finds_the_one_object() -> None:
    g, D = 8, 16
    gen = torch.Generator().manual_seed(0)
    bg, obj = torch.zeros(D), torch.zeros(D)
    bg[0], obj[1] = 1.0, 1.0
    keys = bg.expand(g, g, D).clone()
    keys[2:5, 3:7] = obj - 0.3 * bg  # the object: rows 2-4, columns 3-6, unlike the background
    keys = keys + 0.05 * torch.randn(g, g, D, generator=gen)
    box = P.lost(keys.reshape(1, g * g, D), grid=g, patch=4)
    assert box[0].tolist() == [12, 8, 28, 20]
    gt = torch.tensor([[[12.0, 8.0, 28.0, 20.0], [0.0, 0.0, 4.0, 4.0]]])
    assert P.corloc(box, gt, torch.tensor([[True, False]])) == 1.0
    assert P.corloc(box, gt[:, [1, 0]], torch.tensor([[True, False]])) == 0.0


def test_miou_rmse_and_corloc_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    # class 0: 1 / 2; class 1: 2 / 3
    assert P.mean_iou(pred, target, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert P.rmse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])) == pytest.approx(5**0.5)
    pred, gt = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[[1.0, 1.0, 3.0, 3.0], [9.0, 9.0, 9.0, 9.0]]])
    valid = torch.tensor([[True, True]])  # IoU 1 / 7 with the first box, 0 with the degenerate one
    assert P.corloc(pred, gt, valid, threshold=0.14) == 1.0 and P.corloc(pred, gt, valid, threshold=0.15) == 0.0
    assert P.corloc(pred, gt, ~valid) == 0.0


def test_dense_probes_on_a_smoke_model(scenes) -> None:
    model = build_model(MODEL, seed=0)
    feats = A.collect(model, scenes.image[:300], scenes.label[:300])
    res = P.dense_probes(feats, scenes.seg[:300], scenes.depth[:300], num_seg_classes=len(SCENES.shapes) + 1)
    # even random features separate objects from the flat background better than guessing
    background_only = P.mean_iou(torch.zeros_like(scenes.seg[150:300]), scenes.seg[150:300], 5)
    assert res.segmentation_miou > background_only
    assert res.depth_rmse < float(scenes.depth[150:300].std())
    assert 0 <= res.classification <= 1


def test_toolkit_figures_save_for_a_thesis(planted, tmp_path) -> None:
    _, feats, _ = planted
    out = A.detect_outliers(feats, 1, k=K)
    norms = token_norms(feats.blocks, MODEL)
    figs = [
        plots.norm_histogram({k: v[:, 1] for k, v in norms.items()}, k=4, label="block 1"),
        plots.norms_per_layer(out.ratio.max(-1).values[:, None].expand(-1, 3), torch.full((3,), out.share)),
        plots.attention_maps(feats.images, {"[CLS]": A.attention_to_patches(feats),
                                            "PCA": A.pca_rgb(feats.blocks[:, 2, MODEL.num_prefix_tokens:], 8)}),
        plots.neighbour_similarity(A.neighbour_similarity(feats), out.mask),
    ]
    for i, fig in enumerate(figs):
        fig.savefig(str(tmp_path / f"fig{i}.pdf"))
        assert (tmp_path / f"fig{i}.pdf").stat().st_size > 1000


def test_register_ablation_and_sinks_show_the_seeds_spread() -> None:
    rows = [{"registers": c, "seed": s, "norm_map": np.full((4, 4), 1.0 + c), "classification": 0.5 + 0.01 * c + 0.1 * s,
             "segmentation_miou": 0.2, "depth_rmse": 0.1} for c in (0, 1, 4, 16) for s in (0, 1)]
    fig = plots.register_ablation(pd.DataFrame(rows))
    acc = [ax for ax in fig.axes if ax.get_title() == "classification (acc)"][0]
    line = acc.get_lines()[0]
    assert list(line.get_xdata()) == [0, 1, 2, 3]  # counts evenly spaced, labelled by their value
    assert [t.get_text() for t in acc.get_xticklabels()] == ["0", "1", "4", "16"]
    assert list(line.get_ydata()) == pytest.approx([0.55, 0.56, 0.59, 0.71])  # mean over the seeds
    band = acc.collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() - band.min() > 0.1  # the sd band spans the seeds
    seeds = [pd.DataFrame({"block": [0, 1], "sink_mass": [0.2 + d, 0.6 + d], "sink_on": ["patch", "cls"]})
             for d in (0.0, 0.1)]
    fig = plots.sinks_per_layer({"ViT": seeds})
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == pytest.approx([0.25, 0.65])
