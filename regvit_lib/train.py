"""Training, nanoGPT-style: one config, a pure learning-rate schedule, one loop.

The recipe follows DeiT-III (Touvron et al. 2022) in miniature: AdamW, linear warm-up then
cosine decay, gradient clipping, random horizontal flips, optional Mixup/CutMix, label
smoothing or DeiT-III's binary cross-entropy, and (in the model config) stochastic depth and
LayerScale. On a GPU it trains in 16-bit autocast (:func:`precision`: bf16, or fp16 with a
gradient scaler on GPUs without fast bf16) and compiles the model; on a CPU both are off and
nothing changes. Under ``torchrun`` the processes train each step together
(:mod:`regvit_lib.distributed`). ``objective="dino"`` swaps the supervised loss for the small
self-distillation of :mod:`regvit_lib.selfsup` (no labels; the EMA teacher is the model kept).

Every ``eval_every`` steps (and at step 0) the loop evaluates on the validation split and
records, per layer, the token-norm and attention-sink summaries of
:mod:`regvit_lib.summaries`: the curves behind "outliers appear during training" (Fig. 4b).

Runs go through the cache (:mod:`regvit_lib.cache`): a finished configuration is loaded, an
interrupted one resumes from its last checkpoint and ends bit-for-bit where an uninterrupted
run would (on the same device), a corrupt file is set aside and only that run is retrained.
Determinism comes from making every random choice a function of ``(seed, step)``: the batch
indices, the flips and mixes, and the global RNG that drop-path draws from are all re-seeded
at each step. On a CPU the run also trains with its own number of threads
(``TrainConfig.cpu_threads``, whatever the caller's): a matrix product split over another number of
threads adds its terms in another order, and over hundreds of steps that rounding grows into other
weights. So a seed gives the same run whether ``prepare``'s one-thread workers, a chapter or a test
trained it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from . import distributed
from .cache import CacheCorruptError, Store, set_aside
from .config import ConfigError, Mamba, ModelConfig, RunConfig, TrainConfig
from .data import DataSource, batch_indices, make_source, normalize
from .model import Encoder, RegViT, build_model, count_parameters
from .selfsup import Dino, knn_accuracy
from .summaries import norm_summary, received_attention, sink_summary, token_norms

__all__ = ["TrainedRun", "get_lr", "train", "evaluate", "precision", "TRAIN_CODE", "run_code", "run_store"]

# The modules whose code decides what a trained run contains: part of every run's cache key.
TRAIN_CODE = ("config.py", "model.py", "scenes.py", "data.py", "train.py", "selfsup.py", "summaries.py",
              "distributed.py")


def run_code(cfg: ModelConfig) -> tuple[str, ...]:
    """The code in a run's key: :data:`TRAIN_CODE`, and the module of its variant if it has one
    (editing a compared method retrains that method's runs, not the book's ViTs)."""
    if cfg.variant is None:
        return TRAIN_CODE
    return TRAIN_CODE + ("variants.py",) + (("mamba.py",) if isinstance(cfg.variant, Mamba) else ())


def run_store(run: RunConfig, root: Path | str | None = None) -> Store:
    """The cache entry of a trained run."""
    return Store("runs", run, run_code(run.model), root)

@dataclass
class TrainedRun:
    """A trained model with everything measured while it trained."""

    model: Encoder
    config: RunConfig
    key: str
    metrics: dict[str, Any]  # final numbers: accuracies, losses, timings, FLOPs
    curves: list[dict[str, Any]]  # one record per evaluation (step 0, every eval_every, the end)
    path: Path  # the run's folder in the cache
    cached: bool  # loaded from the cache rather than trained now
    seconds: float  # wall time of this call (training or loading)

    @property
    def vit(self) -> RegViT:
        """The model as the book's ViT; a compared method that is not one raises ``TypeError``."""
        if not isinstance(self.model, RegViT):
            raise TypeError(f"run {self.key[:8]} is a {type(self.model).__name__}, not a RegViT")
        return self.model


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr``, then cosine down to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63)


