"""Publishing the book: one repository URL for the buttons and the Colab install cells, the Pages
workflow, and MathJax served with the book instead of from a CDN."""

import json
import shutil
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager

from regvit_lib import book_mathjax, publish

ROOT = Path(__file__).resolve().parent.parent
FORK = "https://example.org/someone/regvit-fork"


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _cells(path: Path) -> list[dict]:
    """A notebook's cells as stored (plain JSON, nothing normalised)."""
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _install_index(cells: list[dict]) -> int:
    return next(i for i, c in enumerate(cells) if c["cell_type"] == "code")


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


# --- repository_url -------------------------------------------------------------------------------

def test_repository_url_reads_the_config(tmp_path) -> None:
    cfg = _write_config(tmp_path / "_config.yml",
                        "title: x\nrepository:\n  url: https://example.org/me/fork/\n  branch: main\n")
    assert publish.repository_url(cfg) == "https://example.org/me/fork"
    assert publish.repository_url() == yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


@pytest.mark.parametrize("text", ["title: x\n", "repository:\n  branch: main\n", "repository:\n  url: ''\n", ""])
def test_repository_url_names_the_file_when_the_key_is_missing(tmp_path, text) -> None:
    cfg = _write_config(tmp_path / "_config.yml", text)
    with pytest.raises(ValueError, match="repository.url") as err:
        publish.repository_url(cfg)
    assert str(cfg) in str(err.value)


def test_repository_url_names_a_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        publish.repository_url(tmp_path / "nope.yml")
    assert str(tmp_path / "nope.yml") in str(err.value)


# --- install_cell ---------------------------------------------------------------------------------

@pytest.mark.parametrize("extras, requirement", [("", "regvit"), ("book", "regvit[book]"),
                                                 ("book,test", "regvit[book,test]")])
def test_install_cell_is_python_once_magics_are_transformed(extras, requirement) -> None:
    src = publish.install_cell(FORK, extras)
    assert src.startswith(publish.MARKER)
    assert f'%pip install -q "{requirement} @ git+{FORK}"' in src
    assert publish.cell_extras(src) == extras
    code = TransformerManager().transform_cell(src)
    assert "get_ipython().run_line_magic('pip'" in code and f"git+{FORK}" in code
    compile(code, "<install cell>", "exec")


def test_install_cell_does_nothing_off_colab_and_reports_versions_on_colab(monkeypatch, capsys) -> None:
    code = TransformerManager().transform_cell(publish.install_cell(FORK, "book"))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(code, "<install cell>", "exec"), {})  # noqa: S102  (no get_ipython: the magic must not run)
    assert capsys.readouterr() == ("", "")

    magics: list[tuple[str, str]] = []
    shell = types.SimpleNamespace(run_line_magic=lambda name, line: magics.append((name, line)))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(code, "<install cell>", "exec"), {"get_ipython": lambda: shell})  # noqa: S102
    assert magics == [("pip", f'install -q "regvit[book] @ git+{FORK}"')]
    out = capsys.readouterr().out.splitlines()
    assert out == [f"keeping torch {version('torch')}",
                   f"installed regvit {version('regvit')} | timm {version('timm')} | torch {version('torch')}"]


@pytest.mark.parametrize("url, extras", [("", ""), ("https://x.org/a b", ""), ('https://x.org/a"', ""),
                                         (FORK, "book]"), (FORK, "book test")])
def test_install_cell_refuses_what_would_break_the_pip_line(url, extras) -> None:
    with pytest.raises(ValueError):
        publish.install_cell(url, extras)


# --- sync -----------------------------------------------------------------------------------------

def test_sync_rewrites_only_the_install_cells(tmp_path) -> None:
    chapters = tmp_path / "chapters"
    shutil.copytree(ROOT / "chapters", chapters, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    paths = sorted(chapters.glob("*.ipynb"))
    assert len(paths) >= 6
    before = {p: p.read_bytes() for p in paths}
    old = {p: _cells(p) for p in paths}
    old_meta = {p: {k: v for k, v in json.loads(before[p]).items() if k != "cells"} for p in paths}

    assert publish.sync(chapters, FORK, check=True) == paths  # every chapter installs from elsewhere
    assert {p: p.read_bytes() for p in paths} == before  # check writes nothing

    assert publish.sync(chapters, FORK) == paths
    for p in paths:
        new = _cells(p)
        assert len(new) == len(old[p])
        i = _install_index(old[p])
        extras = publish.cell_extras(_source(old[p][i]))
        assert _source(new[i]) == publish.install_cell(FORK, extras), p.name  # the chapter keeps its extras
        assert {k: v for k, v in new[i].items() if k != "source"} == \
               {k: v for k, v in old[p][i].items() if k != "source"}
        for j, (a, b) in enumerate(zip(old[p], new)):
            if j == i:
                continue
            if "id" not in a:  # nbformat 4.5 requires a cell id: writing gives one to a cell that lacks it
                a = {**a, "id": b["id"]}
            assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), f"{p.name}: cell {j} changed"
        assert {k: v for k, v in json.loads(p.read_text()).items() if k != "cells"} == old_meta[p]

    assert publish.sync(chapters, FORK, check=True) == []
    after = {p: p.read_bytes() for p in paths}
    assert publish.sync(chapters, FORK) == []  # nothing to do: nothing written
    assert {p: p.read_bytes() for p in paths} == after


