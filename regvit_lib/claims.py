"""The paper's claims C1-C8 (and the ablation claims A1-A4), our measurements, a verdict by a stated rule.

The measured dictionary each rule reads is built by a library function, one per chapter's set of
claims (:func:`high_norm_claims`, :func:`register_claims`, :func:`ablation_claims`,
:func:`resolution_claim`), and checked against the keys the rule needs (:data:`NEEDS`). Each
chapter then calls :func:`record_all`; the results land in one JSON file per profile, ``<cache>/claims/<profile>.json`` (the cache folder of :func:`regvit_lib.cache.cache_root`:
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
from pathlib import Path
from typing import Any

from .cache import atomic_write, cache_root

__all__ = ["CLAIMS", "PAPER", "MIN_SHARE", "TIE", "NEEDS", "verdict", "record", "record_all", "claims_path",
           "load_claims", "table", "high_norm_claims", "register_claims", "ablation_claims", "resolution_claim",
           "headline"]

CLAIMS: dict[str, str] = {
    "C1": "High-norm outlier tokens exist: about 2 % of patch tokens, with about 10x the norm of the others",
    "C2": "They appear in the middle of the network, after about a third of training, in large models only",
    "C3": "They sit on redundant patches, similar to their neighbours (background)",
    "C4": "They hold little local information: position and pixels are poorly recovered from them",
    "C5": "They hold global information: one outlier token classifies the image better than a normal one",
    "C6": "Registers remove the outliers (and take over their role)",
    "C7": "Registers cost nothing in classification and help dense tasks (segmentation, depth)",
    "C8": "Registers help object discovery (LOST CorLoc)",
    "A1": "One register is enough to remove the artifacts (Fig. 8)",
    "A2": "Dense tasks have an optimal number of registers (Fig. 8)",
    "A3": "Classification keeps improving with more registers (Fig. 8)",
    "A4": "Position embeddings interpolated without antialiasing give striped outlier patterns (App. A)",
}

# The paper's numbers (Darcet et al. 2024), quoted.
PAPER: dict[str, dict[str, Any]] = {
    "C1": {"share": 0.0237, "norm_ratio": 10.0, "model": "DINOv2 ViT-g/14, norm > 150 (Fig. 3)"},
    "C2": {"layer": "about 15 of 40", "training": "after about 1/3", "sizes": "L, H, g of Ti..g (Fig. 4)"},
    "C3": {"where": "patches very similar to their 4 neighbours (Fig. 5a)"},
    "C4": {"position_top1": {"normal": 41.7, "outlier": 22.8},
           "reconstruction_l2": {"normal": 18.38, "outlier": 25.23}, "source": "Fig. 5b"},
    "C5": {"ImageNet top-1 from one token": {"cls": 86.0, "normal": 65.8, "outlier": 69.0}, "source": "Table 1"},
    "C6": {"where": "DINOv2, OpenCLIP, DeiT-III: outliers gone with 4 registers (Fig. 7); one suffices (Fig. 8)"},
    "C7": {"DINOv2": {"IN top-1": [84.3, 84.8], "ADE20k mIoU": [46.6, 47.9], "NYUd RMSE": [0.378, 0.366]},
           "source": "Table 2a, without -> with registers"},
    "C8": {"DINOv2 VOC07 CorLoc": [35.3, 55.4], "DeiT-III VOC07 CorLoc": [11.7, 27.1],
           "source": "Table 3, without -> with registers"},
    "A1": {"model": "DINOv2 ViT-L/14 with 0, 1, 2, 4, 8, 16 registers", "numbers": "not published (Fig. 8)"},
    "A2": {"model": "DINOv2 ViT-L/14", "numbers": "not published (Fig. 8)"},
    "A3": {"model": "DINOv2 ViT-L/14", "numbers": "not published (Fig. 8); 4 registers kept"},
    "A4": {"where": "first DINOv2 models: striped outlier positions; all results use antialiasing (App. A)"},
}

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


def _outliers(share: float | None) -> str:
    if share is None or not math.isfinite(share) or share <= 0:
        return "none"
    return "many" if share >= MIN_SHARE else "few"


def verdict(claim: str, m: dict[str, Any]) -> tuple[str, str]:
    """The verdict on ``claim`` from our measurements ``m``, and the rule that gave it.

    Expected keys of ``m`` per claim (as the chapters record them):
    C1 ``share``, ``norm_ratio``; C2 ``share``, ``layer``, ``depth``; C3 ``share``,
    ``top_on_background``, ``background_patches``, ``top_similarity``, ``all_similarity``;
    C4 ``share``, position/pixel scores of ``normal`` and ``outlier``; C5 ``share``,
    ``class_normal``, ``class_outlier``; C6 ``share_without``, ``share_with``; C7 ``without``
    and ``with`` (classification, segmentation_miou, depth_rmse); C8 ``without``, ``with``.
    """
    if claim not in CLAIMS:
        raise KeyError(f"unknown claim {claim!r}; known: {sorted(CLAIMS)}")
    none = "not at this scale"
    if claim in ("C2", "C3", "C4", "C5") and "share" in m and _outliers(m["share"]) == "none":
        return none, "no outlier tokens (C1) to describe"
    missing = [key for key in NEEDS[claim] if key not in m]
    if missing:
        raise KeyError(f"claim {claim} needs the measured keys {missing}; got {sorted(m)}")
    if claim == "C1":
        rule = (f"reproduced: >= {100 * MIN_SHARE:g} % of patch tokens above k x their image's median; "
                "partly: some, fewer; else not at this scale")
        return {"many": "reproduced", "few": "partly", "none": none}[_outliers(m.get("share"))], rule
    if claim == "C2":
        rel = m["layer"] / max(m["depth"] - 1, 1)
        rule = "reproduced: the outlier share peaks in the middle third of the blocks; else partly"
        return ("reproduced" if 1 / 3 <= rel <= 2 / 3 else "partly"), rule
    if claim == "C3":
        ok = [m["top_on_background"] > m["background_patches"], m["top_similarity"] > m["all_similarity"]]
        rule = ("the largest tokens lie on background more often than the base rate, and their patches "
                "are more similar to their neighbours than average: both = reproduced, one = partly")
        return ("reproduced" if all(ok) else "partly" if any(ok) else none), rule
    if claim == "C4":
        ok = [m["position_top1_outlier"] < m["position_top1_normal"] - TIE,
              m["pixel_l2_outlier"] > m["pixel_l2_normal"]]
        rule = "outliers: lower position accuracy and higher pixel error than normal tokens; both = reproduced"
        return ("reproduced" if all(ok) else "partly" if any(ok) else none), rule
    if claim == "C5":
        rule = f"reproduced: one outlier token classifies better than one normal token (by > {TIE})"
        return ("reproduced" if m["class_outlier"] > m["class_normal"] + TIE else none), rule
    if claim == "C6":
        before, after = _outliers(m.get("share_without")), m.get("share_with") or 0.0
        rule = "reproduced: outliers without registers, and registers cut their share to a quarter or less"
        if before == "none":
            return none, "no outlier tokens without registers (C1): nothing to remove"
        return ("reproduced" if after <= 0.25 * m["share_without"] else "partly" if after < m["share_without"]
                else none), rule
    if claim == "C7":
        w, r = m["without"], m["with"]
        ok = [r["classification"] >= w["classification"] - TIE,
              r["segmentation_miou"] > w["segmentation_miou"] + TIE,
              r["depth_rmse"] < w["depth_rmse"] * (1 - TIE)]
        rule = (f"no classification loss (> -{TIE}), mIoU up (> +{TIE}), depth RMSE down (> {100 * TIE:g} %): "
                "all three = reproduced; no loss and one dense gain = partly")
        return ("reproduced" if all(ok) else "partly" if ok[0] and any(ok[1:]) else none), rule
    if claim == "A1":
        s0, s1 = m["share_by_count"]["0"], m["share_by_count"]["1"]
        if _outliers(s0) == "none":
            return none, "no outlier tokens without registers: nothing to remove"
        return ("reproduced" if s1 <= 0.25 * s0 else "partly" if s1 < s0 else none), \
            "reproduced: 1 register cuts the outlier share to a quarter or less of 0 registers'"
    if claim == "A2":
        def interior(by_count: dict[str, float], sign: float) -> bool:
            vals = [sign * v for v in by_count.values()]  # larger is better after the sign
            best = max(range(len(vals)), key=vals.__getitem__)
            return 0 < best < len(vals) - 1 and vals[best] > max(vals[0], vals[-1]) + TIE * abs(vals[best])
        ok = [interior(m["miou_by_count"], 1.0), interior(m["rmse_by_count"], -1.0)]
        rule = (f"the best mIoU / depth RMSE is at an intermediate register count, better than both ends "
                f"by > {100 * TIE:g} %: both = reproduced, one = partly")
        return ("reproduced" if all(ok) else "partly" if any(ok) else none), rule
    if claim == "A3":
        acc = list(m["acc_by_count"].values())
        rise = acc[-1] > acc[0] + TIE
        steady = all(b >= a - TIE for a, b in zip(acc, acc[1:]))
        rule = (f"reproduced: accuracy with the most registers beats 0 registers by > {TIE} and never drops "
                f"by > {TIE} from one count to the next; partly: the first only")
        return ("reproduced" if rise and steady else "partly" if rise else none), rule
    if claim == "A4":
        rule = ("reproduced: without antialiasing more outlier tokens and a more striped mean norm map "
                "than with it, at the downsampled resolution")
        if _outliers(m["share_no_aa"]) == "none":
            return none, "no outlier tokens at the new resolution, with or without antialiasing"
        ok = m["share_no_aa"] > m["share_aa"] and m["stripe_no_aa"] > m["stripe_aa"]
        return ("reproduced" if ok else none), rule
    # C8
    w, r = m["without"], m["with"]
    rule = f"reproduced: CorLoc with registers higher by > {TIE}"
    return ("reproduced" if r > w + TIE else none), rule


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
        doc: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt claims file {path}: {e}; move it away to start a new one") from e
    return doc


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists, numbers plain floats."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item"):
        return _clean(x.item())
    return x


def record(profile: str, claim: str, measured: dict[str, Any], scale: str, model: str, chapter: str,
           root: Path | str | None = None) -> dict[str, Any]:
    """Compute the verdict of ``claim`` and write it into the profile's claims file.

    Returns:
        The entry written.
    """
    v, rule = verdict(claim, measured)
    entry = {"claim": CLAIMS[claim], "paper": PAPER.get(claim), "measured": _clean(measured), "verdict": v,
             "rule": rule, "scale": scale, "model": model, "chapter": chapter}
    doc = load_claims(profile, root)
    doc[claim] = entry
    path = claims_path(profile, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(sorted(doc.items())), indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
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
    return {"C1": m, "C2": {**m, "size_shares": [r["share"] for r in sizes], "size_params": [r["params"] for r in sizes]},
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
            "C7": {"without": {key: float(d0[key]) for key in dense_keys}, "with": {key: float(d1[key]) for key in dense_keys}},
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
        return f"This model has high-norm outliers: {share:.2f} % of its patch tokens are above {k:g} x their image's median norm."
    return (f"This model shows no high-norm outliers at this scale: {share:.2f} % of its patch tokens pass {k:g} x "
            f"their image's median norm (the claims rule asks for at least {100 * MIN_SHARE:g} %), and the largest "
            f"token of an image is on average {report['ratio_mean']:.2f} x the median (the paper's are about 10 x).")
