"""Display labels: the one place where the library's snake_case keys become words.

Measurements travel from probe to claim under one name each (``position_top1_outlier``,
``segmentation_miou``, ``sink_mass``...). Only when a table is shown does :func:`show` give its
columns the labels below; nothing maps a label back to a key.
"""

from typing import Any

import pandas as pd

from .claims import pm, spread

__all__ = ["LABELS", "show", "show_seeds"]

LABELS: dict[str, str] = {
    # norms and outliers (chapters 2-4)
    "layer": "block", "share": "outlier share", "norm_ratio": "outlier / normal norm",
    "ratio_mean": "max/median (mean over images)", "ratio_max": "max/median (any image)",
    "outlier_share": "outlier share", "outlier_norm_ratio": "outlier / normal norm",
    "top_on_background": "largest token on background", "background_patches": "background patches",
    # local and global information (Fig. 5b, Table 1)
    **{f"{key}_{k}": f"{name}, {k}" for key, name in (("position_top1", "position top-1"),
                                                      ("position_distance", "position distance"),
                                                      ("pixel_l2", "pixel L2")) for k in ("normal", "outlier")},
    **{f"class_{k}": f"class from one {k} token" for k in ("normal", "outlier", "cls")},
    # dense tasks and object discovery (Tables 2, 3)
    "classification": "classification (acc)", "segmentation_miou": "segmentation (mIoU)",
    "depth_rmse": "depth (RMSE)", "corloc": "LOST corloc",
    # attention sinks
    "sink_mass": "sink mass", "sink_on": "sink on", "same_token": "same token", "sink_fixed": "sink at a fixed token",
    # runs, grids, studies
    "params_m": "params (M)", "train_pflops": "train PFLOPs", "test_acc": "test acc", "gflops": "GFLOPs",
    "flops_pct": "FLOPs +%", "img_size": "image size", "stripe": "stripe score",
    "id": "", "axis": "axis", "run": "run", "evidence": "measured (mean ± sd over seeds)",
}


def show(table: pd.DataFrame | list[dict[str, Any]] | dict[str, dict[str, Any]], precision: int = 3,
         columns: list[str] | None = None) -> Any:
    """A table ready to display: ``columns`` (default all) with their labels (keys without one stay as they are),
    numbers rounded, no index.

    Args:
        table: a DataFrame, a list of records, or ``{row name: record}`` (shown with records as columns);
            a list as a value is one number per seed, shown as ``mean ± sd``.
        precision: decimals of floating-point numbers.
        columns: which keys to show, in order.
    """
    frame = pd.DataFrame(table).map(lambda v: _mean_sd(v, precision) if isinstance(v, list) else v)
    if isinstance(table, dict):  # records are columns: ``columns`` picks their keys, the rows
        frame = frame.loc[columns] if columns is not None else frame
        return frame.rename(index=LABELS).style.format(precision=precision, na_rep="–")
    frame = frame[columns] if columns is not None else frame
    return frame.rename(columns=LABELS).style.format(precision=precision, na_rep="–").hide(axis="index")


def show_seeds(table: pd.DataFrame | list[dict[str, Any]], by: str | list[str], columns: list[str],
               precision: int = 3) -> Any:
    """A table with one row per seed shown one row per value of ``by``: each of ``columns`` as
    ``mean ± sd`` over the seeds (the mean alone for one seed), and the number of ``seeds``."""
    frame = pd.DataFrame(table)
    groups = frame.groupby(by, sort=False)

    out = groups[columns].agg(lambda v: _mean_sd(list(v), precision)).assign(seeds=groups.size()).reset_index()
    return show(out, precision, [*([by] if isinstance(by, str) else by), "seeds", *columns])


def _mean_sd(values: list[Any], precision: int) -> str:
    """``mean ± sd`` of one number per seed (the mean alone for one seed), NaN left out."""
    return "–" if spread(values)[2] == 0 else pm(values, f".{precision}f")
