"""The book's conclusion: every claim's verdict, read from the claims files the chapters wrote, and
what a reader should take from each.

Chapters 2 to 4 record each claim of the paper (C1-C8, A1-A4) with our measurement and a verdict
in ``<cache>/claims/<profile>.json`` (:mod:`regvit_lib.claims`), and the pretrained models' in
``<profile>-<alias>.json``. :func:`claims_rows` gathers them (a claim no chapter has recorded in
this profile is listed as not measured, with the chapter that measures it), :func:`comparison_rows`
turns chapter 5's comparison into one verdict line per method, and :func:`takeaways` writes one
paragraph per claim: the verdicts, then what the claim means for a student, and, where it is not
reproduced, what would settle it. The prose says nothing about our numbers: those come from the
files, so the text stays true whatever a build measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .claims import CLAIMS, PAPER, claims_path, load_claims
from .profiles import PRETRAINED

__all__ = ["CHAPTER_OF", "TAKEAWAYS", "METHOD_CLAIMS", "paper_text", "claim_files", "claims_rows", "comparison_rows", "takeaways",
           "verdict_counts"]

# Which chapter measures each claim (a claim missing from a profile's file points there).
CHAPTER_OF: dict[str, str] = {**{f"C{i}": "02_high_norm_tokens" for i in range(1, 6)},
                              **{f"C{i}": "03_registers" for i in range(6, 9)},
                              **{f"A{i}": "04_ablations" for i in range(1, 5)}}

# Per claim: what a student should take away, and what would settle it where our scale does not.
TAKEAWAYS: dict[str, tuple[str, str]] = {
    "C1": ("A big ViT trained for long keeps a few patch tokens whose norm dwarfs the rest. Before reading a "
           "pretrained ViT's attention maps or patch features, look at its token norms: the artifacts are easy to "
           "see once you look.",
           "The paper saw them in ViT-L and larger after long training. Running the profile's pretrained models "
           "(chapter 2, section 6, with the model hub reachable), or training the gpu profile, would show whether "
           "the rule finds them where ours find none."),
    "C2": ("The artifacts are learned, not built in: they come mid-depth, part-way through training, and only "
           "once the model is large enough. The architecture allows them; scale and training make them.",
           "A sweep that crosses the threshold: the emergence study of chapter 4 at larger widths and longer "
           "training (a GPU profile) is the experiment; our runs stay below it."),
    "C3": ("The network picks patches that add nothing, background that looks like its neighbours, and reuses "
           "their slots. That is why masking or dropping such patches changes little for the task.",
           "It needs outliers to describe: the pretrained section of chapter 2 measures it on the paper's models."),
    "C4": ("An outlier token has largely forgotten which patch it came from and what that patch looked like. Dense "
           "methods that read it as a local feature are reading something else.",
           "As C3: only a model with outliers can show it; the planted positive control of chapter 4 shows what "
           "the probes would read if they were there."),
    "C5": ("What the outliers hold instead is global: a summary of the image, useful for classifying it. The "
           "network has found itself scratch space for global computation.",
           "As C3: a model with outliers. The single-token class probe of chapter 2 is the measurement to run."),
    "C6": ("Give the network dedicated scratch tokens and it stops taking over patches: registers hold the "
           "global computation, and the patch tokens stay local.",
           "It needs a model that has outliers without registers and is trained again with them: the DINOv2 pair "
           "with and without registers (chapter 3, section 6), or a GPU-scale pair."),
    "C7": ("Registers are close to free: a few tokens more, classification unchanged, dense tasks slightly better. "
           "There is little reason not to add them to a new ViT.",
           "Our differences are small against the spread of the seeds; more seeds, or models that have outliers "
           "to remove, would show whether the small gain is there."),
    "C8": ("Object discovery that reads the similarity of keys (LOST) gains the most: outliers poison that "
           "similarity, and registers take them out of the patches.",
           "Our scenes are simple and our models have no outliers to remove; the pretrained pair on photographs "
           "or a real detection set is the test."),
    "A1": ("One register is already enough to take the artifacts out of the patches; more do not remove more.",
           "It needs artifacts to remove: the register grid of chapter 4 on a model that has them (a GPU profile)."),
    "A2": ("Dense tasks have a best number of registers, a handful; beyond it they do not improve.",
           "Finer register counts and more seeds: at our scale the curves are flat within the seeds' spread."),
    "A3": ("Classification keeps gaining a little as registers are added, so the count is a trade-off with "
           "the dense tasks; the paper keeps 4.",
           "More seeds and longer training; the paper's own numbers for this figure are not published."),
    "A4": ("The striped outlier patterns of the first DINOv2 models came from resizing the position embedding "
           "without antialiasing: a detail of interpolation, not of the artifacts themselves.",
           "A model with outliers fine-tuned at another resolution, with and without antialiasing."),
}

# Per compared method: what its own paper reports (quoted from its paper or repository, ``-`` if nothing).
METHOD_CLAIMS: dict[str, str] = {
    "registers": "4 registers remove the outliers; dense tasks and object discovery improve (Darcet et al.)",
    "memory": "learnable memory tokens adapt a ViT to new tasks cheaply (Sandler et al.)",
    "tokenlearner": "8 or 16 learned tokens from the middle keep accuracy at about half the compute",
    "tokenlearner-fuser": "TokenFuser restores the patch grid after TokenLearner for dense outputs",
    "avit": "A-ViT-T 71.4 % at 0.8 GFLOPs, A-ViT-S 78.8 % at 3.6 GFLOPs on ImageNet (adaptive depth)",
    "vim": "Vim-Ti 76.1 % on ImageNet; bidirectional state-space blocks instead of attention",
    "mamba-r": "Mamba-R-B 82.9 % vs Vim-B 81.8 %; registers remove Vim's high-norm background tokens",
    "off-by-one": "a head may attend to nothing, so no sink is needed (a blog post, no experiment)",
    "kv-bias": "a learned key/value bias removes massive activations (in GPT-2)",
    "gated": "a sigmoid gate after attention removes the attention sink (in LLMs)",
    "victor": "8 registers summarise a VLM's image: < 4 % drop at 3.3x throughput",
    "hmhsa": "local windows plus pooled global attention: Tiny 80.4 % at 256 px",
}


def paper_text(value: Any) -> str:
    """The paper's numbers of a claim (a nested dict of :data:`regvit_lib.claims.PAPER`) as one line."""
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {paper_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " → ".join(paper_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def claim_files(profile: str, root: Path | str | None) -> dict[str, Path]:
    """The profile's own claims file and its pretrained models' (``<profile>-<alias>.json``), by model."""
    folder = claims_path(profile, root).parent
    files = {profile: claims_path(profile, root)}
    for alias in sorted(PRETRAINED):
        if (folder / f"{profile}-{alias}.json").is_file():
            files[f"{profile}-{alias}"] = folder / f"{profile}-{alias}.json"
    return files


def claims_rows(profile: str, root: Path | str | None = None) -> pd.DataFrame:
    """Every claim, with the paper's numbers, ours, the verdict and the scale behind it: one row per
    claim of the profile's own file (a claim it lacks: ``not measured``, pointing at its chapter), then
    one row per claim of each pretrained model's file.

    Columns: ``id``, ``claim``, ``paper``, ``ours`` (mean ± sd over seeds), ``verdict``, ``seeds``,
    ``scale``, ``model``, ``chapter``, and ``file``: the claims file of the row (``<profile>`` or
    ``<profile>-<alias>``).
    """
    out = []
    for name, path in claim_files(profile, root).items():
        doc = load_claims(name, root)
        own = name == profile
        for key in CLAIMS if own else sorted(doc, key=list(CLAIMS).index):
            e = doc.get(key)
            out.append({"id": key, "claim": CLAIMS[key], "paper": paper_text(PAPER.get(key, "")),
                        "ours": e.get("evidence") or "" if e else "",
                        "verdict": e["verdict"] if e else "not measured",
                        "seeds": e.get("seeds") if e else None,
                        "scale": e["scale"] if e else profile, "model": e["model"] if e else "",
                        "chapter": e["chapter"] if e else CHAPTER_OF[key], "file": name})
    return pd.DataFrame(out).astype({"seeds": "Int64"})


def comparison_rows(doc: dict[str, Any]) -> pd.DataFrame:
    """Chapter 5 in one line per method: what its paper reports, and where ours differs from the plain
    ViT beyond the seeds' spread (:func:`regvit_lib.compare.against_vit`)."""
    from .compare import METHODS, against_vit

    label_to_key = {m.label: key for key, m in METHODS.items()}
    out = []
    for _, r in against_vit(doc).iterrows():
        cols = {c: v for c, v in r.items() if c != "method"}
        said = [f"{w}: " + ", ".join(c for c, v in cols.items() if v == w) for w in ("better", "worse")
                if w in cols.values()]
        key = label_to_key.get(str(r["method"]), "")
        out.append({"method": r["method"], "family": METHODS[key].family if key else "",
                    "their paper": METHOD_CLAIMS.get(key, "-"),
                    "ours, against the ViT": "; ".join(said) or "within the seeds' spread everywhere",
                    "scale": f"{doc['profile']}, {doc['seeds']} seeds"})
    return pd.DataFrame(out)


def verdict_counts(rows: pd.DataFrame) -> dict[str, int]:
    """How many claims got each verdict (rows of :func:`claims_rows`)."""
    return {str(k): int(v) for k, v in rows["verdict"].value_counts().items()}


def takeaways(rows: pd.DataFrame) -> str:
    """One Markdown paragraph per claim: the claim, each verdict with its scale, the take-away, and what
    would settle it wherever a verdict is not ``reproduced``."""
    paras = []
    for key, g in rows.groupby("id", sort=False):
        verdicts = "; ".join(f"*{r['verdict']}* ({_who(r)})" for _, r in g.iterrows())
        take, settle = TAKEAWAYS[str(key)]
        text = f"**{key}. {CLAIMS[str(key)]}.** Here: {verdicts}. {take}"
        if (g["verdict"] != "reproduced").any():
            text += f" *What would settle it:* {settle}"
        paras.append(text)
    return "\n\n".join(paras)


def _who(row: pd.Series) -> str:
    """Which model and scale a verdict stands on, e.g. ``cpu, 0 registers (3 seeds)`` or ``dinov2-g, pretrained``."""
    model, scale = str(row["model"]), str(row["scale"])
    if not model:
        return f"scale {scale}"
    return model if scale in model else f"{model}, {scale}"
