"""Training, nanoGPT-style: one config, a pure learning-rate schedule, one loop.

The recipe follows DeiT-III (Touvron et al. 2022) in miniature: AdamW, linear warm-up then
cosine decay, gradient clipping, random horizontal flips, optional Mixup/CutMix, label
smoothing or DeiT-III's binary cross-entropy, and (in the model config) stochastic depth and
LayerScale. On a GPU it trains in bf16 autocast and compiles the model; on a CPU both are off
and nothing changes. ``objective="dino"`` swaps the supervised loss for the small
self-distillation of :mod:`regvit_lib.selfsup` (no labels; the EMA teacher is the model kept).

Every ``eval_every`` steps (and at step 0) the loop evaluates on the validation split and
records, per layer, the token-norm and attention-sink summaries of
:mod:`regvit_lib.analysis`: the curves behind "outliers appear during training" (Fig. 4b).

Runs go through the cache (:mod:`regvit_lib.cache`): a finished configuration is loaded, an
interrupted one resumes from its last checkpoint and ends bit-for-bit where an uninterrupted
run would (on the same device), a corrupt file is set aside and only that run is retrained.
Determinism comes from making every random choice a function of ``(seed, step)``: the batch
indices, the flips and mixes, and the global RNG that drop-path draws from are all re-seeded
at each step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .summaries import norm_summary, sink_summary, token_norms
from .cache import CacheCorruptError, RunStore
from .config import ConfigError, ModelConfig, _check_choice, _check_int
from .data import DataConfig, DataSource, FractalConfig, ScenesConfig, batch_indices, make_source, normalize
from .model import RegViT, build_model, count_parameters
from .selfsup import Dino, knn_accuracy

__all__ = ["TrainConfig", "RunConfig", "TrainedRun", "get_lr", "train", "evaluate"]

Switch = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: optimiser, schedule, regularisation, and how often to evaluate/checkpoint."""

    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate, after warm-up
    min_lr: float = 1e-5  # end of the cosine
    warmup_steps: int = 30
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    objective: Literal["supervised", "dino"] = "supervised"  # "dino": self-distillation, no labels
    loss: Literal["ce", "bce"] = "ce"  # "bce": DeiT-III's binary cross-entropy on (mixed) targets
    label_smoothing: float = 0.0
    hflip: bool = True  # random horizontal flips (labels of scenes are flip-invariant)
    mixup: float = 0.0  # Beta(a, a) Mixup; 0 = off (DeiT-III: 0.8)
    cutmix: float = 0.0  # Beta(a, a) CutMix; 0 = off (DeiT-III: 1.0). With both on, one per batch
    eval_every: int = 50  # evaluate (and record norm/sink curves) every this many steps
    eval_images: int = 512  # validation images per evaluation (the final one uses the whole split)
    stats_images: int = 64  # images whose every token norm and attention map are summarised
    checkpoint_every: int = 100  # steps between checkpoints (resume points)
    dino_dim: int = 256  # DINO: number of prototypes of the head
    dino_momentum: float = 0.99  # DINO: teacher EMA momentum at the start, cosine to 1 (DINO: 0.996 over
    # hundreds of epochs; with a few hundred steps 0.996 leaves the teacher near its random init)
    knn_images: int = 2_048  # DINO: labelled training images in the k-NN evaluation's bank
    amp: Switch = "auto"  # bf16 autocast: "auto" = on CUDA only
    compile: Switch = "auto"  # torch.compile: "auto" = on CUDA only

    def __post_init__(self) -> None:
        for name, minimum in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("eval_every", 1),
                              ("eval_images", 1), ("stats_images", 1), ("checkpoint_every", 1),
                              ("dino_dim", 2), ("knn_images", 1)):
            _check_int(name, getattr(self, name), minimum)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "label_smoothing", "mixup", "cutmix"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.lr > 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 < min_lr <= lr, got lr={self.lr!r}, min_lr={self.min_lr!r}")
        if not self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be < 1, got {self.label_smoothing!r}")
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        _check_choice("loss", self.loss, Literal["ce", "bce"])
        _check_choice("objective", self.objective, Literal["supervised", "dino"])
        if not 0 <= self.dino_momentum < 1:
            raise ConfigError(f"dino_momentum must be in [0, 1), got {self.dino_momentum!r}")
        if self.objective == "dino" and (self.mixup or self.cutmix or self.label_smoothing or self.loss != "ce"):
            raise ConfigError("objective='dino' uses no labels: mixup, cutmix, label_smoothing and loss do not apply")
        _check_choice("amp", self.amp, Switch)
        _check_choice("compile", self.compile, Switch)


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a trained model: architecture, data, recipe, seed (the cache key)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=ScenesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        if self.model.img_size != self.data.img_size:
            raise ConfigError(f"model img_size={self.model.img_size} but data img_size={self.data.img_size}")
        if (isinstance(self.data, (ScenesConfig, FractalConfig)) and self.train.objective == "supervised"
                and self.model.num_classes != self.data.num_classes):
            raise ConfigError(f"model num_classes={self.model.num_classes} but the {self.data.kind} have "
                              f"{self.data.num_classes} classes")
        if self.train.objective == "dino":
            if self.model.num_classes != 0:
                raise ConfigError(f"objective='dino' trains no classifier: set num_classes=0, got "
                                  f"{self.model.num_classes}")
        elif self.model.num_classes == 0:
            raise ConfigError("supervised training needs num_classes >= 1")


