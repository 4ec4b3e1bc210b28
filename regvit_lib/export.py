"""Export a built book's figures and tables for a thesis: ``python -m regvit_lib.export --out thesis/``.

Reads what the chapters kept while the book was built (:mod:`regvit_lib.exhibits`,
``<cache>/exhibits/<profile>/<chapter>/``) and the profile's claims files (:mod:`regvit_lib.claims`),
and writes, named by chapter and exhibit::

    <out>/<chapter>/<name>.pdf, <name>.svg   every figure the chapter kept
    <out>/<chapter>/<name>.tex, <name>.csv   every table it kept (LaTeX booktabs: \\usepackage{booktabs})
    <out>/claims.tex, claims.csv             the claims each claims file of the profile records
    <out>/README.md                          what came from which chapter and profile, and when

It copies and converts; nothing is recomputed, so it takes seconds. Files already in ``<out>`` that
this export does not write are left alone.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .cache import atomic_write
from .claims import claims_path
from .conclusion import claims_rows
from .exhibits import _exhibit_name, exhibits_dir
from .profiles import default_build_name

__all__ = ["PRECISION", "CLAIM_COLUMNS", "escape", "latex_table", "export", "main"]

PRECISION = 3  # decimals of a float in a .tex table, as labels.show displays them
CLAIM_COLUMNS = ["id", "claim", "paper", "measured", "verdict", "seeds", "scale", "model", "chapter"]

# What LaTeX text cannot hold as it is, and what it becomes.
_TEX = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "±": r"$\pm$", "×": r"$\times$", "−": "$-$", "–": "--", "—": "---", "→": r"$\rightarrow$", "≤": r"$\leq$",
    "≥": r"$\geq$", "≈": r"$\approx$", "·": r"$\cdot$", "…": r"\ldots{}", "°": r"$^\circ$", "µ": r"$\mu$",
    "μ": r"$\mu$"})
_UNNAMED = re.compile(r"Unnamed: \d+(_level_\d+)?")  # read_csv's name for an empty header


def escape(value: Any) -> str:
    """One table cell, header or caption as LaTeX text on one line: special characters escaped, a float
    to :data:`PRECISION` decimals, a missing value as an en dash."""
    if not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value):
        return "--"
    text = f"{value:.{PRECISION}f}" if isinstance(value, float) else str(value)
    return " ".join(text.translate(_TEX).split())


def _align(column: pd.Series) -> str:
    """A column's LaTeX alignment: numbers right, long text wrapped, other text left."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return "r"
    return "p{4cm}" if column.astype(str).str.len().max() > 30 else "l"


def latex_table(frame: pd.DataFrame, caption: str, label: str, index: bool = False) -> str:
    """``frame`` as a LaTeX ``booktabs`` table (pandas' ``Styler.to_latex``) with ``\\caption{caption}`` and
    ``\\label{tab:<label>}``: one body row per row of ``frame``, every cell, header and the caption escaped
    (:func:`escape`); ``index``: show the index as the first column(s)."""
    shown = frame.map(escape).rename(index=escape, columns=escape)
    shown.index.names = [None if n is None else escape(n) for n in frame.index.names]
    align = "l" * frame.index.nlevels * index + "".join(_align(frame.iloc[:, i]) for i in range(frame.shape[1]))
    styler = shown.style if index else shown.style.hide(axis="index")
    return str(styler.to_latex(hrules=True, caption=escape(caption), label=f"tab:{label}", position="htbp",
                               position_float="centering", column_format=align))


def _write(path: Path, data: bytes | str) -> Path:
    """Write ``path`` atomically; returns it."""
    raw = data.encode() if isinstance(data, str) else data
    atomic_write(path, lambda f: f.write(raw))
    return path


def _read_index(path: Path) -> list[dict[str, Any]]:
    """The exhibits an ``index.json`` lists, checked.

    Raises:
        ValueError: the file is not a valid index (named, with how to rewrite it).
    """
    try:
        exhibits = json.loads(path.read_text())["exhibits"]
        for e in exhibits:
            _exhibit_name(e["name"])
            if e["kind"] not in ("figure", "table") or not isinstance(e.get("title", ""), str):
                raise ValueError(f"exhibit {e['name']!r} has kind {e['kind']!r}")
        return list(exhibits)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"corrupt exhibits index {path}: {type(err).__name__}: {err}; execute that chapter "
                         "again (make book) to rewrite it") from err


def _read_table(csv: Path, entry: dict[str, Any]) -> pd.DataFrame:
    """A kept table read back from its CSV, with the index levels and header rows the index recorded."""
    levels, headers = int(entry.get("index_levels", 0)), int(entry.get("header_levels", 1))
    frame = pd.read_csv(csv, index_col=list(range(levels)) or None, header=list(range(headers)) if headers > 1 else 0,
                        keep_default_na=False, na_values=[""])
    if len(frame) != entry.get("rows", len(frame)):
        raise ValueError(f"{csv} holds {len(frame)} rows, its index.json {entry['rows']}: execute that chapter again")
    return frame.rename(columns=lambda c: "" if _UNNAMED.fullmatch(str(c)) else c)


