"""The chapters are committed in one documented state: stripped of outputs, python3 kernel,
one `parameters` cell whose profile defaults to the environment (so nbval runs `smoke`)."""

from pathlib import Path

import nbformat
import pytest

CHAPTERS = sorted((Path(__file__).parents[1] / "chapters").glob("*.ipynb"))


def test_there_are_chapters() -> None:
    assert CHAPTERS, "no chapters found"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert c.outputs == [] and c.execution_count is None, f"{path.name}: outputs committed"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    assert "profile = rv.default_profile_name()" in params[0].source
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


# A visible code line fits the rendered page (the book theme's text column shows about 85
# characters of code before it cuts the line off).
PAGE_WIDTH = 80


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_visible_code_fits_the_page(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    shown = [c for c in nb.cells if c.cell_type == "code"
             and not {"remove-cell", "remove-input"} & set(c.metadata.get("tags", []))]
    long = [line for c in shown for line in c.source.splitlines() if len(line) > PAGE_WIDTH]
    assert not long, f"{path.name}: {len(long)} visible code lines longer than {PAGE_WIDTH}: {long[:3]}"


def test_our_figures_are_numbered_by_chapter_apart_from_the_papers() -> None:
    import yaml

    root = Path(__file__).parents[1]
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    numbered = [ch["file"] for part in toc["parts"] if part.get("numbered") for ch in part["chapters"]]
    assert numbered == [f"chapters/{p.stem}" for p in CHAPTERS]  # chapter N is the Nth numbered file
    config = yaml.safe_load((root / "_config.yml").read_text())
    assert config["sphinx"]["config"]["numfig_format"]["figure"] == "Figure %s"  # never the paper's "Fig."
    for path in CHAPTERS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                for line in cell.source.splitlines():
                    if line.startswith("#"):  # section titles name the paper's figures as the paper's
                        assert "(Fig." not in line and "(Table" not in line, f"{path.name}: {line}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_figure_a_chapter_glues_is_kept_for_the_thesis(path: Path) -> None:
    """A chapter keeps its exhibits under its own name (two chapters sharing one would wipe each
    other's), and glues figures only through it (a bare glue would leave the figure out of
    `make thesis`)."""
    import re

    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert re.findall(r"rv\.Exhibits\(P\.name, \"([^\"]+)\"\)", code) == [path.stem]
    figures = re.findall(r"ex\.figure\(\s*f?\"(\w+)", code)
    assert figures, f"{path.name} keeps no figure"
    assert not re.search(r"glue\(\s*\"fig", code), f"{path.name}: a figure glued without ex.figure"
    glued = {m for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"
             for m in re.findall(r"\{glue:figure\}\s*(\w+)", c.source)}
    assert glued <= set(figures), f"{path.name}: figures on the page but not kept: {glued - set(figures)}"
