"""The paper's claims C1-C8 (and the ablation claims A1-A4), our measurements, a verdict by a stated rule.

The measured dictionary each rule reads is built by a library function, one per chapter's set of
claims (:func:`high_norm_claims`, :func:`register_claims`, :func:`ablation_claims`,
:func:`resolution_claim`), and checked against the keys the rule needs (:data:`NEEDS`). Each
chapter then calls :func:`record_all`; the results land in one JSON file per profile,
``<cache>/claims/<profile>.json`` (the cache folder of :func:`regvit_lib.cache.cache_root`:
``$REGVIT_CACHE``, else ``.regvit_cache/`` in the checkout), written atomically, so building the
book writes the claims of the profile it ran and two profiles can be diffed.

A claim's entry: ``claim`` (the paper's words, paraphrased), ``paper`` (its numbers, quoted),
``measured`` (ours), ``verdict`` (``reproduced`` / ``partly`` / ``not at this scale``), ``rule``
(how the verdict was computed from ``measured``), ``scale`` (``smoke`` / ``cpu`` / ``gpu`` /
``pretrained``: what supports it), ``model`` and ``chapter``.

The rules are deliberately simple and printed beside every verdict. "not at this scale" is the
verdict whenever our models do not show what the claim is about (for C2-C6, when there are no
outliers to describe or remove) or show the opposite: it never says that the paper is wrong,
only that this scale does not support the claim. Single training seeds: differences smaller
than the margins below are not counted as effects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from .cache import atomic_write, cache_root

__all__ = ["CLAIMS", "PAPER", "MIN_SHARE", "TIE", "NEEDS", "verdict", "record", "record_all", "claims_path",
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


def _outliers(share: float | None) -> str:
    if share is None or not math.isfinite(share) or share <= 0:
        return "none"
    return "many" if share >= MIN_SHARE else "few"


def _grade(*ok: bool) -> str:
    """``reproduced`` when every test holds, ``partly`` when some do, else not at this scale."""
    return "reproduced" if all(ok) else "partly" if any(ok) else _NONE


def _cut(before: float, after: float) -> str:
    """Registers cut the outlier share to a quarter or less: ``reproduced``; cut it at all: ``partly``."""
    return "reproduced" if after <= 0.25 * before else "partly" if after < before else _NONE


def _interior(by_count: dict[str, float], sign: float) -> bool:
    """The best value (after ``sign``: larger is better) is at an intermediate count and beats both ends."""
    vals = [sign * v for v in by_count.values()]
    best = max(range(len(vals)), key=vals.__getitem__)
    return 0 < best < len(vals) - 1 and vals[best] > max(vals[0], vals[-1]) + TIE * abs(vals[best])


def _dense(w: dict[str, float], r: dict[str, float]) -> str:
    """C7: without a classification loss, graded by the two dense gains; with one, not at this scale."""
    gains = (r["segmentation_miou"] > w["segmentation_miou"] + TIE, r["depth_rmse"] < w["depth_rmse"] * (1 - TIE))
    return _grade(*gains) if r["classification"] >= w["classification"] - TIE else _NONE


def _rise(acc: list[float]) -> str:
    """A3: the accuracy rises from the first count to the last (partly), and never drops on the way (reproduced)."""
    rise = acc[-1] > acc[0] + TIE
    steady = all(b >= a - TIE for a, b in zip(acc, acc[1:]))
    return "reproduced" if rise and steady else "partly" if rise else _NONE


# Per claim: the rule, printed beside the verdict, and the verdict it gives on the measured dictionary.
_RULES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "C1": (f"reproduced: >= {100 * MIN_SHARE:g} % of patch tokens above k x their image's median; "
           "partly: some, fewer; else not at this scale",
           lambda m: {"many": "reproduced", "few": "partly", "none": _NONE}[_outliers(m["share"])]),
    "C2": ("reproduced: the outlier share peaks in the middle third of the blocks; else partly",
           lambda m: "reproduced" if 1 / 3 <= m["layer"] / max(m["depth"] - 1, 1) <= 2 / 3 else "partly"),
    "C3": ("the largest tokens lie on background more often than the base rate, and their patches "
           "are more similar to their neighbours than average: both = reproduced, one = partly",
           lambda m: _grade(m["top_on_background"] > m["background_patches"],
                            m["top_similarity"] > m["all_similarity"])),
    "C4": ("outliers: lower position accuracy and higher pixel error than normal tokens; both = reproduced",
           lambda m: _grade(m["position_top1_outlier"] < m["position_top1_normal"] - TIE,
                            m["pixel_l2_outlier"] > m["pixel_l2_normal"])),
    "C5": (f"reproduced: one outlier token classifies better than one normal token (by > {TIE})",
           lambda m: _grade(m["class_outlier"] > m["class_normal"] + TIE)),
    "C6": ("reproduced: outliers without registers, and registers cut their share to a quarter or less",
           lambda m: _cut(m["share_without"], m["share_with"] or 0.0)),
    "C7": (f"no classification loss (> -{TIE}), mIoU up (> +{TIE}), depth RMSE down (> {100 * TIE:g} %): "
           "all three = reproduced; no loss and one dense gain = partly", lambda m: _dense(m["without"], m["with"])),
    "C8": (f"reproduced: CorLoc with registers higher by > {TIE}", lambda m: _grade(m["with"] > m["without"] + TIE)),
    "A1": ("reproduced: 1 register cuts the outlier share to a quarter or less of 0 registers'",
           lambda m: _cut(m["share_by_count"]["0"], m["share_by_count"]["1"])),
    "A2": (f"the best mIoU / depth RMSE is at an intermediate register count, better than both ends "
           f"by > {100 * TIE:g} %: both = reproduced, one = partly",
           lambda m: _grade(_interior(m["miou_by_count"], 1.0), _interior(m["rmse_by_count"], -1.0))),
    "A3": (f"reproduced: accuracy with the most registers beats 0 registers by > {TIE} and never drops "
           f"by > {TIE} from one count to the next; partly: the first only",
           lambda m: _rise(list(m["acc_by_count"].values()))),
    "A4": ("reproduced: without antialiasing more outlier tokens and a more striped mean norm map "
           "than with it, at the downsampled resolution",
           lambda m: _grade(m["share_no_aa"] > m["share_aa"] and m["stripe_no_aa"] > m["stripe_aa"])),
}


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
    entry = {"claim": CLAIMS[claim], "paper": PAPER.get(claim), "measured": _clean(measured), "verdict": v,
             "rule": rule, "scale": scale, "model": model, "chapter": chapter}
    doc = {**load_claims(profile, root), claim: entry}
    text = json.dumps(dict(sorted(doc.items())), indent=1) + "\n"
    atomic_write(claims_path(profile, root), lambda f: f.write(text.encode()))
    return entry


def record_all(profile: str, measured: dict[str, dict[str, Any]], scale: str, model: str, chapter: str,
               root: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """:func:`record` every claim of ``measured`` (claim -> measured dict); returns the entries."""
    return {claim: record(profile, claim, m, scale, model, chapter, root) for claim, m in measured.items()}


def table(doc: dict[str, Any]) -> Any:
    """A claims document as a table (a pandas DataFrame): ``id``, ``claim``, ``verdict``, ``scale``, ``rule``."""
    import pandas as pd

    return pd.DataFrame([{"id": k, "claim": e["claim"], "verdict": e["verdict"], "scale": e["scale"],
                          "rule": e["rule"]} for k, e in sorted(doc.items())])


def high_norm_claims(report: dict[str, Any], probes: dict[str, float], depth: int, sizes: list[dict[str, Any]],
                     k: float) -> dict[str, dict[str, Any]]:
    """C1-C5 (chapter 2) from the norm report, the probe record, the depth and the size sweep of one model."""
    m = {key: report[key] for key in ("share", "norm_ratio", "ratio_mean", "ratio_max", "layer")}
    m.update(depth=depth, k=k)
    place = {key: report[key] for key in NEEDS["C3"][1:]}
    sizes_m = {"size_shares": [r["share"] for r in sizes], "size_params": [r["params"] for r in sizes]}
    return {"C1": m, "C2": {**m, **sizes_m},
            "C3": {**m, **place}, "C4": {"share": m["share"], **{key: probes[key] for key in NEEDS["C4"][1:]}},
            "C5": {"share": m["share"], **{key: probes[key] for key in ("class_normal", "class_outlier", "class_cls")}}}


def register_claims(reports: list[dict[str, Any]], last_sinks: list[dict[str, Any]], dense: list[dict[str, Any]],
                    corloc: list[float]) -> dict[str, dict[str, Any]]:
    """C6-C8 (chapter 3) from two models, without and with registers: their norm reports, last-block
    sinks, dense-probe records and LOST CorLoc."""
    (r0, r1), (s0, s1), (d0, d1) = reports, last_sinks, dense
    dense_keys = ("classification", "segmentation_miou", "depth_rmse")
    return {"C6": {"share_without": r0["share"], "share_with": r1["share"], "ratio_without": r0["ratio_mean"],
                   "ratio_with": r1["ratio_mean"], "sink_without": float(s0["sink_mass"]),
                   "sink_with": float(s1["sink_mass"]), "sink_with_on": str(s1["sink_on"])},
            "C7": {name: {key: float(d[key]) for key in dense_keys} for name, d in (("without", d0), ("with", d1))},
            "C8": {"without": float(corloc[0]), "with": float(corloc[1])}}


def ablation_claims(summary: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A1-A3 (chapter 4) from the register grid's summary, one record per register count."""
    def by_count(col: str) -> dict[str, float]:
        return {str(int(r["registers"])): float(r[col]) for r in summary}

    return {"A1": {"share_by_count": by_count("share"), "ratio_by_count": by_count("ratio_mean"),
                   "sink_by_count": by_count("sink_mass")},
            "A2": {"miou_by_count": by_count("segmentation_miou"), "rmse_by_count": by_count("depth_rmse")},
            "A3": {"acc_by_count": by_count("classification"), "test_acc_by_count": by_count("test_acc")}}


def resolution_claim(rows: list[dict[str, Any]], trained_at: int) -> dict[str, dict[str, Any]]:
    """A4 (chapter 4) from the resolution study's records, read at its smallest image size."""
    size = min(r["img_size"] for r in rows)
    at = {r["antialias"]: r for r in rows if r["img_size"] == size}
    return {"A4": {"img_size": int(size), "trained_at": trained_at,
                   **{f"{key}_{'aa' if aa else 'no_aa'}": float(at[aa][key])
                      for key in ("share", "stripe", "accuracy") for aa in (True, False)}}}


def headline(report: dict[str, Any], k: float) -> str:
    """Chapter 2's opening sentence on one model's norms, by the C1 rule's threshold."""
    share = 100 * report["share"]
    if report["share"] >= MIN_SHARE:
        return (f"This model has high-norm outliers: {share:.2f} % of its patch tokens are above {k:g} x their "
                "image's median norm.")
    return (f"This model shows no high-norm outliers at this scale: {share:.2f} % of its patch tokens pass {k:g} x "
            f"their image's median norm (the claims rule asks for at least {100 * MIN_SHARE:g} %), and the largest "
            f"token of an image is on average {report['ratio_mean']:.2f} x the median (the paper's are about 10 x).")
