"""What the chapters measure: a model, the labelled images it is probed on, and what they show.

A chapter says which model (the profile's, with some registers, or a pretrained one) and gets a
:class:`Subject`: the model, one forward pass over labelled validation images of the profile's
data (every token and attention map), and the block where its norms are read. The images are the
procedural scenes, which carry every label, unless the profile was made on another set
(:meth:`~regvit_lib.profiles.Profile.with_data`): real photographs carry class labels only, so the
probes that need segmentation, depth, boxes or object masks report NaN, "no labels". The functions below turn a subject into the
numbers and tables of chapters 2 and 3 (the paper's Sec. 2 and Sec. 3) as snake_case records;
:mod:`regvit_lib.labels` names their columns for display, :mod:`regvit_lib.plots` draws them and
:mod:`regvit_lib.claims` turns them into verdicts.

For a pretrained model (an alias of :data:`~regvit_lib.profiles.PRETRAINED`; its weights are
fetched by :mod:`regvit_lib.pretrained`) the images are taken at the model's input size, so
the probes that need labels (segmentation, depth, boxes, class) run on it too, and the
photographs of :func:`regvit_lib.data.photos` are shown in the figures. Its forward pass keeps
only the two blocks the measurements read (the studied block, chosen on the first batch, and
the last block's input) and is cached, keyed by the SHA-256 of the weights file.
:func:`pretrained_subjects` gives a chapter the profile's pretrained models, or a one-sentence
note saying why they were skipped.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache as once, cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .analysis import (OUTLIER_K, Features, attention_to_patches, collect, detect_outliers, lost_keys,
                       neighbour_similarity, norms_at, pca_rgb, peak_layer, peak_of_norms, positive_control,
                       tokens_at, top_token_placement)
from .cache import Store, cached
from .config import ConfigError, DataConfig, ImageData, ModelConfig, RunConfig
from .profiles import PretrainedSet, Profile, alias_of, has_registers
from .data import LabelledBatch, labelled, make_source, photos
from .model import RegViT, count_parameters
from .pretrained import WEIGHTS_ENV_VAR, WeightsUnavailable, load_pretrained, resolve, twin, weights_file, weights_id
from .probes import corloc, dense_probes, lost, probe_summary
from .scenes import background_patches
from .summaries import sink_summary
from .train import TrainedRun, train

__all__ = ["PRETRAINED_BATCH", "Subject", "load_subject", "seed_runs", "load_seeds", "pretrained_set", "pretrained_subjects", "norm_report",
           "share_per_layer", "layer_norms", "sinks", "sink_heads", "dense_table", "object_discovery", "register_maps", "photo_maps",
           "local_and_global", "neighbour_table", "planted", "size_ladder", "size_runs", "size_sweep"]


@dataclass
class Subject:
    """A model under study and one forward pass over labelled images."""

    name: str  # e.g. "cpu, 4 registers" or "dinov2-g" (the seeds of one model share its name)
    scale: str  # the profile's name, or "pretrained"
    load_model: Callable[[], RegViT]  # the model, loaded when first asked for (see ``model``)
    feats: Features  # one pass over ``batch``: every token and attention map (ours); lean (pretrained)
    batch: LabelledBatch  # the images and their labels: class; segmentation, depth, boxes where the data has them
    data: DataConfig  # the data they come from
    layer: int  # the studied block: the largest mean max/median ratio (blocks >= 1; pretrained: on the first batch)
    run: TrainedRun | None  # the training run (our models), with its curves; None when pretrained
    visual: Tensor  # images shown in the figures: the first images, or photographs (pretrained)
    params: int  # the model's parameter count
    key: str  # what decides ``feats``: the run's or the weights' cache key, and the images; keys the probes' cache
    seed: int | None = None  # the training seed of our model; None when pretrained

    @cached_property
    def model(self) -> RegViT:
        """The model (a pretrained one is read from its weights file only when something needs it)."""
        return self.load_model()

    @property
    def cfg(self) -> ModelConfig:
        return self.feats.cfg


def load_subject(profile: Profile, registers: int = 0, pretrained: str | None = None, images: int = 400,
                 img_size: int = 224, seed: int | None = None, **model_overrides: Any) -> Subject:
    """Train (or load from the cache) or fetch a model, and run it over labelled images.

    Args:
        profile: the book's profile: its model and data, unless ``pretrained``.
        registers: number of registers of our model; for a pretrained DINOv2, 0 picks the model
            without registers and anything else its ``reg4`` twin.
        pretrained: an alias or timm name (:mod:`regvit_lib.pretrained`).
        images: how many validation images to probe on (at most the split's).
        img_size: input size of the pretrained model (a multiple of its patch size).
        seed: training seed of our model (default: the profile's).
        model_overrides: other :class:`~regvit_lib.config.ModelConfig` fields of our model
            (e.g. ``embed_dim`` for the model-size figure).

    Raises:
        WeightsUnavailable: a pretrained model's weights cannot be fetched.
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 4:
        raise ValueError(f"images must be an int >= 4 (half of them fit the probes), got {images!r}")
    if pretrained is not None:
        name = resolve(pretrained)
        if has_registers(name) != (registers > 0):
            if (other := twin(name)) is None:
                raise ValueError(f"{name} has no twin {'with' if registers else 'without'} registers")
            name = other
        data = replace(profile.data, img_size=img_size)
        if not isinstance(data, ImageData):  # rendered: as many validation images as asked for
            data = replace(data, val_size=max(images, data.val_size))
        return _pretrained_subject(name, data, min(images, make_source(data).split_size("val")))
    run = train(profile.run(seed=seed, num_registers=registers, **model_overrides), progress=False)
    extra = "".join(f", {k}={v}" for k, v in model_overrides.items())
    name = f"{profile.name}, {registers} register{'s' * (registers != 1)}{extra}"
    batch = labelled(profile.data, "val", np.arange(min(images, make_source(profile.data).split_size("val"))))
    feats = collect(run.model, batch.image, batch.label, attn=True, batch_size=32)
    return Subject(name, profile.name, lambda: run.vit, feats, batch, profile.data, peak_layer(feats), run,
                   batch.image[:4], count_parameters(run.model), f"{run.key}/{len(batch)}", run.config.seed)


def seed_runs(profile: Profile, registers: int = 0) -> list[RunConfig]:
    """The profile's run with ``registers`` registers, once per seed of the profile (:attr:`Profile.all_seeds`)."""
    return [profile.run(seed=s, num_registers=registers) for s in profile.all_seeds]


def load_seeds(profile: Profile, registers: int = 0, images: int = 400) -> list[Subject]:
    """:func:`load_subject` for every seed of the profile: what a claim compares, as mean and spread."""
    return [load_subject(profile, registers, images=images, seed=s) for s in profile.all_seeds]


PRETRAINED_BATCH = 8  # images per forward pass of a pretrained model; the first batch picks the studied block
_FEATURES_CODE = ("analysis.py", "model.py", "scenes.py", "data.py", "summaries.py", "timm_interop.py",
                  "pretrained.py", "measure.py")
_SAVED = ("embed", "blocks", "norms", "final", "received")
_PROBES_CODE = (*_FEATURES_CODE, "probes.py")


def _cached_probe(subject: Subject, kind: str, compute: Any, **config: Any) -> dict[str, Any]:
    """A probe's result on a subject's own features, computed once per subject, settings and code."""
    return cached(kind, dict(subject=subject.key, **config), _PROBES_CODE, compute)


def _pretrained_subject(name: str, data: DataConfig, images: int) -> Subject:
    """A pretrained model over ``images`` labelled validation images: one lean forward pass, cached by the
    weights' SHA-256. The model itself is read from its file only when the pass (or a figure) needs it."""
    import timm

    path = weights_file(name)
    model = once(lambda: load_pretrained(name, img_size=data.img_size, checkpoint=path).to(
        "cuda" if torch.cuda.is_available() else "cpu"))
    batch = labelled(data, "val", np.arange(images))

    def compute() -> tuple[dict[str, Any], dict[str, Tensor]]:
        studied: list[int] = []

        def keep(norms: Tensor) -> tuple[int, int]:  # the studied block (on this first batch) and the last one's input
            studied.append(peak_of_norms(norms, model().cfg.num_prefix_tokens))
            return studied[0], -2

        f = collect(model(), batch.image, batch.label, attn="received", batch_size=PRETRAINED_BATCH, layers=keep)
        return ({"layer": studied[0], "layers": list(f.layers), "params": count_parameters(model()),
                 "cfg": asdict(f.cfg)}, {k: getattr(f, k) for k in _SAVED})

    store = Store("pretrained-features", dict(model=name, weights=weights_id(path), data=data, images=images,
                                              batch=PRETRAINED_BATCH, timm=timm.__version__), _FEATURES_CODE)
    meta, tensors = store.tensors(compute)
    feats = Features(ModelConfig(**meta["cfg"]), batch.image, tensors["embed"], tuple(meta["layers"]),
                     tensors["blocks"], tensors["norms"], tensors["final"], None, tensors["received"], batch.label)
    return Subject(alias_of(name), "pretrained", model, feats, batch, data, int(meta["layer"]), None,
                   photos(data.img_size), int(meta["params"]), store.key)


def pretrained_set(profile: Profile, choice: bool | str) -> PretrainedSet | None:
    """The pretrained models a chapter studies: the profile's (``True``), none (``False``), or one
    DINOv2 alias and its twin (at the profile's image size and count).

    Raises:
        ConfigError: an unknown name, or one without a twin.
    """
    if isinstance(choice, bool):
        return profile.pretrained if choice else None
    if (other := twin(choice)) is None:
        raise ConfigError(f"pretrained={choice!r} has no twin with (or without) registers; choose a DINOv2 "
                          f"model, or True for the profile's models")
    pair = (alias_of(choice), alias_of(other)) if has_registers(other) else (alias_of(other), alias_of(choice))
    return replace(profile.pretrained, pair=pair, others=())


def pretrained_subjects(profile: Profile, choice: bool | str, pairs: bool = False) -> tuple[list[Subject], str]:
    """A chapter's pretrained subjects (:func:`pretrained_set`), or none and a one-sentence note
    saying why they were skipped (``""`` when they ran).

    Args:
        choice: the chapter's ``pretrained`` parameter.
        pairs: ``False``: the models without registers (the pair's first and the others, chapter 2);
            ``True``: the pair, without then with registers (chapter 3).

    Every weights file is looked for first, so nothing is computed when one is missing.
    """
    if (pset := pretrained_set(profile, choice)) is None:
        return [], "Not run in this build: the chapter's parameter pretrained is False."
    names = list(pset.pair) if pairs else [pset.pair[0], *pset.others]
    needed = list(dict.fromkeys(names if pairs else (*names, *pset.sizes)))  # chapter 2 also runs the size sweep
    try:
        for name in needed:
            weights_file(name)
    except WeightsUnavailable as e:
        return [], (f"Skipped in this build: the weights of {', '.join(needed)} could not be fetched ({e}); "
                    f"make book where huggingface.co is reachable runs it, as does a build with "
                    f"${WEIGHTS_ENV_VAR} naming a folder of timm checkpoints.")
    return [load_subject(profile, has_registers(n), n, pset.images, pset.img_size) for n in names], ""


def norm_report(subject: Subject, k: float = OUTLIER_K) -> dict[str, float]:
    """The numbers of the paper's Fig. 3 / Fig. 5a for one model, at its peak block.

    Returns:
        ``share`` (patch tokens above ``k`` x their image's median), ``norm_ratio`` (mean outlier
        norm / mean normal norm; NaN without outliers), ``ratio_mean`` / ``ratio_max`` (per-image
        max/median, mean and max over images), ``layer``, and where each image's largest token
        sits: ``top_on_background`` against the base rate ``background_patches``, and the
        neighbour similarity of those tokens (``top_similarity``) against all (``all_similarity``).
    """
    out = detect_outliers(subject.feats, subject.layer, k)
    per_image = out.ratio.amax(-1)
    fg = subject.batch.foreground  # None for photographs: where the token sits is "no labels" (NaN)
    bg = None if fg is None else background_patches(fg, subject.cfg.patch_size)
    return {"layer": subject.layer, "share": out.share, "norm_ratio": out.norm_ratio,
            "ratio_mean": float(per_image.mean()), "ratio_max": float(per_image.max()),
            **top_token_placement(subject.feats, bg, subject.layer)}


def share_per_layer(subject: Subject, k: float = OUTLIER_K) -> Tensor:
    """``(L,)``: per block, the share of patch tokens above ``k`` x their image's median norm."""
    return torch.tensor([detect_outliers(subject.feats, i, k).share for i in range(subject.cfg.depth)])


def layer_norms(subject: Subject) -> dict[str, Tensor]:
    """Token norms at the subject's peak block: ``patch``, ``cls``, ``reg``."""
    return norms_at(subject.feats, subject.layer)


def sinks(subject: Subject) -> pd.DataFrame:
    """Per block, the strongest attention sink: ``sink_mass`` (its share of the patch queries'
    attention), ``sink_on`` (``cls``, ``reg`` or ``patch``) and ``same_token`` (how often it is the
    same token across images)."""
    rows = sink_summary(subject.feats.received, subject.cfg) if subject.feats.received is not None else []
    return pd.DataFrame([{"block": i, "sink_mass": r["mass"], "sink_on": max(r["kind"], key=r["kind"].get),
                          "same_token": r["fixed"]} for i, r in enumerate(rows)])


def sink_heads(subject: Subject) -> pd.DataFrame:
    """Per block and head, the head's strongest key: ``sink_mass`` (its share of the patch queries'
    attention, mean over images) and ``sink_on`` (its kind in most images); empty without attention."""
    rec = subject.feats.received  # (B, L, H, T); a head taken alone is its own strongest head
    per_head = [] if rec is None else [sink_summary(rec[:, :, h:h + 1], subject.cfg) for h in range(rec.shape[2])]
    return pd.DataFrame([{"block": b, "head": h, "sink_mass": r["mass"], "sink_on": max(r["kind"], key=r["kind"].get)}
                         for h, rows in enumerate(per_head) for b, r in enumerate(rows)],
                        columns=["block", "head", "sink_mass", "sink_on"])


def dense_table(subjects: list[Subject], seed: int = 0) -> pd.DataFrame:
    """The paper's Table 2 for our subjects, one row each (``model``, ``seed``): ``classification``,
    ``segmentation_miou``, ``depth_rmse`` (the last two NaN on images without those labels)."""
    def probe(s: Subject) -> dict[str, float]:
        return dense_probes(s.feats, s.batch.seg, s.batch.depth, s.batch.seg_classes, seed=seed).as_dict()
    return pd.DataFrame([{"model": s.name, "seed": s.seed, **_cached_probe(s, "probe-dense", lambda: probe(s), seed=seed)}
                         for s in subjects])


def object_discovery(subjects: list[Subject]) -> pd.DataFrame:
    """The paper's Table 3 for our subjects, one row each (``model``, ``seed``): LOST boxes from the last
    layer's keys, ``corloc`` (NaN on images without object boxes)."""
    def discover(s: Subject) -> dict[str, float]:
        if s.batch.boxes is None or s.batch.box_valid is None:
            return {"corloc": math.nan}
        boxes = lost(lost_keys(s.model, s.feats), s.feats.grid, s.cfg.patch_size)
        return {"corloc": corloc(boxes, s.batch.boxes, s.batch.box_valid)}
    return pd.DataFrame([{"model": s.name, "seed": s.seed, **_cached_probe(s, "probe-lost", lambda: discover(s))}
                         for s in subjects])


def register_maps(subject: Subject, features: Features | None = None, layer: int = -1) -> dict[str, Tensor]:
    """Fig. 9 / Fig. 1: attention of [CLS] and of each register to the patches, and PCA colours.

    Args:
        features: the features whose maps are drawn (default: the subject's images); e.g.
            ``collect(subject.model, subject.visual)`` for photographs.
    """
    f = subject.feats if features is None else features
    queries: dict[str, str | int] = {"[CLS]": "cls"} if f.cfg.class_token else {}
    queries |= {f"register {r}": r for r in range(f.cfg.num_registers)}
    maps = {name: attention_to_patches(f, query, layer) for name, query in queries.items()}
    return maps | {"PCA of patches": pca_rgb(tokens_at(f, "final")["patch"], f.grid)}


def photo_maps(subject: Subject) -> dict[str, Tensor]:
    """:func:`register_maps` of the subject's ``visual`` images (Fig. 2 and 9), from one pass over
    them, cached per subject and images."""
    import hashlib

    seen = hashlib.sha256(subject.visual.numpy().tobytes()).hexdigest()
    return Store("photo-maps", dict(subject=subject.key, images=seen), _FEATURES_CODE).tensors(
        lambda: ({}, register_maps(subject, collect(subject.model, subject.visual))))[1]


def local_and_global(subject: Subject, k: float = OUTLIER_K, seed: int = 0, control: bool = False) -> dict[str, float]:
    """Fig. 5b and Table 1 in one record: position / pixel probes and single-token class probes
    (:func:`regvit_lib.probes.probe_summary`), cached per subject and settings.

    Args:
        control: of the planted positive control (:func:`planted`: the same model and images with
            outliers planted at its block) instead of the subject's own features.

    Raises:
        ValueError: ``control`` for a pretrained model (it has the real thing, no control).
    """
    if control and subject.run is None:
        raise ValueError(f"{subject.name} is pretrained: it has no planted positive control")

    def probe() -> dict[str, float]:
        f = planted(subject) if control else subject.feats
        assert f is not None
        return probe_summary(f, detect_outliers(f, subject.layer, k), subject.layer, seed)
    return _cached_probe(subject, "probe-local-global", probe, layer=subject.layer, k=k, seed=seed, control=control)


def neighbour_table(subject: Subject, features: Features | None = None, k: float = OUTLIER_K) -> dict[str, Tensor]:
    """Fig. 5a's data: every patch's neighbour similarity and the outlier mask at the subject's layer."""
    f = subject.feats if features is None else features
    return {"similarity": neighbour_similarity(f), "outlier_mask": detect_outliers(f, subject.layer, k).mask}


def planted(subject: Subject) -> Features | None:
    """The positive control: the subject's images with outliers planted at its block (our models
    only; ``None`` for a pretrained model, which has the real thing).

    See :func:`regvit_lib.analysis.positive_control`: 2 random patch tokens per image are
    replaced by the image's mean patch token at 10 x the median norm (its defaults).
    """
    return None if subject.run is None else positive_control(subject.model, subject.batch.image, subject.batch.label,
                                                                   subject.layer)[1]


def size_ladder(profile: Profile) -> list[int]:
    """Widths for the model-size figure (Fig. 4c): half, once and 1.5x the profile's width."""
    d, h = profile.model.embed_dim, profile.model.num_heads
    return [w for w in (d // 2, d, d * 3 // 2) if w % h == 0 and w >= h]


def size_runs(profile: Profile) -> list[RunConfig]:
    """The runs of the model-size figure (Fig. 4c): the profile's seed at each width of :func:`size_ladder`.
    One seed per width: the figure compares no claim (the profile's own width has all its seeds in the claims)."""
    return [profile.run(embed_dim=w) for w in size_ladder(profile)]


def size_sweep(profile: Profile, pretrained: PretrainedSet | None = None, images: int = 200,
               k: float = OUTLIER_K, loaded: Sequence[Subject] = ()) -> list[dict[str, Any]]:
    """Fig. 4c: the norm report of models of several sizes, smallest first.

    Our models: the profile's at the widths of :func:`size_ladder` (same depth, recipe, seed;
    through the cache). Pretrained: the models of ``pretrained.sizes`` (DINOv2 S, B, L, ...), at its
    image size and count, reusing the ``loaded`` subjects of the same names. One model at a time:
    each is freed before the next is loaded.
    """
    if pretrained is None:
        return [_size_row(f"D={w}", load_subject(profile, images=images, embed_dim=w), k) for w in size_ladder(profile)]
    known = {s.name: s for s in loaded}
    return [_size_row(n, known.get(n) or load_subject(profile, has_registers(n), n, pretrained.images,
                                                      pretrained.img_size), k) for n in pretrained.sizes]


def _size_row(name: str, subject: Subject, k: float) -> dict[str, Any]:
    return {"name": name, "params": subject.params, **norm_report(subject, k)}
