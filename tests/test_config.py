import dataclasses

import pytest

from regvit_lib import PROFILES, ConfigError, ModelConfig, chapter_params, default_profile_name, get_profile, vit_config
from regvit_lib.profiles import PROFILE_ENV_VAR, Profile


def test_profiles_are_frozen_and_named() -> None:
    assert set(PROFILES) == {"smoke", "cpu", "colab", "gpu"}
    for name, prof in PROFILES.items():
        assert prof.name == name and get_profile(name) is prof
        with pytest.raises(dataclasses.FrozenInstanceError):
            prof.seed = 1  # type: ignore[misc]
    # the smoke model is the smallest: CI must stay fast
    sizes = {n: p.model.embed_dim * p.model.depth * p.model.num_tokens for n, p in PROFILES.items()}
    assert sizes["smoke"] < sizes["cpu"] < sizes["colab"] < sizes["gpu"]


def test_unknown_profile_names_the_value() -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'laptop'.*\['colab', 'cpu', 'gpu', 'smoke'\]"):
        get_profile("laptop")


def test_default_profile_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_ENV_VAR, raising=False)
    assert default_profile_name() == "cpu"
    monkeypatch.setenv(PROFILE_ENV_VAR, "smoke")
    assert default_profile_name() == "smoke"
    monkeypatch.setenv(PROFILE_ENV_VAR, "huge")
    with pytest.raises(ConfigError, match=r"REGVIT_PROFILE='huge'"):
        default_profile_name()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_registers=-1), r"num_registers must be >= 0, got -1"),
        (dict(img_size=30, patch_size=4), r"img_size=30 is not divisible by patch_size=4"),
        (dict(depth=0), r"depth must be >= 1, got 0"),
        (dict(depth=-3), r"depth must be >= 1, got -3"),
        (dict(num_heads=0), r"num_heads must be >= 1, got 0"),
        (dict(embed_dim=64, num_heads=6), r"embed_dim=64 is not divisible by num_heads=6"),
        (dict(embed_dim=0), r"embed_dim must be >= 1, got 0"),
        (dict(patch_size=0), r"patch_size must be >= 1, got 0"),
        (dict(num_registers=2.0), r"num_registers must be an integer, got 2.0"),
        (dict(depth=True), r"depth must be an integer, got True"),
        (dict(global_pool="max"), r"global_pool must be one of \('token', 'avg'\), got 'max'"),
        (dict(mlp="relu"), r"mlp must be one of"),
        (dict(class_token=False), r"global_pool='token' needs class_token=True"),
        (dict(mlp_ratio=0), r"mlp_ratio must be > 0, got 0"),
        (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\), got 1.0"),
        (dict(layer_scale_init=0.0), r"layer_scale_init must be > 0 or None, got 0.0"),
        (dict(mlp="swiglu", embed_dim=3, num_heads=1, mlp_ratio=1.0), r"must be even"),
    ],
)
def test_bad_model_values_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_replace_validates_too() -> None:
    cfg = get_profile("smoke").model
    with pytest.raises(ConfigError, match="num_registers must be >= 0, got -4"):
        dataclasses.replace(cfg, num_registers=-4)


def test_derived_sizes() -> None:
    cfg = ModelConfig(img_size=32, patch_size=4, num_registers=4)
    assert (cfg.grid_size, cfg.num_patches, cfg.num_prefix_tokens, cfg.num_tokens) == (8, 64, 5, 69)
    no_cls = ModelConfig(class_token=False, global_pool="avg", num_registers=2)
    assert no_cls.num_prefix_tokens == 2


def test_vit_sizes() -> None:
    g = vit_config("g", num_registers=4)
    assert (g.embed_dim, g.depth, g.num_heads, g.mlp, g.mlp_hidden_dim) == (1536, 40, 24, "swiglu", 8192)
    assert g.num_tokens == 1 + 4 + 16 * 16
    with pytest.raises(ConfigError, match=r"unknown ViT size 'XL'"):
        vit_config("XL")
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\) \['regs'\]"):
        vit_config("S", regs=4)


def test_profile_seed_validated() -> None:
    with pytest.raises(ConfigError, match="seed must be >= 0, got -1"):
        Profile(name="x", description="", seed=-1)
    with pytest.raises(ConfigError, match="seeds must be >= 1, got 0"):
        Profile(name="x", description="", seeds=0)
    assert dataclasses.replace(get_profile("smoke"), seed=2, seeds=3).all_seeds == (2, 3, 4)
    assert all(p.seeds >= 2 for p in PROFILES.values())  # every profile's claims rest on a spread


@pytest.mark.parametrize("counts", [(1, 2, 4), (0, 4), (0, 4, 2), (0, 1, -4), (0, 1, 2.0), [0, 1, 4], (0, True, 4)])
def test_profile_register_grid_is_validated(counts) -> None:
    with pytest.raises(ConfigError, match=r"register_counts must be a rising tuple of >= 3 ints starting at 0"):
        Profile(name="x", description="", register_counts=counts)


@pytest.mark.parametrize("params, message", [
    (dict(rerun_study="maybe"), r"parameter rerun_study='maybe' \(str\) is not True or False"),
    (dict(rerun_study=1), r"parameter rerun_study=1 \(int\) is not True or False"),
    (dict(probe_images=True), r"parameter probe_images=True \(bool\) is not an integer >= 8"),
    (dict(probe_images="400"), r"parameter probe_images='400' \(str\)"),
    (dict(probe_images=4), r"parameter probe_images=4 \(int\) is not an integer >= 8"),
    (dict(k=1.0), r"parameter k=1.0 \(float\) is not a number > 1"),
    (dict(k=float("nan")), r"parameter k=nan"),
    (dict(registers=0), r"parameter registers=0 \(int\) is not an integer >= 1"),
    (dict(num_registers=-1), r"parameter num_registers=-1"),
    (dict(pretrained="dinov3"), r"parameter pretrained='dinov3' \(str\) is not True \(the profile's pretrained models\), False or one of"),
    (dict(profile="laptop"), r"parameter profile='laptop' \(str\) is not one of \['colab', 'cpu', 'gpu', 'smoke'\]"),
    (dict(profile=None), r"parameter profile=None \(NoneType\)"),
    (dict(rerun_everything=True), r"unknown chapter parameter 'rerun_everything'"),
    (dict(seeds=1), r"parameter seeds=1 \(int\) is not None \(the profile's\) or an integer >= 2"),
    (dict(rerun="yes"), r"parameter rerun='yes' \(str\) is not True or False"),
    (dict(pretrained="deit3-b"), r"parameter pretrained='deit3-b' has no twin"),
    (dict(pretrained=None), r"parameter pretrained=None \(NoneType\) is not True"),
])
def test_chapter_parameters_are_checked_at_the_door(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        chapter_params(profile="smoke", **{k: v for k, v in params.items() if k != "profile"}) \
            if "profile" not in params else chapter_params(**params)


def test_good_chapter_parameters_give_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    assert chapter_params(profile="cpu", rerun_study=False, probe_images=400, k=4, pretrained=False) is PROFILES["cpu"]
    assert chapter_params(profile="smoke", pretrained="dinov2-l-reg", registers=4).name == "smoke"
    monkeypatch.setenv(PROFILE_ENV_VAR, "smoke")
    assert chapter_params(k=4.0) is PROFILES["smoke"]