def _augment(x: Tensor, y: Tensor, cfg: TrainConfig, num_classes: int, gen: torch.Generator,
             mine: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """Flip, then timm's Mixup or CutMix (one per batch); returns images and soft targets ``(B, num_classes)``.

    ``mine``: the positions of ``x``'s images in the global batch of ``cfg.batch_size`` (one process
    of several); the flips are then drawn for the whole batch and indexed, so every process draws
    what one process would. ``None``: ``x`` is the whole batch.
    """
    from timm.data.mixup import Mixup, mixup_target

    if cfg.hflip:
        draw = torch.rand(x.shape[0] if mine is None else cfg.batch_size, generator=gen)
        flip = (draw if mine is None else draw[torch.from_numpy(mine)]) < 0.5
        flip = flip.to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if not (cfg.mixup or cfg.cutmix):
        return x, mixup_target(y, num_classes, smoothing=cfg.label_smoothing)
    mix = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                num_classes=num_classes)
    state = np.random.get_state()  # timm draws from numpy's global generator: seed it from this step
    np.random.seed(int(torch.randint(2**31, (1,), generator=gen)))
    try:
        return mix(x.clone(), y)
    finally:
        np.random.set_state(state)


def _loss(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


@torch.no_grad()
def evaluate(model: Encoder, source: DataSource, split: str, num_images: int, batch_size: int,
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
        out["sinks"] = (sink_summary(received_attention(feats["attn"], model.cfg.num_prefix_tokens).cpu(), model.cfg)
                        if "attn" in feats else None)  # a model without attention maps (Mamba, H-MHSA)
    model.train(was_training)
    return out


def _resolve(switch: str, device: torch.device) -> bool:
    return switch == "on" or (switch == "auto" and device.type == "cuda")


def precision(switch: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that ``TrainConfig.amp`` gives on ``device`` (``None``: fp32).

    bf16 where the device computes it natively (a CPU with ``amp="on"``; a GPU of compute capability
    8.0 or more: A100, H100, L4, RTX 30xx and later); fp16 on older GPUs (T4, V100), with a gradient
    scaler in the loop.
    """
    if not _resolve(switch, device):
        return None
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return torch.float16
    return torch.bfloat16


def train(run: RunConfig, *, root: Path | str | None = None, device: str | torch.device | None = None,
          progress: bool | None = None, on_step: Callable[[int], None] | None = None,
          accumulate: int | None = None) -> TrainedRun:
    """Train ``run``, or load it from the cache if it was trained before.

    Args:
        run: the full configuration; its hash is the cache key.
        root: cache folder (default :func:`regvit_lib.cache.cache_root`).
        device: ``"cuda"`` / ``"cpu"``; default CUDA when available (under ``torchrun``, the GPU of
            this process's ``LOCAL_RANK``: see :mod:`regvit_lib.distributed`).
        progress: show a progress bar (default: on, unless ``$REGVIT_PROGRESS=0``).
        on_step: called after every optimiser step with the number of steps done (tests use it
            to interrupt a run).
        accumulate: split each process's share of every batch into this many equal micro-batches,
            one forward and backward pass each, and step once (gradient accumulation: the same
            step, up to summation order, in less memory). Default: 1 on a CPU; on a GPU the fewest
            that fit in its memory (:func:`regvit_lib.memory.accumulation`), which stops with the
            batch that would fit when none does. Not part of the cache key, like the process count.
            Drop-path draws its masks per micro-batch (the same law as one pass, other draws); a
            loss that reads the whole batch (:func:`~regvit_lib.distributed.whole_batch_losses`:
            DINO, A-ViT) is refused.

    Returns:
        The :class:`TrainedRun`, with the model in eval mode on ``device``.

    Under ``torchrun`` (an initialised process group, :func:`regvit_lib.distributed.init_from_env`)
    every process calls this with the same ``run``: each trains on its slice of every batch, and
    rank 0 alone writes the cache. The key is the same as one process's: a run trained on N
    processes is found in the cache by one, and the reverse.
    """
    t0 = time.perf_counter()
    world = distributed.current()
    distributed.check_run(run, world)
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    show = progress if progress is not None else os.environ.get("REGVIT_PROGRESS", "1") != "0"
    store = run_store(run, root)
    if not world.main:  # rank 0 looks first: it alone sets a corrupt entry aside
        distributed.barrier(world)
    stored = store.load_or_set_aside(weights=True)  # a run's entry without its weights is corrupt
    if world.main:
        distributed.barrier(world)
    if stored is not None and (state := stored[1]) is not None:
        result = stored[0]
        model = build_model(run.model, seed=run.seed, device=dev)
        model.load_state_dict(state)
        return TrainedRun(model.eval(), run, store.key, result["metrics"], result["curves"], store.dir,
                          cached=True, seconds=time.perf_counter() - t0)
    local = run.train.batch_size // world.size
    if accumulate is None and dev.type == "cuda":  # before any compute: the step must fit in this GPU's memory
        from .memory import accumulation

        accumulate = accumulation(run, torch.cuda.get_device_properties(dev).total_memory, world.size,
                                  torch.cuda.get_device_name(dev), half=precision(run.train.amp, dev) is not None)
    accumulate = 1 if accumulate is None else accumulate
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1 or local % accumulate:
        raise ConfigError(f"accumulate={accumulate!r} must be an int >= 1 that divides the {local} images per process")
    if accumulate > 1 and (whole := distributed.whole_batch_losses(run)):
        raise ConfigError(f"accumulate={accumulate}: {', '.join(whole)} reads the whole batch at once; "
                          "train it in one pass")
    with (torch.random.fork_rng(devices=[torch.cuda.current_device()] if dev.type == "cuda" else []),
          _threads(run.train.cpu_threads if dev.type == "cpu" else None)):
        return _fit(run, store, dev, show and world.main, on_step, t0, world, accumulate)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then give the caller back its own (``None``: leave them)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(run: RunConfig, store: Store, dev: torch.device, show: bool, on_step: Callable[[int], None] | None,
         t0: float, world: distributed.World, accumulate: int = 1) -> TrainedRun:
    from .flops import count_flops  # local: only training needs the FLOP counter

    cfg = run.train
    source = make_source(run.data)
    model = build_model(run.model, seed=run.seed, device=dev)
    amp_dtype, use_compile = precision(cfg.amp, dev), _resolve(cfg.compile, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)  # fp16 only: a no-op else
    step_fn: Callable[[Tensor], Tensor] = torch.compile(model) if use_compile else model
    torch.manual_seed(run.seed)  # the DINO head's initial weights follow the run's seed, as the model's do
    dino = Dino(model, cfg.dino_dim, cfg.dino_momentum, cfg.steps, step_fn) if cfg.objective == "dino" else None
    named = list(model.named_parameters()) + ([] if dino is None else list(dino.head.named_parameters(prefix="dino")))
    # Weight decay on the matrices only: not on biases, norms, LayerScale, tokens or positions.
    skip = model.no_weight_decay()
    decayed = {n: p.ndim >= 2 and n not in skip for n, p in named}
    opt = torch.optim.AdamW([
        {"params": [p for n, p in named if decayed[n]], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if not decayed[n]], "weight_decay": 0.0},
    ], lr=cfg.lr, betas=cfg.betas)
    # The model that is evaluated, summarised and kept: DINO's teacher, else the model itself.
    kept = model if dino is None else dino.teacher
    params = [p for group in opt.param_groups for p in group["params"]]
    start, curves, acc = 0, [], {"loss": 0.0, "correct": 0.0, "seen": 0, "data_s": 0.0, "step_s": 0.0}
    failed: Exception | None = None
    if store.checkpoint_path.exists():  # every process resumes from the same file
        try:
            ck = store.load_tensors(store.checkpoint_path)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            if dino is not None:
                dino.load_state_dict(ck["dino"])
            if "scaler" in ck:
                scaler.load_state_dict(ck["scaler"])
            start, curves, acc = int(ck["step"]), json.loads(ck["curves"]), json.loads(ck["acc"])
        except (CacheCorruptError, KeyError, RuntimeError, ValueError) as e:
            failed = e
    if distributed.broadcast_flag(failed is not None, world, dev):
        if world.main:
            moved = set_aside(store.checkpoint_path)
            warnings.warn(f"unusable checkpoint {store.checkpoint_path} ({failed or 'unreadable on another process'}); "
                          f"set aside as {moved}, training this run from the start", stacklevel=3)
        distributed.barrier(world)
        return _fit(run, store, dev, show, on_step, t0, world, accumulate)
    if world.main:
        store.save_json(store.config_path, {"key": store.key, **store.doc})
    paired = bool(cfg.mixup or cfg.cutmix)
    mine = distributed.positions(cfg.batch_size, world, paired)  # this process's images of every batch
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
        x, y = source.batch("train", batch_indices(n_train, cfg.batch_size, run.seed, step)[mine], dev)
        target = y
        if dino is None:
            x, target = _augment(x, y, cfg, C, gen, mine)
        tdata = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = get_lr(step, cfg)
        opt.zero_grad(set_to_none=True)
        losses, outputs = [], []
        for xs, ts in zip(x.chunk(accumulate), target.chunk(accumulate)):  # one chunk unless accumulating
            with torch.autocast(dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                if dino is None:
                    logits = step_fn(normalize(xs))
                    loss = _loss(logits.float(), ts, cfg.loss)
                    if model.aux_loss is not None:  # a method's own training term (A-ViT's ponder cost and prior)
                        loss = loss + model.aux_loss
                    outputs.append(logits.detach())
                else:
                    loss = dino.loss(xs, gen)  # two views of x; labels unused
            scaler.scale(loss if accumulate == 1 else loss / accumulate).backward()
            losses.append(loss.detach())
        loss = losses[0] if accumulate == 1 else torch.stack(losses).mean()  # equal chunks: the batch's mean
        if outputs:  # supervised: the logits of the whole share, for the accuracy
            logits = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        distributed.average_gradients(params, world)  # the mean over processes: the whole batch's gradient
        scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        if dino is not None:
            dino.update_teacher(step)
        correct = 0.0 if dino is not None else float((logits.argmax(-1) == y).sum())
        loss_sum, correct, seen = distributed.all_sum([loss.item() * len(y), correct, len(y)], world, dev)
        acc["loss"] += loss_sum
        acc["correct"] += correct
        acc["seen"] += int(seen)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        toc = time.perf_counter()
        acc["data_s"] += tdata - tic
        acc["step_s"] += toc - tic
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc['correct'] / max(acc['seen'], 1):.2f}" if dino is None else "-",
                        img_s=f"{seen / (toc - tic):.0f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            record(done)
        if done % cfg.checkpoint_every == 0 and done < cfg.steps and world.main:
            store.save_tensors(store.checkpoint_path, {
                "model": model.state_dict(), "opt": opt.state_dict(), "step": done,
                "curves": json.dumps(curves), "acc": json.dumps(acc),
                **({} if dino is None else {"dino": dino.state_dict()}),
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})})
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
        "resumed_from": start, "device": str(dev), "torch": torch.__version__, "processes": world.size,
        "accumulation": accumulate,
        "precision": str(amp_dtype or torch.float32).removeprefix("torch."),
    }
    if world.main:
        store.save_result({"metrics": metrics, "curves": curves},
                          {k: v.detach().cpu() for k, v in kept.state_dict().items()})
    distributed.barrier(world)
    return TrainedRun(kept.eval(), run, store.key, metrics, curves, store.dir, cached=False,
                      seconds=time.perf_counter() - t0)