def _code_version() -> str:
    """The package version and the git commit of the checkout (``unknown`` outside one)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=here, timeout=30).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return f"regvit {__version__}, commit unknown (not a git checkout)"
    return f"regvit {__version__}, commit `{commit}`" + (" with uncommitted changes to regvit_lib" if dirty else "")


def _export_claims(out: Path, profile: str, root: Path | str | None) -> tuple[list[Path], list[str]]:
    """``claims.tex`` (one table per claims file of ``profile`` that records any claim) and ``claims.csv``;
    returns the files and the README's lines."""
    tables, frames = [], []
    every = claims_rows(profile, root).rename(columns={"ours": "measured"})
    for name, rows in every[every["verdict"] != "not measured"].groupby("file", sort=False):
        name, rows = str(name), rows[CLAIM_COLUMNS]
        what = f"our models, profile {profile}" if name == profile else f"the pretrained {name[len(profile) + 1:]}"
        tables.append(latex_table(rows, f"The paper's claims measured on {what}", f"claims-{name}"))
        frames.append(rows.assign(file=claims_path(name, root).name))
    folder = claims_path(profile, root).parent
    tex = "\n".join(tables) if tables else f"% no claims recorded for profile {profile} in {folder}\n"
    table = pd.concat(frames) if frames else pd.DataFrame(columns=[*CLAIM_COLUMNS, "file"])
    files = [_write(out / "claims.tex", tex), _write(out / "claims.csv", table.to_csv(index=False))]
    sources = ", ".join(f"`{f}`" for f in dict.fromkeys(table["file"])) or "none"
    return files, ["## Claims", "", f"- `claims.tex`, `claims.csv`: {len(table)} claims with the paper's numbers, "
                   f"ours and the verdict, one table per claims file (from `{folder}`: {sources})", ""]


def export(out: Path | str, profile: str, root: Path | str | None = None) -> list[Path]:
    """Write the thesis folder of ``profile`` into ``out`` (see the module docstring); returns the files
    written. Prints one line per chapter.

    Args:
        out: the folder to write (made if missing).
        profile: the profile whose book build to export.
        root: the cache folder (default :func:`regvit_lib.cache.cache_root`).

    Raises:
        FileNotFoundError: no chapter kept anything for ``profile`` (the message says how to build it).
        ValueError: a chapter's ``index.json`` is corrupt (named).
    """
    base = exhibits_dir(profile, root=root)
    indexes = sorted(base.glob("*/index.json"))
    if not indexes:
        raise FileNotFoundError(f"no figures or tables recorded for profile {profile!r} in {base}: build the "
                                f"book in that profile first (make book, or REGVIT_PROFILE={profile} make book)")
    out = Path(out)
    written: list[Path] = []
    readme = [f"# Figures and tables of the regvit book, profile `{profile}`", "",
              f"Exported from `{base}` by `python -m regvit_lib.export --out {out} --profile {profile}` "
              f"({_code_version()}). Each chapter's files are as its last build kept them (date below). "
              "The tables need `\\usepackage{booktabs}`; long text columns are `p{4cm}`.", ""]
    for path in indexes:
        chapter, exhibits = path.parent.name, _read_index(path)
        built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
        readme += [f"## {chapter} (profile `{profile}`, built {built})", ""]
        for e in exhibits:
            name, title = e["name"], e.get("title") or e["name"]
            src, dst = path.parent / name, out / chapter / name
            if e["kind"] == "figure":
                files = [_write(Path(f"{dst}.{fmt}"), Path(f"{src}.{fmt}").read_bytes()) for fmt in ("pdf", "svg")]
            else:
                frame = _read_table(Path(f"{src}.csv"), e)
                tex = latex_table(frame, title, name, index=int(e.get("index_levels", 0)) > 0)
                files = [_write(Path(f"{dst}.tex"), tex), _write(Path(f"{dst}.csv"), Path(f"{src}.csv").read_bytes())]
            written += files
            readme.append(f"- {', '.join(f'`{f.relative_to(out)}`' for f in files)}: {e['kind']}, {title}")
        readme.append("")
        kinds = [e["kind"] for e in exhibits]
        print(f"export: {chapter}: {kinds.count('figure')} figures, {kinds.count('table')} tables", flush=True)
    claims_out, lines = _export_claims(out, profile, root)
    written += [*claims_out, _write(out / "README.md", "\n".join(readme + lines))]
    print(f"export: {len(written)} files in {out}", flush=True)
    return written


def main(argv: list[str] | None = None) -> None:
    """The command line: ``python -m regvit_lib.export --out thesis/ [--profile P]``."""
    ap = argparse.ArgumentParser(description="Export a built book's figures, tables and claims for a thesis.")
    ap.add_argument("--out", default="thesis", help="the folder to write (default: thesis)")
    ap.add_argument("--profile", default=None, help="the built profile, on other images <profile>-<data> (default: $REGVIT_PROFILE on $REGVIT_DATA, else cpu)")
    args = ap.parse_args(argv)
    try:
        export(args.out, args.profile or default_build_name())
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"export: {err}") from err


if __name__ == "__main__":
    main()
