"""What the chapters measure: a model, the labelled scenes it is probed on, and what they show.

A chapter says which model (the profile's, with some registers, or a pretrained one) and gets a
:class:`Subject`: the model, one forward pass over labelled scenes (every token and attention
map), and the block where its norms are read. The functions below turn a subject into the
numbers and tables of chapters 2 and 3 (the paper's Sec. 2 and Sec. 3) as snake_case records;
:mod:`regvit_lib.labels` names their columns for display, :mod:`regvit_lib.plots` draws them and
:mod:`regvit_lib.claims` turns them into verdicts.

For a pretrained model (``pretrained="dinov2-g"``, needs the model hub) the scenes are rendered
at the model's input size, so the probes that need labels (segmentation, depth, boxes, class)
run on it too, and the photographs of :func:`regvit_lib.data.photos` are shown in the
figures.
"""

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .analysis import (OUTLIER_K, Features, attention_to_patches, collect, detect_outliers, lost_keys,
                       neighbour_similarity, pca_rgb, peak_layer, positive_control, tokens_at, top_token_placement)
from .config import Profile, ScenesConfig
from .data import photos
from .model import RegViT, count_parameters
from .pretrained import load_pretrained, resolve, twin
from .probes import corloc, dense_probes, lost, probe_summary
from .scenes import SceneBatch, background_patches, render_scenes
from .summaries import sink_summary
from .train import TrainedRun, train

__all__ = ["Subject", "load_subject", "norm_report", "share_per_layer", "layer_norms", "sinks", "dense_table",
           "object_discovery", "register_maps", "local_and_global", "neighbour_table", "planted", "size_ladder",
           "size_sweep"]


@dataclass
class Subject:
    """A model under study and one forward pass over labelled scenes."""

    name: str  # e.g. "cpu, 4 registers" or "dinov2-g"
    scale: str  # the profile's name, or "pretrained"
    model: RegViT
    feats: Features  # every token and attention map of ``scenes``
    scenes: SceneBatch  # the labels: class, segmentation, depth, boxes
    data: ScenesConfig  # the scenes' configuration (for background masks)
    layer: int  # the block whose norms are studied: the largest mean max/median ratio (blocks >= 1)
    run: TrainedRun | None  # the training run (our models), with its curves; None when pretrained
    visual: Tensor  # images shown in the figures: the first scenes, or photographs (pretrained)
    params: int  # the model's parameter count


def load_subject(profile: Profile, registers: int = 0, pretrained: str | None = None, images: int = 400,
                 img_size: int = 224, seed: int | None = None, **model_overrides: Any) -> Subject:
    """Train (or load from the cache) or download a model, and run it over labelled scenes.

    Args:
        profile: the book's profile: its model and data, unless ``pretrained``.
        registers: number of registers of our model; for a pretrained DINOv2, 0 picks the model
            without registers and anything else its ``reg4`` twin.
        pretrained: an alias or timm name (:mod:`regvit_lib.pretrained`); needs the hub.
        images: how many validation scenes to probe on.
        img_size: input size of the pretrained model (a multiple of its patch size).
        seed: training seed of our model (default: the profile's).
        model_overrides: other :class:`~regvit_lib.config.ModelConfig` fields of our model
            (e.g. ``embed_dim`` for the model-size figure).
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 4:
        raise ValueError(f"images must be an int >= 4 (half of them fit the probes), got {images!r}")
    if pretrained is None:
        run = train(profile.run(seed=seed, num_registers=registers, **model_overrides), progress=False)
        model, data, scale = run.model, profile.data, profile.name
        extra = "".join(f", {k}={v}" for k, v in model_overrides.items())
        name = f"{profile.name}, {registers} register{'s' * (registers != 1)}{extra}"
    else:
        name = resolve(pretrained)
        if ("_reg4_" in name) != (registers > 0):
            if (other := twin(name)) is None:
                raise ValueError(f"{name} has no twin {'with' if registers else 'without'} registers")
            name = other
        model = load_pretrained(name, img_size=img_size).to("cuda" if torch.cuda.is_available() else "cpu")
        data = replace(profile.data, img_size=img_size, val_size=max(images, profile.data.val_size))
        run, scale = None, "pretrained"
    scenes = render_scenes(data, "val", np.arange(min(images, data.val_size)))
    feats = collect(model, scenes.image, scenes.label, attn=True, batch_size=32)
    visual = scenes.image[:4] if pretrained is None else photos(img_size)
    return Subject(name, scale, model, feats, scenes, data, peak_layer(feats), run, visual, count_parameters(model))


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
    bg = background_patches(subject.scenes.seg, subject.model.cfg.patch_size)
    return {"layer": subject.layer, "share": out.share, "norm_ratio": out.norm_ratio,
            "ratio_mean": float(per_image.mean()), "ratio_max": float(per_image.max()),
            **top_token_placement(subject.feats, bg, subject.layer)}


def share_per_layer(subject: Subject, k: float = OUTLIER_K) -> Tensor:
    """``(L,)``: per block, the share of patch tokens above ``k`` x their image's median norm."""
    return torch.tensor([detect_outliers(subject.feats, i, k).share for i in range(subject.model.cfg.depth)])


