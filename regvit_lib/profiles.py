"""The book's scales: :data:`PROFILES` (``smoke``, ``cpu``, ``colab``, ``gpu``; the README says what
each costs, measured where it was run), each a :class:`Profile` of the settings of
:mod:`regvit_lib.config`, and the pretrained models studied beside ours (:data:`PRETRAINED`,
:class:`PretrainedSet`).

``colab`` and ``gpu`` need a CUDA GPU (:meth:`Profile.check_device` stops before any compute where
there is none). Their sizes come from budget arithmetic (:attr:`Profile.budget`): planned, not
measured, until a run's numbers are committed under ``data/``.

Every profile studies the procedural scenes; :meth:`Profile.with_data` (a chapter's ``data``
parameter, ``--data``, ``$REGVIT_DATA``) gives the same model and recipe on fractals or on real
photographs (``cpu-cifar10``), whose probes that need more than class labels say "no labels".

Kept apart from :mod:`regvit_lib.config` on purpose: a trained run's cache key holds every value of
its :class:`~regvit_lib.config.RunConfig` and the code that gives them meaning (``config.py``), not
this table, so changing one profile leaves the runs of the others, and every run whose settings
did not change, in the cache.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace

from .config import (ConfigError, DataConfig, ImageData, ModelConfig, RunConfig, ScenesConfig, TrainConfig, _check_int,
                     _check_ints, data_label, data_spec, parse_data)

__all__ = ["PRETRAINED", "resolve", "alias_of", "has_registers", "patch_size", "twin", "PretrainedSet", "Profile",
           "PROFILES", "PROFILE_ENV_VAR", "DATA_ENV_VAR", "default_profile_name", "default_data", "default_build_name", "get_profile",
           "add_arguments",
           "from_arguments"]


# Pretrained ViTs by alias -> timm name: DINOv2 (Oquab et al. 2023), its registers twins (this
# paper), DeiT-III (Touvron et al. 2022). regvit_lib.pretrained fetches and loads them.
PRETRAINED: dict[str, str] = {
    **{f"dinov2-{s}{r}": f"vit_{size}_patch14_{'reg4_' if r else ''}dinov2.lvd142m"
       for s, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")) for r in ("", "-reg")},
    **{f"deit3-{s}": f"deit3_{size}_patch16_224.fb_in22k_ft_in1k"
       for s, size in (("s", "small"), ("b", "base"), ("l", "large"))},
}


def resolve(name: str) -> str:
    """The timm name of an alias of :data:`PRETRAINED` or of a known timm name.

    Raises:
        ConfigError: for a name that is neither, listing the aliases.
    """
    full = PRETRAINED.get(name, name)
    if full in PRETRAINED.values():
        return full
    raise ConfigError(f"unknown pretrained model {name!r}; known: {sorted(PRETRAINED)} "
                      f"(or their timm names: {sorted(PRETRAINED.values())})")


def alias_of(name: str) -> str:
    """The short alias of a known pretrained model (alias or timm name)."""
    full = resolve(name)
    return next(alias for alias, timm_name in PRETRAINED.items() if timm_name == full)


def has_registers(name: str) -> bool:
    """Whether a known pretrained model has registers (the DINOv2 ``reg4`` models)."""
    return "_reg4_" in resolve(name)


def patch_size(name: str) -> int:
    """The patch side of a known pretrained model: 14 (DINOv2) or 16 (DeiT-III)."""
    return 14 if "_patch14_" in resolve(name) else 16


def twin(name: str) -> str | None:
    """The timm name of the same model with registers if ``name`` has none, and vice versa;
    ``None`` when no such twin is published (DeiT-III)."""
    full = resolve(name)
    other = full.replace("_reg4_", "_") if has_registers(full) else full.replace("_patch14_", "_patch14_reg4_")
    return other if other != full and other in PRETRAINED.values() else None


@dataclass(frozen=True)
class PretrainedSet:
    """The paper's own models a profile studies beside ours in chapters 2 and 3 (aliases of
    :data:`PRETRAINED`), run whenever their weights can be fetched."""

    pair: tuple[str, str] = ("dinov2-l", "dinov2-l-reg")  # without and with registers (chapters 2 and 3)
    others: tuple[str, ...] = ("deit3-b",)  # other families with artifacts (chapter 2)
    sizes: tuple[str, ...] = ("dinov2-s", "dinov2-b", "dinov2-l")  # Fig. 4c, smallest first
    img_size: int = 224  # input side: a multiple of 14 and 16 serves both families
    images: int = 64  # labelled scenes per model (half fit the probes)

    def __post_init__(self) -> None:
        _check_int("images", self.images, 8)
        _check_int("img_size", self.img_size, 16)
        for name in (*self.pair, *self.others, *self.sizes):
            if name not in PRETRAINED:  # aliases only: the chapters name models by them
                raise ConfigError(f"unknown pretrained alias {name!r}; known: {sorted(PRETRAINED)}")
            if self.img_size % patch_size(name):
                raise ConfigError(f"img_size={self.img_size} is not a multiple of {name}'s patch size "
                                  f"{patch_size(name)}")
        if len(self.pair) != 2 or has_registers(self.pair[0]) or not has_registers(self.pair[1]):
            raise ConfigError(f"pair={self.pair!r} must name a model without registers, then one with them")


@dataclass(frozen=True)
class Profile:
    """One scale of the whole book; chapters train ``profile.run(...)`` variants of it through the cache."""

    name: str
    description: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=ScenesConfig)  # the scenes, unless with_data chose another set
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    seeds: int = 1  # training seeds of every run a claim compares: mean +- sd, differences beyond their spread
    register_counts: tuple[int, ...] = (0, 1, 2, 4, 8, 16)  # the register grid of chapter 4 (the paper's Fig. 8)
    pretrained: PretrainedSet = field(default_factory=PretrainedSet)
    needs: str = "any"  # "cuda": sized for a GPU, refused without one (check_device)
    budget: str = ""  # how the profile was sized: the arithmetic, and whether it was measured

    def __post_init__(self) -> None:
        _check_ints(self, {"seed": 0, "seeds": 1})
        if self.needs not in ("any", "cuda"):
            raise ConfigError(f"needs must be 'any' or 'cuda', got {self.needs!r}")
        counts = self.register_counts
        if not (isinstance(counts, tuple) and len(counts) >= 3 and counts[0] == 0
                and all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
                and all(a < b for a, b in zip(counts, counts[1:]))):
            raise ConfigError(f"register_counts must be a rising tuple of >= 3 ints starting at 0 (the grid needs "
                              f"counts between its ends), got {counts!r}")
        RunConfig(self.model, self.data, self.train, self.seed)  # the parts must fit together

    @property
    def base(self) -> str:
        """The name of the profile in :data:`PROFILES` this one is (``cpu`` for ``cpu-cifar10``)."""
        return self.name.split("-", 1)[0]

    @property
    def scenes(self) -> ScenesConfig:
        """The profile's procedural scenes (also when it studies another data set: the data card's)."""
        data = self.data if isinstance(self.data, ScenesConfig) else PROFILES[self.base].data
        assert isinstance(data, ScenesConfig)
        return data

    @property
    def data_spec(self) -> str:
        """The data option this profile was made with (:func:`~regvit_lib.config.parse_data`)."""
        return data_spec(self.data)

    def with_data(self, spec: str) -> Profile:
        """This profile's model and recipe on another data set: ``"scenes"`` (the profile's own),
        ``"fractals"``, or real images, ``"cifar10:DIR"``, ``"stl10:DIR"``, ``"imagenette:DIR"``,
        ``"folder:DIR"`` (:func:`~regvit_lib.config.parse_data`), at the profile's image size.

        The result is named ``<profile>-<data>`` (``cpu-cifar10``), so its claims, exhibits and stored
        studies never mix with the scenes'. Real images are opened here, so a missing set stops before
        any compute, with the folder and the command that fetches it; their class count sets the head.

        Raises:
            ConfigError: an unknown spec. FileNotFoundError: the images are not where the spec says.
        """
        base = self if isinstance(self.data, ScenesConfig) else PROFILES[self.base]
        data = parse_data(spec, base.scenes)
        if data == base.data:
            return base
        if isinstance(data, ImageData):
            from .data import make_source

            classes = make_source(data).num_classes
        else:
            classes = data.num_classes
        return replace(base, name=_name_on(base, data), data=data,
                       description=f"{base.description}; on {data_spec(data)} instead of the scenes",
                       model=replace(base.model, num_classes=classes))

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """The training seeds of every compared run: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
        return tuple(range(self.seed, self.seed + self.seeds))

    def check_device(self, cuda: bool | None = None) -> None:
        """Stop before any compute when this profile needs a GPU and the machine has none.

        Args:
            cuda: whether CUDA is available (default: ask torch).

        Raises:
            ConfigError: naming the profile, what it needs, and the profile to use instead.
        """
        if self.needs != "cuda":
            return
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            raise ConfigError(f"profile {self.name!r} is sized for a CUDA GPU ({self.description}) and this machine "
                              f"has none (torch.cuda.is_available() is False, torch {_torch_version()}); "
                              f"use profile 'cpu' here, or run on a GPU (README, 'Past one CPU')")

    def run(self, seed: int | None = None, **model_overrides: object) -> RunConfig:
        """The :class:`RunConfig` of this profile with some model fields changed (``run(num_registers=4)``)."""
        try:
            model = replace(self.model, **model_overrides)  # type: ignore[arg-type]
        except TypeError as e:
            raise ConfigError(f"unknown ModelConfig field in {sorted(model_overrides)}: {e}") from e
        return RunConfig(model, self.data, self.train, self.seed if seed is None else seed)


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _profile(name: str, description: str, model: ModelConfig, data: ScenesConfig, train: TrainConfig,
             seeds: int, counts: tuple[int, ...], pretrained: PretrainedSet, needs: str = "any",
             budget: str = "") -> Profile:
    return Profile(name, description, replace(model, num_classes=data.num_classes), data, train, seeds=seeds,
                   register_counts=counts, pretrained=pretrained, needs=needs, budget=budget)


