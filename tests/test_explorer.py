"""The token explorer (regvit_lib.explorer): its maps against independent computations, the widgets
driving one figure, the ranges that follow the model and the view, the errors, and the static twin.
No browser or display is needed: the widgets are driven by setting their values."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import regvit_lib  # noqa: F401  (before timm, see regvit_lib/_compat.py)
from regvit_lib import ConfigError, build_model, get_profile, normalize
from regvit_lib.analysis import collect, pca_rgb
from regvit_lib.explorer import VIEWS, Explorer, static_views, view_map, views_for

CFG = replace(get_profile("smoke").model, num_registers=2)  # 32 px, 8 px patches: a 4x4 grid; 2 blocks, 2 heads
G, N, P = CFG.grid_size, CFG.num_patches, CFG.num_prefix_tokens


def _lively(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw every weight from N(0, 0.3) (seeded): a fresh init attends almost uniformly and its
    registers are all but equal, so maps would barely differ from one setting to the next."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """Two registers and 2 blocks / 2 heads; no registers and 3 blocks / 4 heads; no [CLS]."""
    return {"reg2": _lively(build_model(CFG, seed=0), 0),
            "deep": _lively(build_model(replace(CFG, num_registers=0, depth=3, num_heads=4), seed=1), 1),
            "nocls": _lively(build_model(replace(CFG, class_token=False, global_pool="avg"), seed=2), 2)}


@pytest.fixture(scope="module")
def feats(models, images):
    return {name: collect(m, images, attn=True) for name, m in models.items()}


def test_norm_view_is_norm_over_the_images_median_patch_norm(feats):
    f = feats["reg2"]
    for image, block in ((0, 0), (2, 1)):
        norms = f.blocks[image, block, P:].norm(dim=-1).numpy()  # the block's patch tokens, from collect directly
        median = np.sort(norms)[(N - 1) // 2]  # torch's median of an even count: the lower middle value
        np.testing.assert_allclose(view_map(f, image, block, "norm"), (norms / median).reshape(G, G), rtol=1e-6)
    np.testing.assert_array_equal(view_map(f, 1, -1, "norm"), view_map(f, 1, 1, "norm"))  # -1: the last block


def test_cls_view_matches_an_attention_computed_from_the_weights(models, feats, images):
    m, f = models["reg2"], feats["reg2"]
    with torch.no_grad():  # block 0's attention, recomputed from its q and k
        blk = m.blocks[0]
        x = m._pos_embed(m.patch_embed(normalize(images)))
        q, k, _ = blk.attn.qkv(blk.norm1(x)).reshape(3, -1, 3, CFG.num_heads, CFG.head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * CFG.head_dim**-0.5, dim=-1)  # (B, H, T, T)
    for image in range(3):
        np.testing.assert_allclose(view_map(f, image, 0, "cls"), attn[image, :, 0, P:].mean(0).reshape(G, G),
                                   atol=1e-6)
        np.testing.assert_allclose(view_map(f, image, 0, "cls", head=1), attn[image, 1, 0, P:].reshape(G, G),
                                   atol=1e-6)


def test_register_patch_and_pca_views_read_the_right_rows(feats):
    f = feats["reg2"]
    a = f.attn[2, 1]  # image 2, block 1: (H, T, T)
    np.testing.assert_allclose(view_map(f, 2, 1, "register", query=1), a[:, 2, P:].mean(0).reshape(G, G))  # token 1+1
    np.testing.assert_allclose(view_map(f, 2, 1, "register", head=0, query=0), a[0, 1, P:].reshape(G, G))
    np.testing.assert_allclose(view_map(f, 2, 1, "patch", query=5), a[:, P + 5, P:].mean(0).reshape(G, G))
    assert not np.allclose(view_map(f, 2, 1, "register", query=0), view_map(f, 2, 1, "register", query=1))
    rgb = view_map(f, 2, 1, "pca")
    assert rgb.shape == (G, G, 3) and rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_array_equal(rgb, pca_rgb(f.blocks[:, 1, P:], G)[2].numpy())  # fitted over all three images


def test_the_same_seed_gives_the_same_maps(feats, images):
    again = collect(_lively(build_model(CFG, seed=0), 0), images, attn=True)
    for view in VIEWS:
        np.testing.assert_array_equal(view_map(again, 1, 1, view, query=1),
                                      view_map(feats["reg2"], 1, 1, view, query=1))


def _shown(ex: Explorer) -> np.ndarray:
    return np.asarray(ex.fig.axes[1].images[0].get_array())


def test_each_control_redraws_the_map_of_the_new_state(models, images):
    ex = Explorer({"reg2": models["reg2"], "deep": models["deep"]}, images, ["a", "b", "c"])
    assert len(ex.fig.axes) == 3  # image, map, colour bar: one figure for every state
    artist = ex.fig.axes[1].images[0]
    for name, value in (("block", 1), ("view", "cls"), ("head", 1), ("image", 2), ("view", "register"),
                        ("query", 1), ("view", "patch"), ("query", 9), ("view", "pca"), ("view", "norm"),
                        ("model", "deep")):
        before = _shown(ex).copy()
        ex.controls[name].value = value
        s = ex.state()
        assert getattr(s, name) == (None if value == "mean" else value)
        expected = view_map(ex.features(s.model), s.image, s.block, s.view, s.head, s.query)
        assert ex.fig.axes[1].images[0] is artist  # updated in place, not redrawn
        np.testing.assert_array_equal(_shown(ex), expected)
        np.testing.assert_array_equal(ex.current_map(), expected)
        assert before.shape != expected.shape or not np.array_equal(before, expected), (name, value)
        assert f"block {s.block}" in ex.fig.axes[1].get_title()
        assert ex.fig.axes[0].patches[0].get_visible() == (s.view == "patch")  # the query patch is marked
    assert ex.fig.axes[0].get_title() == "deep: c"
    lo, hi = artist.get_clim()
    assert (lo, hi) == (pytest.approx(_shown(ex).min()), pytest.approx(_shown(ex).max()))


def test_ranges_follow_the_view_and_the_model(models, images):
    ex = Explorer({"reg2": models["reg2"], "deep": models["deep"]}, images)
    c = ex.controls
    assert c["query"].disabled  # the norm view takes no query
    c["view"].value = "patch"
    assert (c["query"].max, c["query"].disabled) == (N - 1, False)
    c["query"].value = 12
    c["view"].value = "register"
    assert (c["query"].max, c["query"].value) == (CFG.num_registers - 1, 1)
    assert (c["block"].max, list(c["head"].options)) == (1, ["mean", 0, 1])
    c["head"].value = 1
    c["model"].value = "deep"  # 3 blocks, 4 heads, no registers: the register view goes, the norm view is shown
    assert (c["block"].max, list(c["head"].options), c["head"].value) == (2, ["mean", 0, 1, 2, 3], 1)
    assert "register" not in c["view"].options and ex.state().view == "norm" and c["query"].disabled
    c["block"].value, c["head"].value, c["view"].value = 2, 3, "cls"
    c["model"].value = "reg2"  # back to 2 blocks and 2 heads: block and head fall back into range
    assert (c["block"].max, c["block"].value, c["head"].value) == (1, 1, "mean")
    np.testing.assert_array_equal(_shown(ex), view_map(ex.features("reg2"), 0, 1, "cls"))


@pytest.mark.parametrize("model, args, kwargs, bad", [
    ("reg2", (0, 0, "nrom"), {}, "'nrom'"),
    ("reg2", (0, 2, "norm"), {}, "block=2"),
    ("reg2", (0, -3, "norm"), {}, "block=-3"),
    ("reg2", (0, 1.0, "norm"), {}, "block=1.0"),
    ("reg2", (3, 0, "norm"), {}, "image=3"),
    ("reg2", (0, 0, "cls"), {"head": 2}, "head=2"),
    ("reg2", (0, 0, "cls"), {"head": "0"}, "head='0'"),
    ("reg2", (0, 0, "register"), {"query": 2}, "query=2"),
    ("reg2", (0, 0, "patch"), {"query": N}, f"query={N}"),
    ("reg2", (0, 0, "patch"), {"query": -1}, "query=-1"),
    ("deep", (0, 0, "register"), {}, "'register'"),
    ("nocls", (0, 0, "cls"), {}, "'cls'"),
])
def test_bad_inputs_raise_config_errors_naming_the_value(feats, model, args, kwargs, bad):
    with pytest.raises(ConfigError) as err:
        view_map(feats[model], *args, **kwargs)
    assert bad in str(err.value)
    accepted = {"'nrom'": "['norm', 'cls', 'register', 'patch', 'pca']", "'register'": "no registers",
                "'cls'": "no [CLS] token", "head=2": "0..1", "query=2": "0..1", f"query={N}": f"0..{N - 1}"}
    assert accepted.get(bad, "0..") in str(err.value)  # and what is accepted


def test_bad_inputs_to_the_explorer_and_the_figure(feats, models, images):
    lean = collect(models["reg2"], images, attn=False)
    with pytest.raises(ConfigError, match="'cls'.*attn=True"):
        view_map(lean, 0, 0, "cls")
    assert views_for(lean) == ["norm", "pca"] and "register" not in views_for(feats["deep"])
    with pytest.raises(ConfigError, match="image_names has 2 names for 3 images"):
        Explorer(models, images, ["a", "b"])
    with pytest.raises(ConfigError, match=r"models is empty \(\{\}\)"):
        Explorer({}, images)
    with pytest.raises(ConfigError, match=r"got shape \(3, 32, 32\)"):
        Explorer(models, images[0])
    with pytest.raises(ConfigError, match=r"unknown view\(s\) \['attn'\]"):
        static_views(models, images[:2], [0], views=("norm", "attn"))
    with pytest.raises(ConfigError, match="block=5"):
        static_views(models, images[:2], [5])


def test_static_views_small_multiples(models, images):
    two = {"reg2": models["reg2"], "deep": models["deep"]}
    fig = static_views(two, images[:2], [0, -1], image_names=["left", "right"])
    views, rows, cols = ("norm", "cls", "register", "pca"), 1 + 2 * 2, 4 * 2
    assert len(fig.axes) == rows * cols + 3  # the grid, then a colour bar under each scalar view (not PCA)
    assert fig.get_size_inches()[0] <= 11
    grid = np.array(fig.axes[: rows * cols]).reshape(rows, cols)
    assert [ax.get_ylabel() for ax in grid[:, 0]] == ["input", "reg2\nblock 0", "reg2\nblock 1", "deep\nblock 0",
                                                      "deep\nblock 2"]
    assert [ax.get_title() for ax in grid[0, :2]] == ["\nleft", "norm / median\nright"]  # the view named once
    assert grid[0, 5].get_title() == "register 0 attention\nright"
    assert "PCA" in grid[0, 7].get_title()
    for r in (3, 4):  # the model without registers: its register cells are blank, with the reason
        for c in (4, 5):
            assert not grid[r, c].images and [t.get_text() for t in grid[r, c].texts] == ["no registers"]
    shown = collect(models["reg2"], images[:2])  # the PCA is fitted over the figure's two images
    for c, (view, image) in enumerate((v, i) for v in views for i in range(2)):  # the other cells: view_map
        np.testing.assert_array_equal(grid[2, c].images[0].get_array(), view_map(shown, image, 1, view))
    assert {ax.get_xlabel() for ax in fig.axes[rows * cols :]} == {"norm / median", "attention"}


def test_one_set_of_images_serves_models_of_different_input_sizes() -> None:
    small = build_model(replace(get_profile("smoke").model, num_registers=1), seed=0)
    big = build_model(replace(get_profile("smoke").model, img_size=2 * small.cfg.img_size), seed=0)
    images = torch.rand(2, 3, small.cfg.img_size, small.cfg.img_size, generator=torch.Generator().manual_seed(0))
    ex = Explorer({"small": small, "big": big}, images)
    ex.controls["model"].value = "big"
    assert ex.features("big").images.shape[-1] == big.cfg.img_size  # resized for the model that needs it
    assert ex.current_map().shape == (big.cfg.grid_size, big.cfg.grid_size)
    assert ex.fig.axes[0].images[-1].get_array().shape[:2] == (big.cfg.img_size, big.cfg.img_size)
    assert torch.equal(ex.features("small").images, images)  # the others see the images as given