@dataclass
class TrainedRun:
    """A trained model with everything measured while it trained."""

    model: RegViT
    config: RunConfig
    key: str
    metrics: dict[str, Any]  # final numbers: accuracies, losses, timings, FLOPs
    curves: list[dict[str, Any]]  # one record per evaluation (step 0, every eval_every, the end)
    path: Path  # the run's folder in the cache
    cached: bool  # loaded from the cache rather than trained now
    seconds: float  # wall time of this call (training or loading)


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr``, then cosine down to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63)


def _augment(x: Tensor, y: Tensor, cfg: TrainConfig, num_classes: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip, then Mixup or CutMix; returns images and soft targets ``(B, num_classes)``."""
    B = x.shape[0]
    if cfg.hflip:
        flip = (torch.rand(B, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    eps = cfg.label_smoothing
    target = F.one_hot(y, num_classes).float() * (1 - eps) + eps / num_classes  # (B, C)
    modes = [m for m, a in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if a > 0]
    if modes:
        mode = modes[int(torch.randint(len(modes), (1,), generator=gen))]
        alpha = cfg.mixup if mode == "mixup" else cfg.cutmix
        lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen))).beta(alpha, alpha))
        if mode == "mixup":
            x = lam * x + (1 - lam) * x.flip(0)
        else:  # paste a box of the batch-reversed images; lam = the area left untouched
            H, W = x.shape[-2:]
            h, w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
            cy, cx = (int(torch.randint(n, (1,), generator=gen)) for n in (H, W))
            y0, y1, x0, x1 = max(cy - h // 2, 0), min(cy + h // 2, H), max(cx - w // 2, 0), min(cx + w // 2, W)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
        target = lam * target + (1 - lam) * target.flip(0)
    return x, target


def _loss(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


@torch.no_grad()
def evaluate(model: RegViT, source: DataSource, split: str, num_images: int, batch_size: int,
             device: torch.device, stats_images: int = 0, knn_images: int = 2_048) -> dict[str, Any]:
    """Loss and top-1 accuracy on the first ``num_images`` of ``split``, and optionally the
    per-layer norm/sink summaries of the first ``stats_images`` of them.

    A model without a head (``num_classes=0``, DINO) has no loss (``None``); its accuracy is
    the k-NN accuracy with ``knn_images`` training images as the bank.
    """
    was_training = model.training
    model.eval()
    n = min(num_images, source.split_size(split))
    out: dict[str, Any]
    if model.cfg.num_classes == 0:
        out = {"loss": None, "acc": knn_accuracy(model, source, split, n, knn_images, batch_size, device)}
    else:
        loss = correct = 0.0
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            x, y = source.batch(split, idx, device)
            logits = model(normalize(x)).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(-1) == y).sum())
        out = {"loss": loss / n, "acc": correct / n}
    if stats_images:
        x, _ = source.batch(split, np.arange(min(stats_images, n)), device)
        feats = model.forward_features(normalize(x), return_blocks=True, return_attn=True)
        out["norms"] = norm_summary({k: v.cpu() for k, v in token_norms(feats["blocks"], model.cfg).items()})
        out["sinks"] = sink_summary(feats["attn"].cpu(), model.cfg)
    model.train(was_training)
    return out


def _resolve(switch: str, device: torch.device) -> bool:
    return switch == "on" or (switch == "auto" and device.type == "cuda")


def train(run: RunConfig, *, root: Path | str | None = None, device: str | torch.device | None = None,
          progress: bool | None = None, on_step: Callable[[int], None] | None = None) -> TrainedRun:
    """Train ``run``, or load it from the cache if it was trained before.

    Args:
        run: the full configuration; its hash is the cache key.
        root: cache folder (default :func:`regvit_lib.cache.cache_root`).
        device: ``"cuda"`` / ``"cpu"``; default CUDA when available.
        progress: show a progress bar (default: on, unless ``$REGVIT_PROGRESS=0``).
        on_step: called after every optimiser step with the number of steps done (tests use it
            to interrupt a run).

    Returns:
        The :class:`TrainedRun`, with the model in eval mode on ``device``.
    """
    t0 = time.perf_counter()
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    show = progress if progress is not None else os.environ.get("REGVIT_PROGRESS", "1") != "0"
    store = RunStore(run, root)
    if store.is_complete():
        try:
            state, result = store.load_result()
            model = build_model(run.model, seed=run.seed, device=dev)
            model.load_state_dict(state)
            return TrainedRun(model.eval(), run, store.key, result["metrics"], result["curves"], store.dir,
                              cached=True, seconds=time.perf_counter() - t0)
        except CacheCorruptError as e:
            moved = [store.set_aside(p) for p in (e.path, store.result_path)]
            warnings.warn(f"{e}; set aside as {[str(m) for m in moved if m]} and retraining this run",
                          stacklevel=2)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if dev.type == "cuda" else []):
        return _fit(run, store, dev, show, on_step, t0)


def _fit(run: RunConfig, store: RunStore, dev: torch.device, show: bool,
         on_step: Callable[[int], None] | None, t0: float) -> TrainedRun:
    from .flops import count_flops  # local: only training needs the FLOP counter

    cfg = run.train
    source = make_source(run.data)
    model = build_model(run.model, seed=run.seed, device=dev)
    use_amp, use_compile = _resolve(cfg.amp, dev), _resolve(cfg.compile, dev)
    step_fn: Callable[[Tensor], Tensor] = torch.compile(model) if use_compile else model
    dino = Dino(model, cfg.dino_dim, cfg.dino_momentum, cfg.steps, step_fn) if cfg.objective == "dino" else None
    named = list(model.named_parameters()) + ([] if dino is None else list(dino.head.named_parameters(prefix="dino")))
    # Weight decay on the matrices only: not on biases, norms, LayerScale, tokens or positions.
    decayed = {n: p.ndim >= 2 and "token" not in n and "pos_embed" not in n for n, p in named}
    opt = torch.optim.AdamW([
        {"params": [p for n, p in named if decayed[n]], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if not decayed[n]], "weight_decay": 0.0},
    ], lr=cfg.lr, betas=cfg.betas)
    # The model that is evaluated, summarised and kept: DINO's teacher, else the model itself.
    kept = model if dino is None else dino.teacher
    start, curves, acc = 0, [], {"loss": 0.0, "correct": 0.0, "seen": 0, "data_s": 0.0, "step_s": 0.0}
    if store.checkpoint_path.exists():
        try:
            ck = store.load_tensors(store.checkpoint_path)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            if dino is not None:
                dino.load_state_dict(ck["dino"])
            start, curves, acc = int(ck["step"]), json.loads(ck["curves"]), json.loads(ck["acc"])
        except (CacheCorruptError, KeyError, RuntimeError, ValueError) as e:
            moved = store.set_aside(store.checkpoint_path)
            warnings.warn(f"unusable checkpoint {store.checkpoint_path} ({e}); set aside as {moved}, "
                          "training this run from the start", stacklevel=3)
            return _fit(run, store, dev, show, on_step, t0)
    store.save_json(store.config_path, {"key": store.key, **store.doc})
    # forward + backward ~ 3x forward; DINO: the student on 2 views (2 x 3) and the teacher (2 x 1)
    flops_per_image = (3 if dino is None else 8) * count_flops(run.model)
    n_train, C = source.split_size("train"), run.model.num_classes

    def record(step: int) -> None:
        ev = evaluate(kept, source, "val", cfg.eval_images, cfg.batch_size, dev, cfg.stats_images, cfg.knn_images)
        seen = max(acc["seen"], 1)
        curves.append({"step": step, "images": step * cfg.batch_size, "train_flops": step * cfg.batch_size * flops_per_image,
                       "lr": get_lr(step, cfg), "train_loss": acc["loss"] / seen if acc["seen"] else None,
                       "train_acc": acc["correct"] / seen if acc["seen"] and dino is None else None,
                       "val_loss": ev["loss"], "val_acc": ev["acc"], "norms": ev["norms"], "sinks": ev["sinks"]})
        acc.update(loss=0.0, correct=0.0, seen=0)

    if start == 0:
        record(0)
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, disable=not show, file=sys.stderr, dynamic_ncols=True,
               desc=f"train {store.key[:8]}", unit="step")
    for step in range(start, cfg.steps):
        tic = time.perf_counter()
        torch.manual_seed(_step_seed(run.seed, step))  # drop-path and any other global draw
        gen = torch.Generator().manual_seed(_step_seed(run.seed, step))
        x, y = source.batch("train", batch_indices(n_train, cfg.batch_size, run.seed, step), dev)
        if dino is None:
            x, target = _augment(x, y, cfg, C, gen)
        tdata = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = get_lr(step, cfg)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            if dino is None:
                logits = step_fn(normalize(x))
                loss = _loss(logits.float(), target, cfg.loss)
            else:
                loss = dino.loss(x, gen)  # two views of x; labels unused
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], cfg.grad_clip)
        opt.step()
        if dino is not None:
            dino.update_teacher(step)
        else:
            acc["correct"] += float((logits.argmax(-1) == y).sum())
        acc["loss"] += loss.item() * len(y)
        acc["seen"] += len(y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        toc = time.perf_counter()
        acc["data_s"] += tdata - tic
        acc["step_s"] += toc - tic
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc['correct'] / max(acc['seen'], 1):.2f}" if dino is None else "-",
                        img_s=f"{len(y) / (toc - tic):.0f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            record(done)
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            store.save_tensors(store.checkpoint_path, {
                "model": model.state_dict(), "opt": opt.state_dict(), "step": done,
                "curves": json.dumps(curves), "acc": json.dumps(acc),
                **({} if dino is None else {"dino": dino.state_dict()})})
        if on_step is not None:
            on_step(done)
    bar.close()
    model.eval()
    final = {split: evaluate(kept, source, split, source.split_size(split), cfg.batch_size, dev,
                             knn_images=cfg.knn_images) for split in ("val", "test")}
    trained_images = cfg.steps * cfg.batch_size
    metrics = {
        "val_acc": final["val"]["acc"], "val_loss": final["val"]["loss"],
        "test_acc": final["test"]["acc"], "test_loss": final["test"]["loss"],
        "params": count_parameters(model), "objective": cfg.objective, "flops_per_image": flops_per_image, "train_images": trained_images,
        "train_flops": trained_images * flops_per_image,
        # Wall time of the optimiser steps (batches included), summed over resumes; evals excluded.
        "train_seconds": acc["step_s"], "data_seconds": acc["data_s"],
        "train_img_per_s": trained_images / max(acc["step_s"], 1e-9),
        "resumed_from": start, "device": str(dev), "torch": torch.__version__,
    }
    store.save_result({k: v.detach().cpu() for k, v in kept.state_dict().items()},
                      {"metrics": metrics, "curves": curves})
    return TrainedRun(kept.eval(), run, store.key, metrics, curves, store.dir, cached=False,
                      seconds=time.perf_counter() - t0)

