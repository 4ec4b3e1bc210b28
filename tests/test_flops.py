import pytest

from regvit_lib import ModelConfig, build_model, count_parameters, vit_config
from regvit_lib.flops import count_flops, overhead_summary, register_overhead_table


def analytic_flops(cfg: ModelConfig) -> int:
    """Independent count of the matmul FLOPs (2 per multiply-add) of one forward pass."""
    D, T, N, H = cfg.embed_dim, cfg.num_tokens, cfg.num_patches, cfg.mlp_hidden_dim
    mlp = 2 * T * D * H * 2 if cfg.mlp == "gelu" else 2 * T * D * H + 2 * T * (H // 2) * D
    block = 2 * T * D * 3 * D + 2 * 2 * T * T * D + 2 * T * D * D + mlp
    embed = 2 * N * cfg.in_chans * cfg.patch_size**2 * D
    return cfg.depth * block + embed + 2 * D * cfg.num_classes


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig(num_registers=16, img_size=64, patch_size=8),
        vit_config("S", num_registers=4),
        vit_config("g", num_registers=16),
    ],
)
def test_counted_flops_match_the_formula(cfg: ModelConfig) -> None:
    assert count_flops(cfg) == analytic_flops(cfg)
    assert count_flops(cfg, batch_size=3) == 3 * analytic_flops(cfg)


def test_overhead_table() -> None:
    t = register_overhead_table(sizes=("Ti", "B"), registers=(0, 4, 16), img_size=112, patch_size=16)
    assert list(t["registers"]) == [0, 4, 16, 0, 4, 16]
    for _, rows in t.groupby("model"):
        assert rows["flops_overhead_pct"].iloc[0] == 0.0
        assert rows["flops_overhead_pct"].is_monotonic_increasing
        # linear parts grow by R/T0; attention grows faster, so the total overhead exceeds R/T0
        t0 = rows["tokens"].iloc[0]
        for _, r in rows.iloc[1:].iterrows():
            assert r["flops_overhead_pct"] > 100 * r["registers"] / t0
    ti = t[t["model"] == "ViT-Ti/16"].set_index("registers")
    params0 = count_parameters(build_model(vit_config("Ti", img_size=112, patch_size=16), device="meta"))
    assert ti.loc[4, "params_overhead_pct"] == pytest.approx(100 * 4 * 192 / params0)
    s = overhead_summary(t, registers=(4,))
    assert list(s.index) == ["ViT-Ti/16", "ViT-B/16"]
    with pytest.raises(ValueError, match="no rows with 8 registers"):
        overhead_summary(t, registers=(8,))