def test_sync_names_a_chapter_without_an_install_cell(tmp_path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(ValueError, match="x.ipynb"):
        publish.sync(tmp_path, FORK, check=True)
    with pytest.raises(FileNotFoundError):
        publish.sync(tmp_path / "empty", FORK)


def test_cli_check_fails_until_sync(tmp_path, capsys) -> None:
    shutil.copytree(ROOT / "chapters", tmp_path / "chapters")
    cfg = _write_config(tmp_path / "_config.yml", f"repository:\n  url: {FORK}\n")
    args = ["--config", str(cfg), "--chapters", str(tmp_path / "chapters")]
    assert publish.main(["check", *args]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "01_vit_from_scratch.ipynb" in err and "publish sync" in err
    assert publish.main(["sync", *args]) == 0
    assert publish.main(["check", *args]) == 0
    assert FORK in capsys.readouterr().out
    assert publish.main(["check", "--config", str(tmp_path / "missing.yml")]) == 2


# --- the Pages workflow ---------------------------------------------------------------------------

def test_the_pages_workflow_builds_caches_and_deploys() -> None:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["push"]["branches"] == ["main"] and "workflow_dispatch" in on
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    steps = build["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    py = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(py["with"]["python-version"]) == "3.11" and py["with"]["cache"] == "pip"
    assert any("make book" in s.get("run", "") for s in steps)
    caches = [s for s in steps if s.get("uses", "").startswith("actions/cache")]
    assert caches and all(s["with"]["path"] == ".regvit_cache" for s in caches)
    restore = next(s for s in caches if "restore-keys" in s["with"])
    assert "hashFiles('regvit_lib/**', 'pyproject.toml')" in restore["with"]["key"]
    assert restore["with"]["restore-keys"].strip()
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert uses.index(upload["uses"]) > next(i for i, s in enumerate(steps) if "make book" in s.get("run", ""))
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])


# --- MathJax served with the book -----------------------------------------------------------------

def test_mathjax_ships_in_an_installed_package() -> None:
    root = book_mathjax.mathjax_root()
    assert root.is_dir() and {"site-packages", "dist-packages"} & set(root.parts), root
    assert (root / book_mathjax.COMPONENT).is_file()
    assert all((root / part).exists() for part in book_mathjax.NEEDED)
    assert 'VERSION="3.' in (root / book_mathjax.COMPONENT).read_text(encoding="utf-8")[:300_000]


def test_copy_mathjax_copies_only_what_rendering_needs(tmp_path) -> None:
    dest = book_mathjax.copy_mathjax(tmp_path)
    assert dest == tmp_path / "mathjax"
    assert (dest / book_mathjax.COMPONENT).is_file() and (dest / "LICENSE").is_file()
    assert (dest / "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff").is_file()
    assert (dest / "input/tex/extensions/boldsymbol.js").is_file()
    assert not (dest / "sre").exists() and not (dest / "a11y").exists()
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    assert size < 3_000_000, size


def test_the_book_loads_mathjax_from_its_own_static_files(tmp_path, sphinx_build) -> None:
    pytest.importorskip("myst_parser")
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "regvit_lib.book_mathjax" in cfg["sphinx"]["extra_extensions"]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "conf.py").write_text('extensions = ["myst_parser", "regvit_lib.book_mathjax"]\n'
                                 'myst_enable_extensions = ["dollarmath", "amsmath"]\n')
    (src / "index.md").write_text("# Math\n\nInline $x^2$.\n\n$$\n\\sum_i a_i\n$$\n\n"
                                  "```{toctree}\nsub/page\n```\n")
    (src / "sub" / "page.md").write_text("# Sub\n\n\\begin{align}\na &= b\n\\end{align}\n")
    out = tmp_path / "html"
    log = sphinx_build(src, out)
    assert "WARNING" not in log, log
    index, page = (out / "index.html").read_text(), (out / "sub" / "page.html").read_text()
    assert '<span class="math notranslate nohighlight">\\(x^2\\)</span>' in index
    assert 'src="_static/mathjax/tex-mml-chtml.js' in index
    assert 'src="../_static/mathjax/tex-mml-chtml.js' in page
    # the configuration MathJax 3 reads (window.MathJax), restricted to myst's math elements
    assert 'window.MathJax = {"options": {"processHtmlClass": "tex2jax_process|mathjax_process|math|' in index
    for html in (index, page):
        assert "cdn.jsdelivr" not in html and "mathjax@" not in html
    assert (out / "_static" / "mathjax" / book_mathjax.COMPONENT).is_file()


# --- last: the real chapters (fails until `python -m regvit_lib.publish sync` has been run) -------

def test_the_chapters_install_from_the_configured_repository() -> None:
    url = publish.repository_url(ROOT / "_config.yml")
    stale = publish.sync(ROOT / "chapters", url, check=True)
    assert stale == [], (f"install cells out of date with _config.yml's repository.url ({url}): "
                         f"{[p.name for p in stale]}; run `python -m regvit_lib.publish sync`")
