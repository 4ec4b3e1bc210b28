"""The conclusion: every claim's verdict gathered from the claims files, and one paragraph per claim."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from regvit_lib import claims, conclusion, plots  # noqa: E402
from regvit_lib.compare import METHODS  # noqa: E402


def test_every_claim_and_method_has_its_words() -> None:
    assert set(conclusion.TAKEAWAYS) == set(claims.CLAIMS) == set(conclusion.CHAPTER_OF)
    assert set(conclusion.METHOD_CLAIMS) == set(METHODS) - {"vit"}
    assert conclusion.paper_text({"a_b": [1.5, 2.0], "c": "x"}) == "a b: 1.5 → 2; c: x"


def test_rows_read_the_claims_files_and_name_what_is_missing(tmp_path) -> None:
    claims.record("toy", "C1", {"share": [0.03, 0.02]}, "toy", "toy, 0 registers (2 seeds)", "02_high_norm_tokens",
                  root=tmp_path)
    claims.record("toy", "C6", {"share_without": [0.0, 0.0], "share_with": [0.0, 0.0]}, "toy", "toy pair", "03_registers",
                  root=tmp_path)
    claims.record("toy-dinov2-g", "C1", {"share": 0.024}, "pretrained", "dinov2-g", "02_high_norm_tokens", root=tmp_path)
    claims.record("toy-other", "C1", {"share": 0.0}, "toy", "not a pretrained alias", "x", root=tmp_path)  # ignored
    rows = conclusion.claims_rows("toy", tmp_path)
    own = rows[rows["scale"] != "pretrained"].set_index("id")
    assert list(own.index) == list(claims.CLAIMS)  # every claim, in the paper's order
    assert own.loc["C1", "verdict"] == claims.load_claims("toy", tmp_path)["C1"]["verdict"] == "reproduced"
    assert own.loc["C1", "seeds"] == 2 and "±" in own.loc["C1", "ours"]
    assert own.loc["C6", "verdict"] == "not at this scale"
    assert own.loc["C7", "verdict"] == "not measured" and own.loc["C7", "chapter"] == "03_registers"
    pre = rows[rows["scale"] == "pretrained"]
    assert list(pre["model"]) == ["dinov2-g"] and list(pre["verdict"]) == ["reproduced"]
    assert "not a pretrained alias" not in set(rows["model"])
    assert conclusion.verdict_counts(rows) == {"not measured": 10, "reproduced": 2, "not at this scale": 1}

    text = conclusion.takeaways(rows)
    paras = text.split("\n\n")
    assert len(paras) == len(claims.CLAIMS) and all(p.startswith(f"**{k}.") for p, k in zip(paras, claims.CLAIMS))
    assert "(dinov2-g, pretrained)" in paras[0] and "What would settle it" not in paras[0]  # C1: reproduced twice
    assert "What would settle it" in paras[5]  # C6: not at this scale

    fig = plots.verdict_grid(rows)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["ours (toy)", "dinov2-g"]
    cells = fig.axes[0].collections[0].get_array().reshape(len(claims.CLAIMS), 2)
    assert cells[0, 0] == list(plots.VERDICT_COLORS).index("reproduced")
    with pytest.raises(ValueError, match="maybe"):
        plots.verdict_grid(rows.assign(verdict="maybe"))


def test_comparison_rows_say_where_a_method_differs_beyond_the_spread() -> None:
    def row(method: str, acc: float) -> list[dict]:
        return [{"method": method, "label": METHODS[method].label, "test_acc": acc + d, "segmentation_miou": 0.2,
                 "depth_rmse": 0.1, "corloc": 0.1, "sink_mass": 0.5, "ratio_mean": 2.0, "blocks_with_patches": 6}
                for d in (0.0, 0.01)]

    doc = {"profile": "toy", "seeds": 2, "rows": row("vit", 0.3) + row("vim", 0.5) + row("gated", 0.3)}
    out = conclusion.comparison_rows(doc).set_index("method")
    assert out.loc[METHODS["vim"].label, "ours, against the ViT"] == "better: test accuracy"
    assert out.loc[METHODS["gated"].label, "ours, against the ViT"] == "within the seeds' spread everywhere"
    assert out.loc[METHODS["vim"].label, "their paper"] == conclusion.METHOD_CLAIMS["vim"]
    assert set(out["scale"]) == {"toy, 2 seeds"}
    assert isinstance(out, pd.DataFrame)
