"""A chapter's figures and tables are kept while the book builds (regvit_lib.exhibits) and exported
for a thesis (regvit_lib.export)."""

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from regvit_lib import claims, labels  # noqa: E402
from regvit_lib.exhibits import Exhibits, exhibits_dir  # noqa: E402
from regvit_lib.export import export, latex_table, main  # noqa: E402

SPECIAL = pd.DataFrame({"share_%": [1.5, 2.25, float("nan")], "a & b": ["x_1 #2", "100 % {ok}", "3 × 4 – 5"]},
                       index=pd.Index(["row_1", "row&2", "r3"], name="run_id"))


def _body_rows(tex: str) -> list[str]:
    """The lines of a booktabs table's body: between \\midrule and \\bottomrule, ending in \\\\."""
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    return [line for line in body.splitlines() if line.rstrip().endswith("\\\\")]


def _chapter(root: Path, chapter: str = "02_x", profile: str = "toy") -> pd.DataFrame:
    """Record 2 figures and 2 tables; returns the labelled frame of the Styler table."""
    ex = Exhibits(profile, chapter, root=root)
    for i in range(2):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [i, 1])
        assert ex.figure(f"fig_{i}", fig, f"figure {i}") is fig
        plt.close(fig)
    seeds = pd.DataFrame({"model": ["a", "a", "b"], "share": [0.1, 0.2, 0.3]})
    shown = labels.show_seeds(seeds, "model", ["share"])  # a Styler: "mean ± sd" strings, index hidden
    assert ex.table("tab-seeds", shown, "seeds of two models: 5 % & more") is shown
    assert ex.table("tab_special", SPECIAL, "special_characters") is SPECIAL
    return shown.data


