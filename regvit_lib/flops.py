"""Parameters and FLOPs of ViTs with registers (paper App. B: +<2 % FLOPs at 4 registers).

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on a model built on
the ``meta`` device: shapes only, no memory, so ViT-g is counted on a laptop in a fraction of
a second. One multiply-add counts as 2 FLOPs (PyTorch's convention). Counted: the patch
embedding, every matmul of attention (QKV, Q K^T, A V, output projection) and of the MLP, and
the head. Not counted: softmax, LayerNorm, GELU and additions (a few percent at most).
:func:`register_overhead_table` is cached (:mod:`regvit_lib.cache`): counting ViT-g thirty times
takes seconds, and a rebuild reads the numbers back.
"""

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from .cache import cached
from .config import Mamba, ModelConfig, vit_config
from .model import build_model, count_parameters

__all__ = ["count_flops", "register_overhead_table", "overhead_summary"]


def count_flops(cfg: ModelConfig, batch_size: int = 1) -> int:
    """Forward-pass FLOPs of the model ``cfg`` on ``batch_size`` images (counted, not estimated).

    A Vision Mamba's selective scans are element-wise work the counter does not see; their count is
    added by formula (:func:`regvit_lib.mamba.scan_flops`). An A-ViT is counted at full depth, every
    token running every block: its cost at the depth it learned is measured in :mod:`regvit_lib.compare`.
    """
    model = build_model(cfg, device="meta").eval()
    x = torch.empty(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    scans = 0
    if isinstance(cfg.variant, Mamba):
        from .mamba import scan_flops

        scans = batch_size * scan_flops(cfg)
    return int(counter.get_total_flops()) + scans


def register_overhead_table(sizes: Sequence[str] = ("Ti", "S", "B", "L", "g"), registers: Sequence[int] = (0, 4, 16),
                            img_size: int = 224, patch_size: int = 14) -> pd.DataFrame:
    """Parameters and FLOPs of each named ViT size with each number of registers.

    Args:
        sizes: names from :data:`~regvit_lib.config.VIT_SIZES`.
        registers: register counts; the first is the baseline the overheads are relative to.
        img_size: input resolution in pixels.
        patch_size: patch side (14 as in DINOv2, 16 as in the original ViT).

    Returns:
        One row per (size, registers): ``tokens``, ``params_M``, ``GFLOPs``, and
        ``params_overhead_pct`` / ``flops_overhead_pct`` relative to the first register count.
    """
    def count() -> dict[str, Any]:
        rows = []
        for size in sizes:
            cfgs = [vit_config(size, img_size=img_size, patch_size=patch_size, num_registers=r) for r in registers]
            flops = [count_flops(cfg) for cfg in cfgs]
            params = [count_parameters(build_model(cfg, device="meta")) for cfg in cfgs]
            rows += [dict(model=f"ViT-{size}/{patch_size}", registers=r, tokens=cfg.num_tokens, params_M=p / 1e6,
                          GFLOPs=f / 1e9, params_overhead_pct=100 * (p / params[0] - 1),
                          flops_overhead_pct=100 * (f / flops[0] - 1))
                     for r, cfg, f, p in zip(registers, cfgs, flops, params)]
        return {"rows": rows}

    config = dict(sizes=list(sizes), registers=list(registers), img_size=img_size, patch_size=patch_size)
    return pd.DataFrame(cached("flops-table", config, ("flops.py", "model.py", "config.py"), count)["rows"])


def overhead_summary(table: pd.DataFrame, registers: Sequence[int] = (4, 16)) -> pd.DataFrame:
    """One row per model: its size without registers, and its overheads at ``registers``.

    Args:
        table: output of :func:`register_overhead_table` (its first register count is the base).
        registers: the register counts to show as columns.
    """
    base = table.groupby("model", sort=False).first()
    out = pd.DataFrame({"params (M)": base["params_M"].round(1), "GFLOPs": base["GFLOPs"].round(2)})
    for r in registers:
        rows = table[table["registers"] == r].set_index("model")
        if rows.empty:
            raise ValueError(f"the table has no rows with {r} registers")
        out[f"+FLOPs, {r} reg (%)"] = rows["flops_overhead_pct"].round(2)
        out[f"+params, {r} reg (%)"] = rows["params_overhead_pct"].round(3)
    return out
