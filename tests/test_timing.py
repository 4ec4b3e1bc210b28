"""Timing on a shared machine: models taking turns, and the benchmark's measurements at smoke scale."""

import pytest
import torch

from regvit_lib import bench
from regvit_lib.profiles import get_profile
from regvit_lib.timing import alternate, training_step

SMOKE = get_profile("smoke")


def test_alternate_rotates_the_order_and_times_every_call() -> None:
    calls: list[str] = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")]
    times = alternate(fns, rounds=3, warmup=1)
    assert [len(t) for t in times] == [3, 3, 3] and all(s >= 0 for t in times for s in t)
    assert calls == list("abc") + list("abc") + list("cab") + list("bca")  # warm-up, then rotating by one


def test_training_step_changes_the_weights() -> None:
    model = torch.nn.Linear(4, 3)
    before = model.weight.detach().clone()
    training_step(model, torch.randn(8, 4), torch.randint(3, (8,)), amp=False)()
    assert not torch.equal(before, model.weight)


def test_benchmark_parts_measure_what_they_say() -> None:
    assert bench.generator_rate(32, batch=16, rounds=2) > 0
    share = bench.data_share(SMOKE.model, SMOKE.data, batch=8, iters=2)
    assert 0 < share["data_share"] < 1 and share["step_s_per_batch"] > 0
    timm = bench.compare_with_timm(SMOKE.model, batch=8, pairs=2)
    assert timm["pairs"] == 2 and timm["ratio"] > 0 and timm["ours_img_per_s"] > 0
    cost = bench.analysis_cost(SMOKE.model, batch=8, pairs=2)
    assert cost["analysis_s"] > 0 and cost["plain_s"] > 0 and cost["ratio"] > 0


def test_the_matmul_rate_and_the_step_fraction_run_on_a_cpu() -> None:
    from regvit_lib.config import ModelConfig
    from regvit_lib.model import build_model
    from regvit_lib.timing import matmul_tflops, mfu

    for dtype in (torch.float32, torch.bfloat16):
        assert 0 < matmul_tflops("cpu", dtype, n=128, iters=2) < 1e3
    cfg = ModelConfig(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    out = mfu(build_model(cfg).train(), 3 * 1e6, 4, 16, 3, iters=2, device="cpu", amp=False, matmul_n=128)
    assert set(out) == {"img_per_s", "achieved_tflops", "matmul_tflops", "mfu"} and out["img_per_s"] > 0
    assert out["mfu"] == pytest.approx(out["achieved_tflops"] / out["matmul_tflops"])
    assert out["achieved_tflops"] == pytest.approx(out["img_per_s"] * 3e6 / 1e12)


def test_the_pretrained_cost_times_every_model_of_the_profile() -> None:
    out = bench.pretrained_cost(SMOKE, rounds=1)
    pset = SMOKE.pretrained
    assert list(out["s_per_image"]) == list(dict.fromkeys((*pset.pair, *pset.others, *pset.sizes)))
    assert all(t > 0 for t in out["s_per_image"].values())
    photos = {n: 4 for n in (*pset.pair, *pset.others)}
    assert out["added_build_s"] == pytest.approx(sum(t * (pset.images + photos.get(n, 0))
                                                     for n, t in out["s_per_image"].items()))


def test_the_step_fraction_is_measured_with_all_threads_and_with_one() -> None:
    threads = torch.get_num_threads()
    out = bench.step_vs_matmul(SMOKE, iters=2, matmul_n=128)  # bf16 is slow on CPUs without bf16 units
    assert {"fp32", "bf16_autocast"} <= set(out) and torch.get_num_threads() == threads
    if threads > 1:  # what each of prepare's workers gets
        assert out["fp32_1thread"]["threads"] == 1 and out["fp32"]["threads"] == threads
    assert all(0 < r["mfu"] and r["img_per_s"] > 0 for r in out.values())


def test_chapter_times_are_read_from_the_build_log() -> None:
    log = ("/b/chapters/01_vit_from_scratch.ipynb: Executing notebook using local CWD [mystnb]\n"
           "/b/chapters/01_vit_from_scratch.ipynb: Executed notebook in 21.50 seconds [mystnb]\n"
           "/b/chapters/04_ablations.ipynb: Executed notebook in 80.93 seconds [mystnb]\n")
    assert bench.chapter_times(log) == {"01_vit_from_scratch": 21.5, "04_ablations": 80.93}
