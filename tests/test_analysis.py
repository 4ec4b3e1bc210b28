"""The per-layer summaries the training loop records: norms relative to each image's median, sinks."""

import matplotlib
import pytest
import torch

from regvit_lib import ModelConfig, plots
from regvit_lib.analysis import RATIO_BINS, norm_summary, sink_summary, token_norms

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
    rows = sink_summary(attn, CFG)
    assert rows[0]["mass"] == pytest.approx(1.0) and rows[0]["token"] == P + 5
    assert rows[0]["kind"] == {"cls": 0.0, "reg": 0.0, "patch": 1.0} and rows[0]["fixed"] == 1.0
    assert rows[1]["mass"] == pytest.approx(0.5) and rows[1]["kind"]["reg"] == 1.0


def test_training_curves_plot() -> None:
    curves = [{"step": s, "val_acc": 0.1 * s, "norms": [{"ratio_mean": 1.0 + s}] * 3} for s in range(3)]
    fig = plots.training_curves(curves)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 3
