"""Data-parallel training over several processes, as ``torchrun --nproc_per_node=N`` starts them.

One process per GPU (NCCL), or several on one CPU (gloo). Every process runs the same training
loop (:func:`regvit_lib.train.train`) on the same global batch; each renders and trains on its own
slice of it, the gradients are averaged over the processes before the optimiser step, and rank 0
alone writes the cache, the checkpoints and the progress. Nothing here changes a single-process
run: :func:`current` is ``World(0, 1)`` and every helper then returns its input.

Why the result matches one process on the same global batch: the loss is the mean over a rank's
equal slice, so the average of the ranks' gradients is the gradient of the mean over the whole
batch; every random draw of a step (flips, Mixup's pairing) is made for the whole batch from the
step's seed and indexed by the rank's positions. What differs is only the order of floating-point
sums (tests/test_distributed.py states the tolerance).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .config import AViT, ConfigError, RunConfig

__all__ = ["World", "current", "init_from_env", "leave", "splits", "positions", "average_gradients", "all_sum",
           "barrier", "broadcast_flag", "check_run"]


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes (rank 0)."""
        return self.rank == 0


def current() -> World:
    """The world of an initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env() -> World:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment): NCCL
    when this machine has CUDA, else gloo; on a GPU, each process takes the one ``LOCAL_RANK`` names.
    Without ``torchrun`` (no ``WORLD_SIZE``, or 1) nothing happens. Returns :func:`current`."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return current()


def leave() -> None:
    """Wait for every process, then leave the process group: what follows is one process's work."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def splits(run: RunConfig, world: World) -> bool:
    """Whether ``run`` can be trained over ``world`` (:func:`check_run` accepts it)."""
    try:
        check_run(run, world)
    except ConfigError:
        return False
    return True


def check_run(run: RunConfig, world: World) -> None:
    """Refuse, before any compute, what cannot be split over ``world.size`` processes exactly.

    Raises:
        ConfigError: the batch does not divide over the processes (in pairs with Mixup/CutMix), or the
            run uses a part whose randomness or loss is not split per image (drop-path, and
            :func:`whole_batch_losses`: DINO, A-ViT).
    """
    if world.size == 1:
        return
    cfg, b = run.train, run.train.batch_size
    pairs = 2 if (cfg.mixup or cfg.cutmix) else 1
    if b % (pairs * world.size):
        raise ConfigError(f"batch_size={b} does not split over {world.size} processes"
                          + (" in pairs (Mixup/CutMix)" if pairs == 2 else "")
                          + f": use a multiple of {pairs * world.size}")
    if bad := (["drop_path_rate > 0"] if run.model.drop_path_rate > 0 else []) + whole_batch_losses(run):
        raise ConfigError(f"{', '.join(bad)} is not split over processes yet (its random draws or its loss span "
                          f"the whole batch); train this run in one process")


def whole_batch_losses(run: RunConfig) -> list[str]:
    """The parts of ``run`` whose loss reads the whole batch at once, so that splitting the batch (over
    processes, or into micro-batches) changes the gradient: DINO's centre and teacher, A-ViT's halting
    prior (a mean over the batch). Empty for a run whose loss is a mean of per-image terms."""
    parts = {"DINO (its centre and teacher)": run.train.objective == "dino",
             "variant A-ViT (its halting prior)": isinstance(run.model.variant, AViT)}
    return [name for name, hit in parts.items() if hit]


def positions(batch_size: int, world: World, paired: bool = False) -> np.ndarray:
    """The positions in the global batch that ``world.rank`` trains.

    Contiguous slices; with ``paired`` (Mixup/CutMix, which mix position ``i`` with ``B - 1 - i``)
    mirrored ones: a front block and its reversed mirror, so a rank's own ``flip(0)`` pairs exactly the
    images the whole batch would.
    """
    if world.size == 1:
        return np.arange(batch_size)
    if not paired:
        per = batch_size // world.size
        return np.arange(world.rank * per, (world.rank + 1) * per)
    half = batch_size // (2 * world.size)
    front = np.arange(world.rank * half, (world.rank + 1) * half)
    return np.concatenate([front, (batch_size - 1 - front)[::-1]])


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Replace each parameter's gradient by its mean over the processes (one flat all-reduce)."""
    if world.size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """``values`` summed over the processes (float64)."""
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_flag(flag: bool, world: World, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process (so that every process takes the same branch)."""
    if world.size == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(world: World) -> None:
    """Wait for every process (nothing in one process)."""
    if world.size > 1:
        dist.barrier()
