from dataclasses import replace

import matplotlib.figure
import pytest
import torch

from regvit_lib import ModelConfig, build_model, get_profile, plots
from regvit_lib.data import sample_photo
from regvit_lib.flops import register_overhead_table
from regvit_lib.model import patchify
from regvit_lib.walkthrough import steps_table, walkthrough


@pytest.mark.parametrize(
    "cfg",
    [
        get_profile("smoke").model,
        replace(get_profile("smoke").model, num_registers=4),
        ModelConfig(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp="swiglu",
                    class_token=False, global_pool="avg", num_registers=2, layer_scale_init=0.1),
    ],
)
def test_walkthrough_reproduces_the_model(cfg: ModelConfig) -> None:
    model = build_model(cfg, seed=1)
    image = sample_photo(cfg.img_size)
    steps = walkthrough(model, image)  # checks each step against the model internally
    torch.testing.assert_close(steps[-1].tensor, model(image))
    by_name = {s.name: s for s in steps}
    assert by_name["flattened patches"].shape == (1, cfg.num_patches, 3 * cfg.patch_size**2)
    assert by_name["attention weights"].shape == (1, cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
    table = steps_table(steps)
    assert list(table.columns) == ["step", "symbol", "shape"] and len(table) == len(steps)


def test_walkthrough_detects_a_mismatch() -> None:
    model = build_model(get_profile("smoke").model)
    model.blocks[0].attn.forward = lambda x, return_attn=False: (x * 0, None)  # sabotage
    with pytest.raises(AssertionError, match="multi-head attention"):
        walkthrough(model, sample_photo(32))


def test_patchify_order_matches_the_convolution() -> None:
    x = torch.rand(2, 3, 12, 12)
    conv = torch.nn.Conv2d(3, 5, 4, stride=4)
    by_conv = conv(x).flatten(2).transpose(1, 2)
    by_matmul = patchify(x, 4) @ conv.weight.reshape(5, -1).T + conv.bias
    torch.testing.assert_close(by_conv, by_matmul)
    with pytest.raises(ValueError, match="not divisible by patch_size=5"):
        patchify(x, 5)


def test_sample_photo() -> None:
    img = sample_photo(40)
    assert img.shape == (1, 3, 40, 40) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05
    with pytest.raises(ValueError, match="img_size must be >= 1, got 0"):
        sample_photo(0)
    with pytest.raises(FileNotFoundError, match="no_such.png"):
        sample_photo(8, name="no_such.png")


def test_plots_return_figures() -> None:
    cfg = replace(get_profile("smoke").model, num_registers=3)
    fig = plots.token_layout(cfg)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert fig.axes[0].get_title() == f"{cfg.num_tokens} tokens = 1 [CLS] + 3 registers + {cfg.num_patches} patches"
    fig = plots.patch_grid(sample_photo(32), 8)
    assert "16 patches of 8×8" in fig.axes[0].get_title()
    table = register_overhead_table(sizes=("Ti",), registers=(0, 4), img_size=56, patch_size=14)
    fig = plots.register_overhead(table, paper={4: 2.0})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["ViT-Ti/14", "paper (App. B, bound)"]


def test_tables_over_seeds_show_mean_and_spread() -> None:
    from regvit_lib import labels

    rows = [{"model": m, "seed": s, "share": v, "corloc": c} for m, s, v, c in
            (("a", 0, 0.1, 0.2), ("a", 1, 0.3, 0.2), ("b", 0, 0.5, float("nan")), ("b", 1, 0.5, float("nan")))]
    shown = labels.show_seeds(rows, "model", ["share", "corloc"]).data
    assert list(shown.columns) == ["model", "seeds", "outlier share", "LOST corloc"]
    assert shown.iloc[0].tolist() == ["a", 2, "0.200 ± 0.141", "0.200 ± 0.000"]
    assert shown.iloc[1].tolist() == ["b", 2, "0.500 ± 0.000", "–"]
    records = labels.show({"model a": {"share": [0.1, 0.3], "corloc": 0.25}}).data
    assert records.loc["outlier share", "model a"] == "0.200 ± 0.141" and records.loc["LOST corloc", "model a"] == 0.25
