"""The public repository URL, in one place: ``_config.yml``'s ``repository.url``.

That URL feeds the book's launch and repository buttons, and each chapter's Colab install cell (its
first code cell, tagged ``remove-cell``, whose first line starts with ``# Colab only``) installs the
library from it. ``sync`` rewrites those cells from the URL; ``check`` says which are out of date::

    python -m regvit_lib.publish sync     # rewrite the chapters' install cells from _config.yml
    python -m regvit_lib.publish check    # exit 1, naming them, when any is out of date

Each chapter keeps its own extras (``regvit[book]`` or plain ``regvit``). Notebooks are written with
``nbformat`` and only when their install cell changes; everything else in them is kept.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import yaml

__all__ = ["MARKER", "ROOT", "cell_extras", "find_install_cell", "install_cell", "main", "repository_url", "sync"]

ROOT = Path(__file__).resolve().parent.parent
"""The repository (book) root: ``_config.yml`` and ``chapters/`` live here."""

MARKER = "# Colab only"
"""The first line of every install cell starts with this."""

_EXTRAS = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")
_PIP_LINE = re.compile(r'%pip install -q "regvit(?:\[(?P<extras>[^\]]*)\])? @ git\+')


def repository_url(config: Path = ROOT / "_config.yml") -> str:
    """``repository.url`` of the book's ``_config.yml`` (trailing ``/`` removed).

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` when it has no
    ``repository.url``; both name the file.
    """
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such file (the book's _config.yml holds repository.url)")
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    repo = doc.get("repository") if isinstance(doc, dict) else None
    url = repo.get("url") if isinstance(repo, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{config}: no repository.url (the public repository the book installs from)")
    return url.strip().rstrip("/")


def _tidy(extras: str) -> str:
    """``"book, test"`` -> ``"book,test"``."""
    return ",".join(part.strip() for part in extras.split(",")) if extras.strip() else ""


def install_cell(url: str, extras: str = "") -> str:
    """The source of a chapter's Colab install cell for the repository at ``url``.

    On Colab (``"google.colab" in sys.modules``) it prints the torch it keeps, pip-installs
    ``regvit[extras] @ git+url`` (whose torch requirement is a range Colab's torch satisfies, so
    torch is never replaced), then prints the regvit, timm and torch versions now installed.
    Elsewhere it does nothing and prints nothing. ``extras`` is comma-separated, e.g. ``"book"``.
    """
    url = url.strip().rstrip("/")
    if not url or any(ch.isspace() or ch in "\"'\\" for ch in url):
        raise ValueError(f"not a usable repository URL: {url!r}")
    extras = _tidy(extras)
    if extras and not _EXTRAS.fullmatch(extras):
        raise ValueError(f"not a list of extras: {extras!r}")
    requirement = f"regvit[{extras}]" if extras else "regvit"
    return (
        f"{MARKER}: install the library (Colab's torch is kept). Elsewhere this does nothing.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import importlib.metadata as md\n"
        "\n"
        '    print("keeping torch", md.version("torch"))\n'
        f'    %pip install -q "{requirement} @ git+{url}"\n'
        '    print("installed regvit", md.version("regvit"), "| timm", md.version("timm"), '
        '"| torch", md.version("torch"))'
    )


def find_install_cell(nb: Any) -> Any | None:
    """The notebook's install cell: its first code cell, when tagged ``remove-cell`` and starting
    with :data:`MARKER`; else ``None``."""
    first = next((cell for cell in nb.cells if cell.cell_type == "code"), None)
    if first is None or not first.source.startswith(MARKER):
        return None
    if "remove-cell" not in first.get("metadata", {}).get("tags", []):
        return None
    return first


def cell_extras(source: str) -> str:
    """The extras an install cell's ``%pip install`` line asks for (``""`` for plain ``regvit``)."""
    found = _PIP_LINE.search(source)
    if found is None:
        raise ValueError('no `%pip install -q "regvit... @ git+..."` line in the install cell')
    return _tidy(found.group("extras") or "")


def sync(chapters: Path, url: str, check: bool = False) -> list[Path]:
    """Rewrite every chapter's install cell (``chapters/*.ipynb``) to ``install_cell(url, its extras)``.

    Returns the chapters whose cell was out of date. With ``check=True`` nothing is written: the
    return value is the list of chapters that ``sync`` would rewrite. A chapter without an install
    cell is an error (``ValueError`` naming it).
    """
    stale: list[Path] = []
    notebooks = sorted(chapters.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{chapters}: no chapters (*.ipynb)")
    for path in notebooks:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        cell = find_install_cell(nb)
        if cell is None:
            raise ValueError(f"{path}: its first code cell is not an install cell "
                             f"(tagged remove-cell, starting with {MARKER!r})")
        try:
            wanted = install_cell(url, cell_extras(cell.source))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if cell.source == wanted:
            continue
        stale.append(path)
        if not check:
            cell.source = wanted
            path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    """``python -m regvit_lib.publish sync|check``: the exit status (1 when ``check`` finds stale cells)."""
    parser = argparse.ArgumentParser(
        prog="python -m regvit_lib.publish",
        description="Keep the chapters' Colab install cells on _config.yml's repository.url.")
    parser.add_argument("command", choices=["sync", "check"],
                        help="sync: rewrite the install cells; check: list the out-of-date ones, exit 1 if any")
    parser.add_argument("--config", type=Path, default=ROOT / "_config.yml", help="the book's _config.yml")
    parser.add_argument("--chapters", type=Path, default=ROOT / "chapters", help="folder of the chapters")
    args = parser.parse_args(argv)
    try:
        url = repository_url(args.config)
        stale = sync(args.chapters, url, check=args.command == "check")
    except (OSError, ValueError) as err:
        print(f"publish: {err}", file=sys.stderr)
        return 2
    if args.command == "sync":
        print(f"publish: install cells point at {url}; rewrote {len(stale)} chapter(s)"
              + "".join(f"\n  {p}" for p in stale))
        return 0
    if stale:
        print(f"publish: install cells out of date with repository.url ({url}) in {args.config}:"
              + "".join(f"\n  {p}" for p in stale)
              + "\nrun `python -m regvit_lib.publish sync` to rewrite them", file=sys.stderr)
        return 1
    print(f"publish: the chapters' install cells install from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
