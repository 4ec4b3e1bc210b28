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
