"""The paper's claims C1-C8 (and the ablation claims A1-A4), our measurements, a verdict by a stated rule.

The measured dictionary each rule reads is built by a library function, one per chapter's set of
claims (:func:`high_norm_claims`, :func:`register_claims`, :func:`ablation_claims`,
:func:`resolution_claim`), and checked against the keys the rule needs (:data:`NEEDS`). Each
chapter then calls :func:`record_all`; the results land in one JSON file per profile,
``<cache>/claims/<profile>.json`` (the cache folder of :func:`regvit_lib.cache.cache_root`:
``$REGVIT_CACHE``, else ``.regvit_cache/`` in the checkout), written atomically, so building the
book writes the claims of the profile it ran and two profiles can be diffed.

A claim's entry: ``claim`` (the paper's words, paraphrased), ``paper`` (its numbers, quoted),
``measured`` (ours), ``verdict`` (``reproduced`` / ``partly`` / ``not at this scale`` / ``no labels``), ``rule``
(how the verdict was computed from ``measured``), ``scale`` (``smoke`` / ``cpu`` / ``gpu`` /
``pretrained``: what supports it), ``model`` and ``chapter``.

The rules are deliberately simple and printed beside every verdict. "not at this scale" is the
verdict whenever our models do not show what the claim is about (for C2-C6, when there are no
outliers to describe or remove) or show the opposite: it never says that the paper is wrong,
only that this scale does not support the claim. "no labels" is the verdict when a number the
rule reads could not be measured because the images carry no such label (photographs have class
labels only: no object masks, segmentation, depth or boxes).

**Seeds.** Every measured number is a list with one value per training seed (a single number
counts as one seed: a pretrained model). A rule compares means, and counts a difference only when
it exceeds both its margin (:data:`TIE`) and the seeds' spread: the sum of the two standard
deviations (:func:`above`). A claims entry states each number it read as mean +- sd and the
number of seeds (``evidence``, ``seeds``), so no verdict is shown without its spread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from .cache import atomic_write, cache_root

__all__ = ["CLAIMS", "PAPER", "MIN_SHARE", "TIE", "NEEDS", "NO_LABELS", "spread", "above", "pm", "evidence", "per_seed", "verdict", "record", "record_all", "claims_path",
           "load_claims", "table", "high_norm_claims", "register_claims", "ablation_claims", "resolution_claim",
           "headline"]

# The paper's claims, paraphrased, and its numbers (Darcet et al. 2024), quoted: regvit_lib/paper.json.
_PAPER = json.loads((files("regvit_lib") / "paper.json").read_text())
CLAIMS: dict[str, str] = {key: entry["claim"] for key, entry in _PAPER.items()}
PAPER: dict[str, dict[str, Any]] = {key: entry["paper"] for key, entry in _PAPER.items()}

MIN_SHARE = 0.005  # C1: at least 0.5 % of patch tokens above k x their image's median
TIE = 0.01  # differences below this (accuracy, mIoU, CorLoc; RMSE: relative) count as no change


# The measured keys each rule reads (C2-C5 read "share" first: without outliers there is nothing to describe).
NEEDS: dict[str, tuple[str, ...]] = {
    "C1": ("share",), "C2": ("share", "layer", "depth"),
    "C3": ("share", "top_on_background", "background_patches", "top_similarity", "all_similarity"),
    "C4": ("share", "position_top1_normal", "position_top1_outlier", "pixel_l2_normal", "pixel_l2_outlier"),
    "C5": ("share", "class_normal", "class_outlier"), "C6": ("share_without", "share_with"),
    "C7": ("without", "with"), "C8": ("without", "with"), "A1": ("share_by_count",),
    "A2": ("miou_by_count", "rmse_by_count"), "A3": ("acc_by_count",),
    "A4": ("share_aa", "share_no_aa", "stripe_aa", "stripe_no_aa"),
}


_NONE = "not at this scale"
NO_LABELS = "no labels"
# The measured keys that need more than class labels (object masks, segmentation, depth, boxes): NaN on photographs.
_LABELLED: dict[str, tuple[str, ...]] = {"C3": ("top_on_background", "background_patches"), "C7": ("without", "with"),
                                         "C8": ("without", "with"), "A2": ("miou_by_count", "rmse_by_count")}
Values = float | list[float]  # one number per seed (a bare number: one seed)


def spread(values: Values) -> tuple[float, float, int]:
    """Mean, standard deviation over seeds (0 for one seed) and number of seeds of a measured value.

    NaN entries (a measurement that had nothing to measure) are left out."""
    vals = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values]) if v is not None]
    vals = [v for v in vals if math.isfinite(v)]
    if not vals:
        return math.nan, 0.0, 0
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd, len(vals)


def above(a: Values, b: Values, margin: float = 0.0) -> bool:
    """Whether ``a`` is larger than ``b`` by more than ``margin`` *and* more than the seeds' spread
    (the sum of the two standard deviations). With one seed each, the spread is 0."""
    (ma, sa, _), (mb, sb, _) = spread(a), spread(b)
    return ma - mb > max(margin, sa + sb)


def pm(values: Values, fmt: str = ".3f", scale: float = 1.0) -> str:
    """``mean +- sd`` of a measured value as text (just the number for one seed)."""
    mean, sd, n = spread(values)
    return format(scale * mean, fmt) + (f" ± {format(scale * sd, fmt)}" if n > 1 else "")


def _outliers(share: Values) -> str:
    """``none`` when the share is not above zero by more than its spread, ``many`` when it stays at or
    above :data:`MIN_SHARE` after subtracting its spread, else ``few``."""
    mean, sd, n = spread(share)
    if n == 0 or mean <= sd or mean <= 0:
        return "none"
    return "many" if mean - sd >= MIN_SHARE else "few"


def _grade(*ok: bool) -> str:
    """``reproduced`` when every test holds, ``partly`` when some do, else not at this scale."""
    return "reproduced" if all(ok) else "partly" if any(ok) else _NONE


def _cut(before: Values, after: Values) -> str:
    """Registers cut the outlier share (beyond the spread) to a quarter or less: ``reproduced``; cut it at all: ``partly``."""
    if not above(before, after):
        return _NONE
    return "reproduced" if spread(after)[0] <= 0.25 * spread(before)[0] else "partly"


def _interior(by_count: dict[str, Values], sign: float) -> bool:
    """The best mean (after ``sign``: larger is better) is at an intermediate count and beats both ends
    by more than the margin and the spread."""
    vals = [[sign * v for v in (x if isinstance(x, (list, tuple)) else [x])] for x in by_count.values()]
    means = [spread(v)[0] for v in vals]
    best = max(range(len(vals)), key=means.__getitem__)
    margin = TIE * abs(means[best])
    return 0 < best < len(vals) - 1 and above(vals[best], vals[0], margin) and above(vals[best], vals[-1], margin)


def _dense(w: dict[str, Values], r: dict[str, Values]) -> str:
    """C7: without a classification loss, graded by the two dense gains; with one, not at this scale."""
    rmse_margin = TIE * spread(w["depth_rmse"])[0]
    gains = (above(r["segmentation_miou"], w["segmentation_miou"], TIE),
             above(w["depth_rmse"], r["depth_rmse"], rmse_margin))
    return _NONE if above(w["classification"], r["classification"], TIE) else _grade(*gains)


def _rise(acc: list[Values]) -> str:
    """A3: the accuracy rises from the first count to the last (partly), and never drops on the way (reproduced)."""
    rise = above(acc[-1], acc[0], TIE)
    steady = not any(above(a, b, TIE) for a, b in zip(acc, acc[1:]))
    return "reproduced" if rise and steady else "partly" if rise else _NONE


def _position(layers: Values, depth: int) -> float:
    """Mean relative depth of the studied block over seeds: 0 = first block, 1 = last."""
    return spread([v / max(depth - 1, 1) for v in (layers if isinstance(layers, (list, tuple)) else [layers])])[0]


# Per claim: the rule, printed beside the verdict, and the verdict it gives on the measured dictionary.
_SPREAD = "; a difference counts only beyond the seeds' spread (sum of the two sd)"
_RULES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "C1": (f"reproduced: >= {100 * MIN_SHARE:g} % of patch tokens above k x their image's median (mean - sd); "
           "partly: some, fewer (mean > sd); else not at this scale",
           lambda m: {"many": "reproduced", "few": "partly", "none": _NONE}[_outliers(m["share"])]),
    "C2": ("reproduced: the outlier share peaks in the middle third of the blocks (mean over seeds); else partly",
           lambda m: "reproduced" if 1 / 3 <= _position(m["layer"], m["depth"]) <= 2 / 3 else "partly"),
    "C3": ("the largest tokens lie on background more often than the base rate, and their patches "
           "are more similar to their neighbours than average: both = reproduced, one = partly" + _SPREAD,
           lambda m: _grade(above(m["top_on_background"], m["background_patches"]),
                            above(m["top_similarity"], m["all_similarity"]))),
    "C4": (f"outliers: position accuracy lower by > {TIE} and pixel error higher than normal tokens; "
           "both = reproduced" + _SPREAD,
           lambda m: _grade(above(m["position_top1_normal"], m["position_top1_outlier"], TIE),
                            above(m["pixel_l2_outlier"], m["pixel_l2_normal"]))),
    "C5": (f"reproduced: one outlier token classifies better than one normal token (by > {TIE})" + _SPREAD,
           lambda m: _grade(above(m["class_outlier"], m["class_normal"], TIE))),
    "C6": ("reproduced: outliers without registers, and registers cut their share to a quarter or less; "
           "partly: cut at all" + _SPREAD, lambda m: _cut(m["share_without"], m["share_with"])),
    "C7": (f"no classification loss (> {TIE}), mIoU up (> {TIE}), depth RMSE down (> {100 * TIE:g} %): "
           "all three = reproduced; no loss and one dense gain = partly" + _SPREAD,
           lambda m: _dense(m["without"], m["with"])),
    "C8": (f"reproduced: CorLoc with registers higher by > {TIE}" + _SPREAD,
           lambda m: _grade(above(m["with"], m["without"], TIE))),
    "A1": ("reproduced: 1 register cuts the outlier share to a quarter or less of 0 registers'; partly: cuts it"
           + _SPREAD, lambda m: _cut(m["share_by_count"]["0"], m["share_by_count"]["1"])),
    "A2": (f"the best mIoU / depth RMSE is at an intermediate register count, better than both ends "
           f"by > {100 * TIE:g} %: both = reproduced, one = partly" + _SPREAD,
           lambda m: _grade(_interior(m["miou_by_count"], 1.0), _interior(m["rmse_by_count"], -1.0))),
    "A3": (f"reproduced: accuracy with the most registers beats 0 registers by > {TIE} and never drops "
           f"by > {TIE} from one count to the next; partly: the first only" + _SPREAD,
           lambda m: _rise(list(m["acc_by_count"].values()))),
    "A4": ("reproduced: without antialiasing more outlier tokens and a more striped mean norm map "
           "than with it, at the downsampled resolution" + _SPREAD,
           lambda m: _grade(above(m["share_no_aa"], m["share_aa"]) and above(m["stripe_no_aa"], m["stripe_aa"]))),
}


def _flat(m: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Values]:
    """The measured values under ``keys``, nested dictionaries flattened (``with.segmentation_miou``)."""
    out: dict[str, Values] = {}
    for key in keys:
        value = m[key]
        if isinstance(value, dict):
            out |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            out[key] = value
    return out


def evidence(claim: str, m: dict[str, Any]) -> tuple[str, int]:
    """The numbers a claim's rule reads, each as mean +- sd, and the (largest) number of seeds behind them."""
    flat = _flat(m, tuple(k for k in NEEDS[claim] if k in m))
    seeds = max((spread(v)[2] for v in flat.values()), default=0)
    return "; ".join(f"{k} {pm(v, '.4g')}" for k, v in flat.items()), seeds