def test_export_writes_every_figure_table_and_claim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out = tmp_path / "cache", tmp_path / "thesis"
    seeds_frame = _chapter(root)
    claims.record("toy", "C1", {"share": [0.03, 0.02]}, "toy", "toy model", "02_x", root=root)
    claims.record("toy", "C6", {"share_without": [0.0, 0.0], "share_with": [0.0, 0.0]}, "toy", "toy", "03_x",
                  root=root)
    claims.record("toy-dinov2-s", "C1", {"share": 0.05}, "pretrained", "dinov2-s", "02_x", root=root)
    written = export(out, "toy", root=root)
    assert "export: 02_x: 2 figures, 2 tables" in capsys.readouterr().out
    for i in range(2):
        assert (out / "02_x" / f"fig_{i}.pdf").read_bytes().startswith(b"%PDF")
        assert ET.parse(out / "02_x" / f"fig_{i}.svg").getroot().tag.endswith("}svg")
    for name, frame in (("tab-seeds", seeds_frame), ("tab_special", SPECIAL)):
        tex = (out / "02_x" / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\bottomrule" in tex and f"\\label{{tab:{name}}}" in tex
        assert len(_body_rows(tex)) == len(frame)
    seeds_tex = (out / "02_x" / "tab-seeds.tex").read_text()
    assert "±" not in seeds_tex and "\\caption{seeds of two models: 5 \\% \\& more}" in seeds_tex
    assert _body_rows(seeds_tex)[0].startswith("a & 2 & 0.150 $\\pm$ 0.071")  # as shown: no hidden index
    assert pd.read_csv(out / "02_x" / "tab-seeds.csv").shape == seeds_frame.shape
    tex = (out / "02_x" / "tab_special.tex").read_text()
    table = tex.split("\\toprule", 1)[1].split("\\bottomrule", 1)[0]
    assert not re.search(r"(?<!\\)[%#_{}]|[×–]", table)  # every special character escaped ...
    assert all(len(re.split(r"(?<!\\)&", line)) == 3 for line in _body_rows(tex))  # ... and & separates 3 cells
    for escaped in ("x\\_1 \\#2", "100 \\% \\{ok\\}", "row\\&2", "share\\_\\%", "run\\_id", "$\\times$", "--"):
        assert escaped in tex
    back = pd.read_csv(out / "02_x" / "tab_special.csv", index_col=0)
    assert back.shape == SPECIAL.shape and back.index.tolist() == SPECIAL.index.tolist()
    claims_tex = (out / "claims.tex").read_text()
    assert claims_tex.count("\\toprule") == 2  # one table per claims file: ours, the pretrained one
    assert [len(_body_rows(t)) for t in claims_tex.split("\\end{table}")[:-1]] == [2, 1]
    assert "\\label{tab:claims-toy-dinov2-s}" in claims_tex
    assert pd.read_csv(out / "claims.csv")["id"].tolist() == ["C1", "C6", "C1"]
    readme = (out / "README.md").read_text()
    assert {p.relative_to(out).as_posix() for p in written if p.name != "README.md"} == {
        *(f"02_x/fig_{i}.{fmt}" for i in range(2) for fmt in ("pdf", "svg")),
        *(f"02_x/{t}.{fmt}" for t in ("tab-seeds", "tab_special") for fmt in ("tex", "csv")),
        "claims.tex", "claims.csv"}
    for path in written[:-1]:
        assert f"`{path.relative_to(out).as_posix()}`" in readme
    assert "figure 0" in readme and "profile `toy`" in readme and "built 20" in readme and "commit" in readme


def test_a_chapter_run_again_clears_its_own_files_only(tmp_path: Path) -> None:
    _chapter(tmp_path, "02_x")
    _chapter(tmp_path, "03_y")
    ex = Exhibits("toy", "02_x", root=tmp_path)
    assert list(exhibits_dir("toy", "02_x", tmp_path).iterdir()) == []
    assert len(list(exhibits_dir("toy", "03_y", tmp_path).glob("*.pdf"))) == 2
    fig, _ = plt.subplots(figsize=(2, 2))
    ex.figure("fig_0", fig, "first")
    ex.figure("fig_0", fig, "again")  # the same name twice: the later replaces the earlier
    ex.table("fig_0", pd.DataFrame({"a": [1]}))  # ... also as another kind: its old files go
    plt.close(fig)
    index = json.loads((ex.dir / "index.json").read_text())
    assert [(e["name"], e["kind"]) for e in index["exhibits"]] == [("fig_0", "table")]
    assert sorted(p.name for p in ex.dir.iterdir()) == ["fig_0.csv", "index.json"]


@pytest.mark.parametrize("name", ["a/b", "", "..", "a\\b"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="cannot name a folder"):
        Exhibits("toy", name, root=tmp_path)
    with pytest.raises(ValueError, match="cannot name a folder"):
        Exhibits(name, "ch", root=tmp_path)
    ex = Exhibits("toy", "ch", root=tmp_path)
    for bad in (name, "a b", "x.y"):
        with pytest.raises(ValueError, match="exhibit name .*letters, digits"):
            ex.table(bad, pd.DataFrame({"a": [1]}))
    with pytest.raises(TypeError, match="'t' is a list"):
        ex.table("t", [1, 2])


def test_nothing_built_or_a_corrupt_index_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'nothing'.*exhibits.nothing.*make book"):
        export(tmp_path / "out", "nothing", root=tmp_path)
    _chapter(tmp_path)
    index = exhibits_dir("toy", "02_x", tmp_path) / "index.json"
    for broken in ("{broken", '{"exhibits": [{"name": "../x", "kind": "figure"}]}'):
        index.write_text(broken)
        with pytest.raises(ValueError, match=f"corrupt exhibits index {index}"):
            export(tmp_path / "out", "toy", root=tmp_path)


def test_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REGVIT_PROFILE", "smoke")
    with pytest.raises(SystemExit, match="REGVIT_PROFILE=smoke make book"):
        main(["--out", str(tmp_path / "cli")])
    _chapter(tmp_path / "cache", profile="smoke")
    main(["--out", str(tmp_path / "cli")])  # the profile from $REGVIT_PROFILE
    assert (tmp_path / "cli" / "02_x" / "fig_1.pdf").is_file() and (tmp_path / "cli" / "claims.tex").is_file()


def test_figures_are_glued_when_myst_nb_is_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    myst_nb = pytest.importorskip("myst_nb")
    glued: list[tuple[str, object, bool]] = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, obj, display=True: glued.append((name, obj, display)))
    fig, _ = plt.subplots(figsize=(2, 2))
    Exhibits("toy", "ch", root=tmp_path).figure("fig_x", fig)
    plt.close(fig)
    assert glued == [("fig_x", fig, False)]


def test_latex_table_has_one_row_per_row_and_escapes_multiline_cells() -> None:
    frame = pd.DataFrame({"a": range(5), "b": ["x\ny"] * 5})
    tex = latex_table(frame, "five rows", "five")
    assert len(_body_rows(tex)) == 5 and "\\label{tab:five}" in tex and "\\begin{tabular}{rl}" in tex
    assert "x y" in tex
