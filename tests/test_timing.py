"""Timing on a shared machine: models taking turns, and the benchmark's measurements at smoke scale."""

import torch

from regvit_lib import bench
from regvit_lib.config import get_profile
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