# What each profile costs, measured, is in the README ("Profiles").
PROFILES: dict[str, Profile] = {p.name: p for p in (
    _profile("smoke", "CI and nbval: seconds per chapter on 2 CPU cores",
             ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
             ScenesConfig(img_size=32, train_size=2_000, val_size=128, test_size=128),
             TrainConfig(steps=20, batch_size=32, warmup_steps=2, eval_every=10, eval_images=64, stats_images=16,
                         checkpoint_every=10), seeds=2, counts=(0, 1, 4),
             pretrained=PretrainedSet(("dinov2-s", "dinov2-s-reg"), ("deit3-s",), ("dinov2-s",), 112, 16)),
    _profile("cpu", "a laptop (the default): the whole book on 2 CPU cores",
             ModelConfig(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=4),
             ScenesConfig(img_size=32, train_size=50_000, val_size=2_000, test_size=2_000),
             TrainConfig(steps=300, batch_size=32, lr=2e-3, warmup_steps=30, eval_every=50, eval_images=512,
                         stats_images=64, checkpoint_every=50), seeds=3, counts=(0, 1, 4, 16),
             pretrained=PretrainedSet()),
    _profile("colab", "Colab's T4 GPU, fp16 (planned, not yet measured)",
             ModelConfig(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
             ScenesConfig(img_size=32, train_size=200_000, val_size=2_000, test_size=2_000),
             TrainConfig(steps=2_000, batch_size=256, lr=1e-3, warmup_steps=200, weight_decay=0.05, eval_every=250,
                         eval_images=1_024, stats_images=64, checkpoint_every=250), seeds=2, counts=(0, 1, 4, 16),
             pretrained=PretrainedSet(("dinov2-b", "dinov2-b-reg"), ("deit3-b",), ("dinov2-s", "dinov2-b", "dinov2-l"),
                                      224, 200),
             needs="cuda",
             budget="PLANNED, NOT MEASURED. ViT of width 192, depth 12 on 64 tokens: 0.73 GFLOP forward, 2.2 GFLOP trained "
                    "per image; 2,000 steps x 256 images = 1.1 PFLOP a run; the book's 10 runs (8 of the register grid, 2 "
                    "other widths) 1.25e16 FLOP. A T4 (65 TFLOP/s fp16 tensor peak) at an assumed 25% of it, 16 TFLOP/s: "
                    "about 13 min of training for the whole book, the largest chapter's share within 15 min; the pretrained "
                    "models' passes add a few minutes on the first run."),
    _profile("gpu", "one data-centre GPU, A100/H100 class, bf16 (planned, not yet measured)",
             ModelConfig(img_size=64, patch_size=4, embed_dim=384, depth=12, num_heads=6),
             ScenesConfig(img_size=64, train_size=1_000_000, val_size=5_000, test_size=5_000),
             TrainConfig(steps=3_000, batch_size=512, lr=1e-3, warmup_steps=300, weight_decay=0.05, eval_every=250,
                         eval_images=2_048, stats_images=64, checkpoint_every=500), seeds=3,
             counts=(0, 1, 2, 4, 8, 16), pretrained=PretrainedSet(("dinov2-g", "dinov2-g-reg"), ("deit3-b", "deit3-l"),
                                      ("dinov2-s", "dinov2-b", "dinov2-l", "dinov2-g"), 224, 1_000),
             needs="cuda",
             budget="PLANNED, NOT MEASURED. ViT-S width 384, depth 12 on 256 tokens: 12 GFLOP forward, 36 GFLOP trained per "
                    "image; 3,000 steps x 512 images = 56 PFLOP a run; the book's 20 runs (18 of the register grid, 2 other "
                    "widths) 1.17e18 FLOP. An H100 (990 TFLOP/s bf16 dense peak) at an assumed 40%: about 50 min; an A100 "
                    "(312 TFLOP/s) at 40%: about 2.6 h; 8 GPUs under torchrun divide both by about 8."),
)}

PROFILE_ENV_VAR = "REGVIT_PROFILE"
DATA_ENV_VAR = "REGVIT_DATA"


def get_profile(name: str, data: str | None = None) -> Profile:
    """Look a profile up by name (``smoke``, ``cpu``, ``colab``, ``gpu``); any other name raises, listing them.

    Args:
        data: a data option (:meth:`Profile.with_data`); ``None``: the profile's scenes.
    """
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; known profiles: {sorted(PROFILES)}")
    return PROFILES[name] if data is None else PROFILES[name].with_data(data)


def default_data() -> str:
    """The data a chapter studies when nobody injects one: ``$REGVIT_DATA``, else ``scenes``
    (a real set, e.g. ``REGVIT_DATA=cifar10:/content/data``: :meth:`Profile.with_data`)."""
    return os.environ.get(DATA_ENV_VAR, "scenes").strip() or "scenes"


def default_profile_name() -> str:
    """The profile a chapter runs when nobody injects one (nbval cannot): ``$REGVIT_PROFILE``, else ``cpu``."""
    name = os.environ.get(PROFILE_ENV_VAR, "cpu").strip()
    if name not in PROFILES:
        raise ConfigError(f"environment variable {PROFILE_ENV_VAR}={name!r} names no profile; "
                          f"known profiles: {sorted(PROFILES)}")
    return name


def default_build_name() -> str:
    """The name a chapter run with no injected parameters writes its claims, exhibits and times under:
    ``$REGVIT_PROFILE`` on ``$REGVIT_DATA`` (``cpu``, ``cpu-cifar10``), named as :meth:`Profile.with_data`
    names it, without opening the images."""
    base = PROFILES[default_profile_name()]
    return _name_on(base, parse_data(default_data(), base.scenes))


def _name_on(base: Profile, data: DataConfig) -> str:
    """The name of profile ``base`` on ``data``: its own on its scenes, else ``<profile>-<data>``."""
    return base.name if data == base.data else f"{base.name}-{data_label(data)}"


def add_arguments(ap: argparse.ArgumentParser, profile: str | None = None) -> None:
    """The ``--profile`` and ``--data`` options every command of the package takes (:func:`from_arguments`).

    Args:
        profile: the default profile (``None``: ``$REGVIT_PROFILE``, else ``cpu``).
    """
    ap.add_argument("--profile", default=profile, help="smoke, cpu, colab or gpu (default: "
                    + (profile or f"${PROFILE_ENV_VAR}, else cpu") + ")")
    ap.add_argument("--data", default=None, help=f"scenes (the profile's), fractals, cifar10:DIR, stl10:DIR, "
                    f"imagenette:DIR or folder:DIR (default: ${DATA_ENV_VAR}, else scenes)")


def from_arguments(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Profile:
    """The profile of a command's ``--profile`` and ``--data``, checked for this machine; a bad value or a
    missing image set stops the command through ``ap.error``, before any compute."""
    try:
        profile = get_profile(args.profile or default_profile_name(), args.data or default_data())
        profile.check_device()
    except (ConfigError, FileNotFoundError) as e:
        ap.error(str(e))
    return profile
