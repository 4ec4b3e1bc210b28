"""The book's profiles: one place that decides how much compute the whole book spends.

A profile is a model, a data set, a training recipe and a seed; every chapter trains
``profile.run(...)`` variants of it (registers, pooling, ...) through the cache, so each
configuration trains once for the whole book.

* ``smoke`` -- CI and nbval: seconds per chapter on 2 CPU cores.
* ``cpu``   -- the default on a laptop: the whole book in about 20 minutes on 2 cores.
* ``gpu``   -- the published book: one H100 in about 25 minutes.

The default is read from ``$REGVIT_PROFILE`` (else ``cpu``) because nbval cannot inject
papermill parameters; papermill's ``-p profile gpu`` overrides it in a chapter's parameters
cell.

Budget arithmetic
-----------------
Training FLOPs per image are 3x the forward FLOPs counted by :func:`regvit_lib.flops.count_flops`
(forward + backward). The book trains, per profile, the baseline and the register grid of the
ablations chapter: registers 0, 1, 2, 4, 8, 16, i.e. 6 runs per seed (the baseline is the
0-register run and chapter 3's model the 4-register one, shared through the cache).

``cpu`` -- ViT of width 128, depth 6, 4 heads (1.2 M parameters), 32 px images, patch 4
(64 patches): 0.17 GFLOPs forward, 0.50 GFLOPs to train on one image. 300 steps x 128 images =
38 k images = 1.9e13 FLOPs. Measured on 2 cores (this machine is shared, so rates vary by
~25 %): the baseline run took 124 s (115 s of steps at 333 images/s, the scene generator 1.7 %
of them; 9 s of evaluations); an earlier 360-step run on a busier machine ran at 260 images/s.
Registers add tokens (65 -> 66, 67, 69, 73, 81), about 8 % on average over the grid: 6 runs x
~135-175 s = 14-18 min, plus the chapters' probes: ~20 min for the whole book, once. Later
builds read the cache (a cached run loads in 0.03 s).

Recipe choice (the emergence study, ``data/emergence/cpu.json``, chapter "Ablations"): at
``cpu`` scale no recipe produced background outliers. Longer training (600-1,200 steps) raised
the largest norm ratios, but on *object* patches, and it weakened the attention sinks. The
profile's 300-step recipe keeps the strongest sink precursor that fits the budget, because 600
steps would double the book's training time. The ``gpu`` recipe is provisional until a GPU
study exists.

``gpu`` -- ViT-S width (384, depth 12, 6 heads, 21.4 M parameters) at 64 px, patch 4 (256
patches, the token count of a ViT at 224 px / patch 14): 12.1 GFLOPs forward, 36 GFLOPs to
train on one image. At a planning rate of 250 TFLOP/s sustained in bf16 on one H100 (~35 % of
its dense peak), ~6,900 images/s. 3,000 steps x 512 images = 1.5 M images = 5.6e16 FLOPs,
~3.7 min a run; 6 runs ~ 22 min, plus probes: ~25 min. The scenes are rendered on the GPU.
(Not yet measured on a GPU: the first session with one runs ``python -m regvit_lib.gpu_study``,
whose rows carry the measured rate and MFU, and resizes ``steps`` from them; ``data/README.md``
has the commands.)

``smoke`` -- width 32, depth 2, 32 px, patch 8 (16 patches), 20 steps of 32 images and small
evaluation splits: a run trains in 0.3 s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .config import ConfigError, ModelConfig, _check_int
from .data import ScenesConfig
from .train import RunConfig, TrainConfig

__all__ = ["Profile", "PROFILES", "PROFILE_ENV_VAR", "DEFAULT_PROFILE", "get_profile", "default_profile_name"]


@dataclass(frozen=True)
class Profile:
    """One scale of the whole book: model, data, recipe, seed and the number of seeds."""

    name: str
    description: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: ScenesConfig = field(default_factory=ScenesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    seeds: int = 1  # seeds per configuration where a chapter shows error bars

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        _check_int("seeds", self.seeds, 1)
        RunConfig(self.model, self.data, self.train, self.seed)  # the parts must fit together

    def run(self, seed: int | None = None, **model_overrides: object) -> RunConfig:
        """The :class:`~regvit_lib.train.RunConfig` of this profile with some model fields changed.

        Example: ``profile.run(num_registers=4)``.
        """
        try:
            model = replace(self.model, **model_overrides)  # type: ignore[arg-type]
        except TypeError as e:
            raise ConfigError(f"unknown ModelConfig field in {sorted(model_overrides)}: {e}") from e
        return RunConfig(model, self.data, self.train, self.seed if seed is None else seed)


def _profile(name: str, description: str, model: ModelConfig, data: ScenesConfig, train: TrainConfig,
             seeds: int) -> Profile:
    model = replace(model, num_classes=data.num_classes)
    return Profile(name, description, model, data, train, seeds=seeds)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        _profile(
            "smoke", "CI and nbval: seconds per chapter on 2 CPU cores",
            ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
            ScenesConfig(img_size=32, train_size=2_000, val_size=128, test_size=128),
            TrainConfig(steps=20, batch_size=32, warmup_steps=2, eval_every=10, eval_images=64,
                        stats_images=16, checkpoint_every=10),
            seeds=1,
        ),
        _profile(
            "cpu", "a laptop (the default): the whole book in about 20 minutes on 2 cores",
            ModelConfig(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4),
            ScenesConfig(img_size=32, train_size=50_000, val_size=2_000, test_size=2_000),
            TrainConfig(steps=300, batch_size=128, lr=2e-3, warmup_steps=30, eval_every=50,
                        eval_images=512, stats_images=64, checkpoint_every=50),
            seeds=1,
        ),
        _profile(
            "gpu", "the published book: one H100, about 25 minutes",
            ModelConfig(img_size=64, patch_size=4, embed_dim=384, depth=12, num_heads=6),
            ScenesConfig(img_size=64, train_size=1_000_000, val_size=5_000, test_size=5_000),
            TrainConfig(steps=3_000, batch_size=512, lr=1e-3, warmup_steps=300, weight_decay=0.05,
                        eval_every=250, eval_images=2_048, stats_images=64, checkpoint_every=500),
            seeds=3,
        ),
    )
}

PROFILE_ENV_VAR = "REGVIT_PROFILE"
DEFAULT_PROFILE = "cpu"


def get_profile(name: str) -> Profile:
    """Look a profile up by name.

    Args:
        name: ``smoke``, ``cpu`` or ``gpu``.

    Raises:
        ConfigError: for any other name, listing the known ones.
    """
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; known profiles: {sorted(PROFILES)}")
    return PROFILES[name]


def default_profile_name() -> str:
    """The profile a chapter runs when nobody injects one: ``$REGVIT_PROFILE`` or ``cpu``.

    Raises:
        ConfigError: when the environment variable names no known profile.
    """
    name = os.environ.get(PROFILE_ENV_VAR, DEFAULT_PROFILE).strip()
    if name not in PROFILES:
        raise ConfigError(
            f"environment variable {PROFILE_ENV_VAR}={name!r} names no profile; "
            f"known profiles: {sorted(PROFILES)}"
        )
    return name
