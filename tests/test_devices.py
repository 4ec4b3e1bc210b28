"""The GPU profiles and precisions, checked on a CPU as far as a CPU allows: a GPU profile stops
before any compute without CUDA, the precision follows the device's capability, and the fp16 path
(autocast with a gradient scaler, as on a T4) trains and resumes."""

import importlib
import math
from dataclasses import replace

import pytest
import torch

from regvit_lib import ConfigError, chapter_params, get_profile, train
from regvit_lib.config import AViT
from regvit_lib import prepare

train_module = importlib.import_module("regvit_lib.train")  # the module: regvit_lib.train is the function

from test_train_cache import RUN, Interrupt, _stop_at, _weights


def test_gpu_profiles_stop_before_any_compute_without_cuda(capsys) -> None:
    for name in ("colab", "gpu"):
        profile = get_profile(name)
        assert profile.needs == "cuda" and profile.budget.startswith("PLANNED, NOT MEASURED")
        with pytest.raises(ConfigError, match=rf"profile '{name}' is sized for a CUDA GPU .* use profile 'cpu'"):
            profile.check_device(cuda=False)
        profile.check_device(cuda=True)
    for name in ("smoke", "cpu"):
        get_profile(name).check_device(cuda=False)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the entry points would start")
    with pytest.raises(ConfigError, match=r"profile 'colab' is sized for a CUDA GPU"):
        chapter_params(profile="colab")
    with pytest.raises(SystemExit):
        prepare.main(["--profile", "gpu"])
    assert "profile 'gpu' is sized for a CUDA GPU" in capsys.readouterr().err


def test_the_precision_follows_the_device_not_the_profile(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train_module.precision("auto", cpu) is None  # fp32 on a CPU unless asked
    assert train_module.precision("on", cpu) is torch.bfloat16
    assert train_module.precision("off", cuda) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4
    assert train_module.precision("auto", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # H100
    assert train_module.precision("auto", cuda) is torch.bfloat16


def test_the_fp16_path_with_its_gradient_scaler_trains_and_resumes(tmp_path, monkeypatch) -> None:
    # A T4's precision, forced on the CPU: fp16 autocast, the loss scaled, the gradients unscaled before clipping.
    monkeypatch.setattr(train_module, "precision", lambda switch, device: torch.float16)
    run = replace(RUN, train=replace(RUN.train, grad_clip=1.0))
    a = train(run, root=tmp_path / "a", progress=False)
    assert a.metrics["precision"] == "float16" and math.isfinite(a.metrics["test_loss"])
    with pytest.raises(Interrupt):
        train(run, root=tmp_path / "b", progress=False, on_step=_stop_at(7))
    checkpoint = next((tmp_path / "b" / "runs").iterdir()) / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 5 and state["scaler"]["scale"] > 0  # the scaler's state is kept with the step
    b = train(run, root=tmp_path / "b", progress=False)
    assert b.metrics["resumed_from"] == 5
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_step_that_does_not_fit_is_accumulated_or_stops_before_training_with_the_batch_that_would() -> None:
    from regvit_lib.memory import accumulation, largest_batch, step_bytes

    one, two, many = (step_bytes(RUN, b) for b in (1, 2, 16))
    assert 0 < one < two < many and step_bytes(RUN, 16, half=True) < many
    assert many - one == pytest.approx(15 * (two - one), rel=0.01)  # activations grow with the batch
    assert accumulation(RUN, total_bytes=10 * many) == 1  # fits: one pass
    fixed, per_image = 2 * one - two, two - one  # weights, gradients, AdamW; and each image's activations
    limit = int((fixed + 3.5 * per_image) / 0.85)  # a device with room for 3 images' step
    fits = largest_batch(RUN, int(0.85 * limit))
    assert fits == 3 and step_bytes(RUN, 3) <= 0.85 * limit < step_bytes(RUN, 4)
    # 8 images per process in micro-batches of at most 3 that divide 8 evenly: 4 of 2
    assert accumulation(RUN, total_bytes=limit, processes=2) == 4
    assert accumulation(RUN, total_bytes=limit) == 8  # 16 images: 8 micro-batches of 2
    dino = replace(RUN, model=replace(RUN.model, num_classes=0), train=replace(RUN.train, objective="dino"))
    with pytest.raises(ConfigError, match=r"batch_size=16 \(8 images per process\) needs about .* GiB; a T4 has "
                                          r".*DINO.*no gradient accumulation; a batch of \d+ per process"):
        accumulation(dino, total_bytes=limit, processes=2, device_name="a T4")
    with pytest.raises(ConfigError, match=r"variant A-ViT \(its halting prior\) reads the whole batch at once: no gradient"):
        accumulation(replace(RUN, model=replace(RUN.model, variant=AViT())), total_bytes=limit)
    tiny = int(fixed / 0.85)  # not even one image
    with pytest.raises(ConfigError, match=r"a batch of 0 per process \(0 in all\) would fit"):
        accumulation(RUN, total_bytes=tiny, device_name="a T4")


def test_gradient_accumulation_trains_what_one_pass_trains(tmp_path) -> None:
    """4 micro-batches per step give the one-pass weights up to summation order (plain and Mixup/CutMix)."""
    for run in (RUN, replace(RUN, train=replace(RUN.train, mixup=0.8, cutmix=1.0))):
        one = train(run, root=tmp_path / "one", progress=False)
        four = train(run, root=tmp_path / "four", progress=False, accumulate=4)
        assert one.metrics["accumulation"] == 1 and four.metrics["accumulation"] == 4
        w1, w4 = _weights(one), _weights(four)
        assert max(float((w1[k] - w4[k]).abs().max()) for k in w1) < 5e-5
        assert [c["train_loss"] for c in one.curves] == pytest.approx([c["train_loss"] for c in four.curves], abs=1e-5)
    with pytest.raises(ConfigError, match=r"accumulate=3 must be an int >= 1 that divides the 16 images"):
        train(replace(RUN, seed=9), root=tmp_path / "x", progress=False, accumulate=3)
    avit = replace(RUN, model=replace(RUN.model, variant=AViT()))  # its halting prior is a mean over the batch
    with pytest.raises(ConfigError, match=r"accumulate=2: variant A-ViT \(its halting prior\) reads the whole batch at once"):
        train(avit, root=tmp_path / "x", progress=False, accumulate=2)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("*.pt"))  # refused before training