def verdict(claim: str, m: dict[str, Any]) -> tuple[str, str]:
    """The verdict on ``claim`` from our measurements ``m``, and the rule that gave it.

    ``m`` must hold the keys :data:`NEEDS` lists for the claim (as the chapters record them);
    C7 reads ``classification``, ``segmentation_miou`` and ``depth_rmse`` inside ``without`` and ``with``.
    """
    if claim not in CLAIMS:
        raise KeyError(f"unknown claim {claim!r}; known: {sorted(CLAIMS)}")
    if claim in ("C2", "C3", "C4", "C5") and "share" in m and _outliers(m["share"]) == "none":
        return _NONE, "no outlier tokens (C1) to describe"
    if missing := [key for key in NEEDS[claim] if key not in m]:
        raise KeyError(f"claim {claim} needs the measured keys {missing}; got {sorted(m)}")
    if unlabelled := [key for key, v in _flat(m, _LABELLED.get(claim, ())).items() if spread(v)[2] == 0]:
        return NO_LABELS, f"not measured on these images, which have no labels for it: {', '.join(unlabelled)}"
    if claim == "C6" and _outliers(m["share_without"]) == "none":
        return _NONE, "no outlier tokens without registers (C1): nothing to remove"
    if claim == "A1" and _outliers(m["share_by_count"]["0"]) == "none":
        return _NONE, "no outlier tokens without registers: nothing to remove"
    if claim == "A4" and _outliers(m["share_no_aa"]) == "none":
        return _NONE, "no outlier tokens at the new resolution, with or without antialiasing"
    rule, judge = _RULES[claim]
    return judge(m), rule