def layer_norms(subject: Subject) -> dict[str, Tensor]:
    """Token norms at the subject's peak block: ``patch``, ``cls``, ``reg``."""
    return {kind: t.norm(dim=-1) for kind, t in tokens_at(subject.feats, subject.layer).items()}


def sinks(subject: Subject) -> pd.DataFrame:
    """Per block, the strongest attention sink: ``sink_mass`` (its share of the patch queries'
    attention), ``sink_on`` (``cls``, ``reg`` or ``patch``) and ``same_token`` (how often it is the
    same token across images)."""
    rows = sink_summary(subject.feats.attn, subject.model.cfg) if subject.feats.attn is not None else []
    return pd.DataFrame([{"block": i, "sink_mass": r["mass"], "sink_on": max(r["kind"], key=r["kind"].get),
                          "same_token": r["fixed"]} for i, r in enumerate(rows)])


def dense_table(subjects: list[Subject], seed: int = 0) -> pd.DataFrame:
    """The paper's Table 2 for our subjects: ``classification``, ``segmentation_miou``, ``depth_rmse``."""
    return pd.DataFrame([{"model": s.name, **dense_probes(s.feats, s.scenes.seg, s.scenes.depth,
                                                         num_seg_classes=1 + len(s.data.shapes), seed=seed).as_dict()}
                         for s in subjects])


def object_discovery(subjects: list[Subject]) -> pd.DataFrame:
    """The paper's Table 3 for our subjects: LOST boxes from the last layer's keys, CorLoc."""
    boxes = [lost(lost_keys(s.model, s.feats), s.feats.grid, s.model.cfg.patch_size) for s in subjects]
    return pd.DataFrame([{"model": s.name, "corloc": corloc(b, s.scenes.boxes, s.scenes.box_valid)}
                         for s, b in zip(subjects, boxes)])


def register_maps(subject: Subject, features: Features | None = None, layer: int = -1) -> dict[str, Tensor]:
    """Fig. 9 / Fig. 1: attention of [CLS] and of each register to the patches, and PCA colours.

    Args:
        features: the features whose maps are drawn (default: the subject's scenes); e.g.
            ``collect(subject.model, subject.visual)`` for photographs.
    """
    f = subject.feats if features is None else features
    queries: dict[str, str | int] = {"[CLS]": "cls"} if f.cfg.class_token else {}
    queries |= {f"register {r}": r for r in range(f.cfg.num_registers)}
    maps = {name: attention_to_patches(f, query, layer) for name, query in queries.items()}
    return maps | {"PCA of patches": pca_rgb(tokens_at(f, "final")["patch"], f.grid)}


def local_and_global(subject: Subject, features: Features | None = None, k: float = OUTLIER_K,
                     seed: int = 0) -> dict[str, float]:
    """Fig. 5b and Table 1 in one record: position / pixel probes and single-token class probes
    (:func:`regvit_lib.probes.probe_summary`)."""
    f = subject.feats if features is None else features
    return probe_summary(f, detect_outliers(f, subject.layer, k), subject.layer, seed)


def neighbour_table(subject: Subject, features: Features | None = None, k: float = OUTLIER_K) -> dict[str, Tensor]:
    """Fig. 5a's data: every patch's neighbour similarity and the outlier mask at the subject's layer."""
    f = subject.feats if features is None else features
    return {"similarity": neighbour_similarity(f), "outlier_mask": detect_outliers(f, subject.layer, k).mask}


def planted(subject: Subject) -> Features | None:
    """The positive control: the subject's scenes with outliers planted at its block (our models
    only; ``None`` for a pretrained model, which has the real thing).

    See :func:`regvit_lib.analysis.positive_control`: 2 random patch tokens per image are
    replaced by the image's mean patch token at 10 x the median norm (its defaults).
    """
    return None if subject.run is None else positive_control(subject.model, *subject.scenes[:2], subject.layer)[1]


def size_ladder(profile: Profile) -> list[int]:
    """Widths for the model-size figure (Fig. 4c): half, once and 1.5x the profile's width."""
    d, h = profile.model.embed_dim, profile.model.num_heads
    return [w for w in (d // 2, d, d * 3 // 2) if w % h == 0 and w >= h]


def size_sweep(profile: Profile, pretrained: str | None = None, images: int = 200,
               k: float = OUTLIER_K) -> list[dict[str, Any]]:
    """Fig. 4c: the norm report of models of several sizes, smallest first.

    Our models: the profile's at the widths of :func:`size_ladder` (same depth, recipe, seed;
    through the cache). Pretrained DINOv2: the S, B, L and g models of the same kind (with or
    without registers). One model at a time: each is freed before the next is loaded.
    """
    if pretrained is None:
        return [_size_row(f"D={w}", load_subject(profile, images=images, embed_dim=w), k) for w in size_ladder(profile)]
    registers = int("_reg4_" in resolve(pretrained))
    return [_size_row(f"DINOv2-{size.upper()}", load_subject(profile, registers, f"dinov2-{size}", images), k)
            for size in "sblg"]


def _size_row(name: str, subject: Subject, k: float) -> dict[str, Any]:
    return {"name": name, "params": subject.params, **norm_report(subject, k)}
