"""The build's progress lines: which chapter, how long it took last time, and the estimate for the rest."""

import json

import nbformat
import pytest

from regvit_lib import book_progress as bp


def test_estimates_come_from_the_last_build_and_say_when_there_is_none(tmp_path) -> None:
    assert bp.load_times("cpu", tmp_path) == {}
    bp.times_path("cpu", tmp_path).parent.mkdir(parents=True)
    bp.times_path("cpu", tmp_path).write_text("{not json")
    assert bp.load_times("cpu", tmp_path) == {}  # a broken file never stops a build
    times = {"a": 30.0, "b": 100.0}
    assert bp.estimate(["a"], times) == "about 30 s"
    assert bp.estimate(["a", "b"], times) == "about 2.2 min"
    assert bp.estimate(["a", "c"], times).startswith("no estimate yet")
    assert bp.estimate([], times) == "nothing left"


def test_a_sphinx_build_prints_each_chapter_and_keeps_its_time(tmp_path, monkeypatch, sphinx_build) -> None:
    pytest.importorskip("myst_nb")
    monkeypatch.setenv("REGVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REGVIT_PROFILE", "smoke")
    src = tmp_path / "book"
    src.mkdir()
    (src / "conf.py").write_text('extensions = ["myst_nb", "regvit_lib.book_progress"]\n'
                                 'nb_execution_mode = "off"\nexclude_patterns = ["_build"]\n')
    (src / "index.md").write_text("# Book\n\n```{toctree}\na\nb\n```\n")
    for name in ("a", "b"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Chapter {name}")])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, src / f"{name}.ipynb")

    def build() -> str:
        return sphinx_build(src, tmp_path / "out")

    first = build()
    assert "regvit: chapter 1 of 2: a (first build; with the rest: no estimate yet" in first
    assert "regvit: b done in" in first
    times = json.loads((tmp_path / "cache" / "build-times" / "smoke.json").read_text())
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    second = build()
    assert "regvit: executing 2 chapters ('smoke' profile): about" in second
    assert "regvit: chapter 2 of 2: b (" in second and "s last time; with the rest: about" in second