def claims_path(profile: str, root: Path | str | None = None) -> Path:
    """Where the claims of ``profile`` are written: ``<cache>/claims/<profile>.json``."""
    return Path(root if root is not None else cache_root()) / "claims" / f"{profile}.json"


def load_claims(profile: str, root: Path | str | None = None) -> dict[str, Any]:
    """The claims recorded so far for ``profile`` (empty when none).

    Raises:
        ValueError: the file exists but is not valid JSON (named; it is not overwritten).
    """
    path = claims_path(profile, root)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt claims file {path}: {e}; move it away to start a new one") from e


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists, numbers plain floats."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    x = x.item() if hasattr(x, "item") else x  # a tensor or numpy scalar
    return None if isinstance(x, float) and not math.isfinite(x) else x


def record(profile: str, claim: str, measured: dict[str, Any], scale: str, model: str, chapter: str,
           root: Path | str | None = None) -> dict[str, Any]:
    """Compute the verdict of ``claim`` and write it into the profile's claims file.

    Returns:
        The entry written.
    """
    v, rule = verdict(claim, measured)
    text, seeds = evidence(claim, measured)
    entry = {"claim": CLAIMS[claim], "paper": PAPER.get(claim), "measured": _clean(measured), "verdict": v,
             "evidence": text, "seeds": seeds, "rule": rule, "scale": scale, "model": model, "chapter": chapter}
    doc = {**load_claims(profile, root), claim: entry}
    text = json.dumps(dict(sorted(doc.items())), indent=1) + "\n"
    atomic_write(claims_path(profile, root), lambda f: f.write(text.encode()))
    return entry


