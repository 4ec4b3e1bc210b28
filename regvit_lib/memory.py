"""How much memory a training step needs; when the device has less, gradient accumulation over even
micro-batches, or a clear stop before training.

The count is made on the meta device (no memory, no compute): the weights, their gradients and
AdamW's two moments (4 x 4 bytes a parameter), plus every tensor the forward pass saves for the
backward pass. The meta device has no autocast: under bf16/fp16 autocast (``half``) the saved
tensors are counted at half their fp32 size (most are what autocast casts: matmul inputs, attention
maps), an estimate, not a bound. A step also needs workspace the count cannot see, so the check
keeps a margin (:data:`USABLE`).
"""

from __future__ import annotations

import torch

from .config import ConfigError, RunConfig
from .distributed import whole_batch_losses
from .model import build_model, count_parameters

__all__ = ["USABLE", "step_bytes", "largest_batch", "accumulation"]

USABLE = 0.85  # of the device's memory that a step's counted tensors may take


def step_bytes(run: RunConfig, batch: int, half: bool = False) -> int:
    """Bytes of one training step of ``run`` on ``batch`` images; ``half``: under 16-bit autocast (see
    the module docstring)."""
    model = build_model(run.model, device="meta").train()
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    x = torch.empty(batch, run.model.in_chans, run.model.img_size, run.model.img_size, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return 16 * count_parameters(model) + (saved // 2 if half else saved)


def largest_batch(run: RunConfig, limit: int, half: bool = False) -> int:
    """The largest batch whose step fits in ``limit`` bytes (0 when not even one image does)."""
    one, two = step_bytes(run, 1, half), step_bytes(run, 2, half)
    per_image, fixed = two - one, 2 * one - two
    return max(0, (limit - fixed) // max(per_image, 1))


def accumulation(run: RunConfig, total_bytes: int, processes: int = 1, device_name: str = "this device",
                 half: bool = False) -> int:
    """How many micro-batches a process's share of the batch must be split into for its step to fit in
    ``total_bytes``: 1 when the whole share fits, else the fewest that divide it evenly and fit
    (gradient accumulation: the same gradient as one step on the share, up to summation order).

    Raises:
        ConfigError: not even the smallest even split fits, or the run cannot accumulate (its loss
            reads the whole batch at once: :func:`~regvit_lib.distributed.whole_batch_losses`): naming the memory needed and available
            and the batch that would fit (per process, and in all).
    """
    local = run.train.batch_size // processes
    limit = int(USABLE * total_bytes)
    need = step_bytes(run, local, half)
    if need <= limit:
        return 1
    fits = largest_batch(run, limit, half)
    whole = whole_batch_losses(run)
    if fits >= 1 and not whole:
        return next(a for a in range(2, local + 1) if local % a == 0 and local // a <= fits)
    why = f"{', '.join(whole)} reads the whole batch at once: no gradient accumulation; " if fits else ""
    raise ConfigError(f"a training step of batch_size={run.train.batch_size} ({local} images per process) needs "
                      f"about {need / 2**30:.1f} GiB; {device_name} has {total_bytes / 2**30:.1f} GiB "
                      f"({USABLE:.0%} usable): {why}a batch of {fits} per process ({fits * processes} in all) would "
                      "fit. Use a profile sized for this device, or more processes (torchrun)")
