"""Timing on a shared machine: models taking turns, a training step to time, the matmul rate, MFU.

A shared machine drifts (another job starts, the clock scales), so two things are never timed
one after the other: :func:`alternate` runs them in turn, the order rotating every round, and
the median of each one's times is what counts.
"""

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sync", "training_step", "alternate", "matmul_tflops", "mfu"]


def sync(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU (or ``None``)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool) -> Callable[[], None]:
    """One AdamW training step of ``model`` on the fixed batch ``(x, y)``, as a callable to time."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def alternate(fns: Sequence[Callable[[], object]], rounds: int, device: torch.device | None = None,
              warmup: int = 1) -> list[list[float]]:
    """Seconds of every call of each of ``fns``, which take turns: one call each per round, the order
    rotating by one every round, after ``warmup`` untimed rounds.

    Returns:
        ``times[i]``: the ``rounds`` durations of ``fns[i]``.
    """
    for fn in list(fns) * warmup:  # untimed: each in turn, ``warmup`` times
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        for i in np.roll(np.arange(len(fns)), r):
            sync(device)
            t = time.perf_counter()
            fns[int(i)]()
            sync(device)
            times[i].append(time.perf_counter() - t)
    return times


def matmul_tflops(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                  iters: int | None = None) -> float:
    """Measured matmul rate of ``device`` in ``dtype`` with the current threads, TFLOP/s (2 n^3 per
    product; default n = 8192 and 50 products on a GPU, 2048 and 10 on a CPU)."""
    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 2048)
    iters = iters or (50 if dev.type == "cuda" else 10)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))

    def block() -> None:  # ``iters`` products back to back: one sync for the whole block
        for _ in range(iters):
            a @ b
    return 2 * n**3 * iters / min(alternate([block], 3, dev)[0]) / 1e12


def mfu(model: nn.Module, flops_per_image: float, batch: int, img_size: int, num_classes: int,
        iters: int = 30, device: str = "cuda", amp: bool = True, matmul_n: int | None = None) -> dict[str, float]:
    """Model FLOPs utilisation of training ``model`` on ``device``: the achieved rate (counted
    FLOPs times images per second) over the measured matmul rate of the step's precision (bf16
    with ``amp``, else fp32).

    Args:
        flops_per_image: counted training FLOPs of one image (3x the forward).
        matmul_n: the size of the reference matmul (default: :func:`matmul_tflops`'s). A CPU
            without bf16 instructions multiplies bf16 slowly (about 1 GFLOP/s on AVX2); a
            smaller ``n`` gives a quicker, rougher rate.
    """
    dev = torch.device(device)
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    y = torch.randint(num_classes, (batch,), device=dev)
    seconds = alternate([training_step(model, x, y, amp=amp)], iters, dev, warmup=2)[0]
    rate = batch * iters / sum(seconds)
    achieved = rate * flops_per_image / 1e12
    peak = matmul_tflops(device, torch.bfloat16 if amp else torch.float32, n=matmul_n)
    return {"img_per_s": rate, "achieved_tflops": achieved, "matmul_tflops": peak, "mfu": achieved / peak}