def record_all(profile: str, measured: dict[str, dict[str, Any]], scale: str, model: str, chapter: str,
               root: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """:func:`record` every claim of ``measured`` (claim -> measured dict); returns the entries."""
    return {claim: record(profile, claim, m, scale, model, chapter, root) for claim, m in measured.items()}


def table(doc: dict[str, Any]) -> Any:
    """A claims document as a table (a pandas DataFrame): ``id``, ``claim``, ``verdict``, ``seeds``,
    ``evidence`` (the numbers the rule read, mean +- sd), ``scale``, ``rule``."""
    import pandas as pd

    return pd.DataFrame([{"id": k, "claim": e["claim"], "verdict": e["verdict"], "seeds": e.get("seeds"),
                          "evidence": e.get("evidence"), "scale": e["scale"], "rule": e["rule"]}
                         for k, e in sorted(doc.items())])


def _per_seed(records: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in records]


def per_seed(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """One model's records, one per seed, as ``{key: [value per seed]}`` (the numeric keys of the first)."""
    return {key: _per_seed(records, key) for key, v in records[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def high_norm_claims(reports: list[dict[str, Any]], probes: list[dict[str, float]], depth: int,
                     sizes: list[dict[str, Any]], k: float) -> dict[str, dict[str, Any]]:
    """C1-C5 (chapter 2) from one model's norm reports and probe records, one per seed, its depth
    and the size sweep (Fig. 4c, recorded beside C2)."""
    m: dict[str, Any] = {key: _per_seed(reports, key) for key in ("share", "norm_ratio", "ratio_mean", "ratio_max",
                                                                   "layer")}
    m.update(depth=depth, k=k)
    place = {key: _per_seed(reports, key) for key in NEEDS["C3"][1:]}
    sizes_m = {"size_shares": [r["share"] for r in sizes], "size_params": [r["params"] for r in sizes]}
    return {"C1": m, "C2": {**m, **sizes_m}, "C3": {**m, **place},
            "C4": {"share": m["share"], **{key: _per_seed(probes, key) for key in NEEDS["C4"][1:]}},
            "C5": {"share": m["share"], **{key: _per_seed(probes, key) for key in ("class_normal", "class_outlier",
                                                                                  "class_cls")}}}


def register_claims(reports: dict[str, list[dict[str, Any]]], last_sinks: dict[str, list[dict[str, Any]]],
                    dense: list[dict[str, Any]], lost: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """C6-C8 (chapter 3) from two models, without then with registers (the keys of ``reports``, in
    that order), each over its seeds: norm reports and last-block sinks (model -> one per seed),
    and the dense-probe and LOST records (rows with a ``model`` key, one per model and seed)."""
    names = list(reports)
    r0, r1 = (reports[n] for n in names)
    s0, s1 = (last_sinks[n] for n in names)
    rows = {n: {"dense": [d for d in dense if d["model"] == n], "lost": [d for d in lost if d["model"] == n]}
            for n in names}
    dense_keys = ("classification", "segmentation_miou", "depth_rmse")
    return {"C6": {"share_without": _per_seed(r0, "share"), "share_with": _per_seed(r1, "share"),
                   "ratio_without": _per_seed(r0, "ratio_mean"), "ratio_with": _per_seed(r1, "ratio_mean"),
                   "sink_without": _per_seed(s0, "sink_mass"), "sink_with": _per_seed(s1, "sink_mass"),
                   "sink_with_on": [str(s["sink_on"]) for s in s1]},
            "C7": {side: {key: _per_seed(rows[n]["dense"], key) for key in dense_keys}
                   for side, n in zip(("without", "with"), names)},
            "C8": {side: _per_seed(rows[n]["lost"], "corloc") for side, n in zip(("without", "with"), names)}}


def ablation_claims(grid: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A1-A3 (chapter 4) from the register grid's rows, one per (register count, seed)."""
    counts = sorted({int(r["registers"]) for r in grid})

    def by_count(col: str) -> dict[str, list[float]]:
        return {str(c): [float(r[col]) for r in grid if int(r["registers"]) == c] for c in counts}

    return {"A1": {"share_by_count": by_count("share"), "ratio_by_count": by_count("ratio_mean"),
                   "sink_by_count": by_count("sink_mass")},
            "A2": {"miou_by_count": by_count("segmentation_miou"), "rmse_by_count": by_count("depth_rmse")},
            "A3": {"acc_by_count": by_count("classification"), "test_acc_by_count": by_count("test_acc")}}


def resolution_claim(rows: list[dict[str, Any]], trained_at: int) -> dict[str, dict[str, Any]]:
    """A4 (chapter 4) from the resolution study's records (one per seed, size and antialiasing), read
    at its smallest image size."""
    size = min(r["img_size"] for r in rows)
    at = {aa: [r for r in rows if r["img_size"] == size and r["antialias"] == aa] for aa in (True, False)}
    return {"A4": {"img_size": int(size), "trained_at": trained_at,
                   **{f"{key}_{'aa' if aa else 'no_aa'}": _per_seed(at[aa], key)
                      for key in ("share", "stripe", "accuracy") for aa in (True, False)}}}


def headline(reports: list[dict[str, Any]], k: float) -> str:
    """Chapter 2's opening sentence on one model's norms (one report per seed), by the C1 rule."""
    shares, ratios = _per_seed(reports, "share"), _per_seed(reports, "ratio_mean")
    seeds = f" (mean ± sd over {len(reports)} seeds)" if len(reports) > 1 else ""
    if _outliers(shares) == "many":
        return (f"This model has high-norm outliers: {pm(shares, '.2f', 100)} % of its patch tokens are above {k:g} x "
                f"their image's median norm{seeds}.")
    return (f"This model shows no high-norm outliers at this scale: {pm(shares, '.2f', 100)} % of its patch tokens "
            f"pass {k:g} x their image's median norm (the claims rule asks for at least {100 * MIN_SHARE:g} %), and "
            f"the largest token of an image is on average {pm(ratios, '.2f')} x the median{seeds} (the paper's are "
            "about 10 x).")
