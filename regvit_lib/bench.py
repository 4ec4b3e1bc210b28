"""Speed, measured: ``python -m regvit_lib.bench [--profile cpu] [--out data/bench]``.

Not a test: it times things and writes what it measured.

1. **Scene generator**: images per second on one CPU thread at 32 and 64 px.
2. **Training step, ours vs timm**: images per second of one AdamW step (forward, loss,
   backward, clip, update) of :class:`~regvit_lib.model.RegViT` and of timm's
   ``VisionTransformer`` built from the same config, in the same process, on the same batch,
   in alternating rounds so that both see the same machine state; the median round counts.
3. **Data share**: the generator's share of a full training step (render + step) at the
   profile's batch size.
4. **Analysis cost**: one pass that keeps every block's tokens and attention maps and computes
   all-layer norms (:func:`regvit_lib.analysis.collect` + norms), against a plain forward.
5. **The training step against the machine's matmul rate** (also ``--step``, alone): images per
   second of the profile's step in fp32 and in bf16 autocast, the FLOP/s that makes (counted
   FLOPs), and its fraction of the measured matmul rate in the same precision.
6. **Pretrained models** (``--pretrained``, alone): seconds per image of the lean pass chapters 2
   and 3 run on each pretrained model of the profile (:func:`regvit_lib.measure.load_subject`),
   on timm's architecture with random weights -- the time does not depend on the weights'
   values, so nothing is downloaded -- and the build time those models add at the profile's image
   count (weights download excluded).
7. **On a GPU only**: the card's measured bf16 matmul rate, and the model FLOPs utilisation
   (MFU) of a ViT-S/16 at 224 px trained in bf16 (compiled): counted training FLOPs per image
   (3x the forward) times images per second, over that rate.
8. **The book** (``--build CHECKOUT``, alone): ``make book`` in a checkout (a fresh clone: its
   installs are then part of the cold time) with an empty cache, step by step as the Makefile runs
   them -- the install check, :mod:`regvit_lib.prepare` (training), ``jupyter-book build`` with
   each chapter's execution time as myst-nb reports it -- then the same again with the cache warm;
   with ``--busy``, the cold build runs beside one other CPU-bound process (a laptop that is doing
   something else). Also the training step against the matmul rate (5).
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .config import DataConfig, ModelConfig, ScenesConfig, vit_config
from .profiles import Profile, add_arguments, from_arguments
from .data import make_source, normalize
from .flops import count_flops
from .model import build_model
from .timing import alternate, mfu, training_step

__all__ = ["generator_rate", "compare_with_timm", "data_share", "analysis_cost", "step_vs_matmul", "pretrained_cost",
           "chapter_times", "build_times", "main"]


def _render(cfg: DataConfig, batch: int) -> Callable[[], object]:
    """Render (or read) the next ``batch`` training images at each call."""
    starts, source = itertools.count(0, batch), make_source(cfg)
    n = source.split_size("train")
    return lambda: source.batch("train", (np.arange(batch) + next(starts)) % n)


def generator_rate(img_size: int, batch: int = 256, rounds: int = 8) -> float:
    """Scenes rendered per second on one CPU thread (median of ``rounds`` batches)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return batch / statistics.median(alternate([_render(ScenesConfig(img_size=img_size), batch)], rounds)[0])
    finally:
        torch.set_num_threads(threads)


def compare_with_timm(cfg: ModelConfig, batch: int, pairs: int = 30, device: str = "cpu") -> dict[str, float]:
    """Training images/s of our model and of timm's with the same config.

    The two models take turns, one step each (alternating which goes first), and each pair of
    steps gives one ratio; the median over pairs cancels the drift of a shared machine.
    """
    import timm.models.vision_transformer as tv

    from .timm_interop import timm_kwargs

    dev = torch.device(device)
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=dev)
    y = torch.randint(max(cfg.num_classes, 1), (batch,), device=dev)
    ours = training_step(build_model(cfg, device=dev).train(), x, y, amp=False)
    theirs = training_step(tv.VisionTransformer(**timm_kwargs(cfg)).to(dev).train(), x, y, amp=False)
    t_ours, t_timm = alternate([ours, theirs], pairs, dev, warmup=2)
    return {"ours_img_per_s": batch / statistics.median(t_ours), "timm_img_per_s": batch / statistics.median(t_timm),
            "ratio": statistics.median(b / a for a, b in zip(t_ours, t_timm)), "pairs": pairs}


def data_share(cfg: ModelConfig, data: DataConfig, batch: int, iters: int = 10) -> dict[str, float]:
    """Seconds per batch spent rendering (or reading) images vs in the training step (taking turns), and the
    data's share."""
    x, y = make_source(data).batch("train", np.arange(batch))
    step = training_step(build_model(cfg).train(), normalize(x), y, amp=False)
    t_data, t_step = alternate([_render(data, batch), step], iters)
    return {"data_s_per_batch": statistics.mean(t_data), "step_s_per_batch": statistics.mean(t_step),
            "data_share": sum(t_data) / (sum(t_data) + sum(t_step))}


def analysis_cost(cfg: ModelConfig, batch: int, pairs: int = 20) -> dict[str, float]:
    """Seconds of a plain forward vs an analysis pass (all tokens, attention maps, norms)."""
    from .analysis import collect

    model = build_model(cfg).eval()
    images = torch.rand(batch, cfg.in_chans, cfg.img_size, cfg.img_size)

    @torch.no_grad()
    def plain() -> None:
        model(normalize(images))

    def analysis() -> None:
        collect(model, images, batch_size=batch)

    t_plain, t_analysis = alternate([plain, analysis], pairs)
    return {"plain_s": statistics.median(t_plain), "analysis_s": statistics.median(t_analysis),
            "ratio": statistics.median(b / a for a, b in zip(t_plain, t_analysis))}


def step_vs_matmul(profile: Profile, iters: int = 10, matmul_n: int | None = None) -> dict[str, dict[str, float]]:
    """The profile's training step (its model and batch) as a fraction of the machine's matmul
    rate in the same precision and threads: fp32 and bf16 autocast with every thread, and (on a
    CPU) fp32 with one thread, as each of :mod:`regvit_lib.prepare`'s workers trains.
    ``matmul_n``: the reference matmul's size (see :func:`regvit_lib.timing.mfu`)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, flops = profile.model, 3 * count_flops(profile.model)

    def measure(amp: bool) -> dict[str, float]:
        return mfu(build_model(cfg, device=dev).train(), flops, profile.train.batch_size, cfg.img_size,
                   cfg.num_classes, iters, dev, amp, matmul_n) | {"threads": torch.get_num_threads()}

    out = {name: measure(amp) for name, amp in (("fp32", False), ("bf16_autocast", True))}
    if dev == "cpu" and (threads := torch.get_num_threads()) > 1:
        torch.set_num_threads(1)
        try:
            out["fp32_1thread"] = measure(False)
        finally:
            torch.set_num_threads(threads)
    return out


def pretrained_cost(profile: Profile, rounds: int = 2) -> dict[str, Any]:
    """Seconds per image of each pretrained model of ``profile`` (median of ``rounds`` batches of
    :data:`~regvit_lib.measure.PRETRAINED_BATCH` scenes), and the build time they add: every
    model over ``profile.pretrained.images`` scenes once (chapter 3 reuses chapter 2's cached pass)
    plus the photographs, model loading excluded."""
    import timm

    from .analysis import as_regvit, collect
    from .measure import PRETRAINED_BATCH
    from .pretrained import resolve

    pset = profile.pretrained
    images = torch.rand(PRETRAINED_BATCH, 3, pset.img_size, pset.img_size)
    per_image = {}
    for name in dict.fromkeys((*pset.pair, *pset.others, *pset.sizes)):
        model = as_regvit(timm.create_model(resolve(name), pretrained=False, img_size=pset.img_size,
                                            num_classes=0).eval())
        def lean(model: nn.Module = model) -> None:  # the pass measure.load_subject runs on a pretrained model
            collect(model, images, attn="received", batch_size=PRETRAINED_BATCH, layers=(1, -2))
        per_image[name] = statistics.median(alternate([lean], rounds)[0]) / PRETRAINED_BATCH
    photos = {n: 4 for n in (*pset.pair, *pset.others)}  # chapter 2's and 3's attention maps (4 photographs)
    return {"img_size": pset.img_size, "images": pset.images, "s_per_image": per_image,
            "added_build_s": sum(t * (pset.images + photos.get(n, 0)) for n, t in per_image.items())}


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run ``cmd``; its wall time and its output (stdout and stderr). Raises when it fails, with its output's tail."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - t, proc.stdout + proc.stderr


def chapter_times(log: str) -> dict[str, float]:
    """Each chapter's execution time, in seconds, from a ``jupyter-book build`` log (myst-nb's
    "<path>: Executed notebook in <s> seconds" lines), by the notebook's file name."""
    import re

    return {Path(m[1]).stem: float(m[2]) for m in re.finditer(r"(\S+?): Executed notebook in ([\d.]+) seconds", log)}


def build_times(checkout: Path, cache: Path, profile: Profile, busy: bool = False) -> dict[str, Any]:
    """Seconds of each step of ``make book`` in ``checkout`` at ``profile`` (its data too: ``$REGVIT_DATA``)
    with the cache folder ``cache``: ``setup``
    (installs), ``prepare`` (training), ``book`` (``jupyter-book build``, and ``chapters``: each
    one's execution as myst-nb reports it) and the ``total``; with ``busy``, beside one other
    CPU-bound process."""
    env = {**os.environ, "REGVIT_CACHE": str(cache), "REGVIT_PROGRESS": "0", "REGVIT_PROFILE": profile.base,
           "REGVIT_DATA": profile.data_spec}
    env.pop("VIRTUAL_ENV", None)  # the checkout's own environment, as `make book` picks it
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        setup_s, _ = _timed(["make", "setup"], checkout, env)
        py = (checkout / ".regvit-python").read_text().strip()
        env["PATH"] = f"{Path(py).parent}:{env['PATH']}"
        prepare_s, _ = _timed([py, "-m", "regvit_lib.prepare"], checkout, env)
        book_s, log = _timed([str(Path(py).parent / "jupyter-book"), "build", "--all", "."], checkout, env)
    finally:
        if hog is not None:
            hog.kill()
    return {"setup_s": setup_s, "prepare_s": prepare_s, "book_s": book_s, "chapters_s": chapter_times(log),
            "total_s": setup_s + prepare_s + book_s, "beside_one_cpu_job": busy}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap, "cpu")  # whose model, data and batch size to time
    ap.add_argument("--out", default=None, help="folder for bench-<device>.json (default: print only)")
    ap.add_argument("--pretrained", action="store_true", help="time only the profile's pretrained models")
    ap.add_argument("--step", action="store_true", help="time only the training step against the matmul rate")
    ap.add_argument("--build", metavar="CHECKOUT", default=None,
                    help="time `make book` in this checkout (a fresh clone), cold (empty cache) then warm")
    ap.add_argument("--busy", action="store_true", help="with --build: the cold build beside one CPU-bound process")
    args = ap.parse_args(argv)
    prof = from_arguments(ap, args)
    gpu = torch.cuda.is_available()
    res: dict[str, Any] = {
        "command": "python -m regvit_lib.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": prof.name, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if gpu else "cpu"}
    from .cache import code_version
    from .emergence import git_commit

    res |= {"commit": git_commit(), "code": code_version(("analysis.py", "model.py", "timing.py", "bench.py"))}
    if args.pretrained:
        res["pretrained"] = pretrained_cost(prof)
        return _report(res, args.out, f"bench-pretrained-{'gpu' if gpu else 'cpu'}.json")
    if args.step:
        res["step_vs_matmul"] = step_vs_matmul(prof)
        return _report(res, args.out, f"bench-step-{'gpu' if gpu else 'cpu'}.json")
    if args.build:
        import tempfile

        res["cpu_cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        res["step_vs_matmul"] = step_vs_matmul(prof)
        with tempfile.TemporaryDirectory() as cache:  # empty: a first build
            res["cold"] = build_times(Path(args.build), Path(cache), prof, args.busy)
            res["warm"] = build_times(Path(args.build), Path(cache), prof)
        busy = "-busy" if args.busy else ""
        return _report(res, args.out, f"bench-build-{prof.name}{busy}-{'gpu' if gpu else 'cpu'}.json")
    res["generator_img_per_s_1thread"] = {str(s): generator_rate(s) for s in (32, 64)}
    batch = min(prof.train.batch_size, 128)
    res["timm"] = {str(r): compare_with_timm(replace(prof.model, num_registers=r), batch) for r in (0, 4)}
    res["data"] = data_share(prof.model, prof.data, prof.train.batch_size)
    res["analysis_vs_forward"] = {
        "profile model, batch 128": analysis_cost(prof.model, 128),
        "ViT-S/14 at 224 px, 4 registers, batch 8": analysis_cost(vit_config("S", num_registers=4), 8)}
    res["step_vs_matmul"] = step_vs_matmul(prof)
    if gpu:  # MFU of a ViT-S/16 at 224 px, bf16, compiled
        cfg = vit_config("S", patch_size=16, img_size=224)
        model = cast(nn.Module, torch.compile(build_model(cfg, device="cuda").train()))
        res["gpu_vit_s16_224_bf16"] = mfu(model, 3 * count_flops(cfg), 256, 224, cfg.num_classes)
    return _report(res, args.out, f"bench-{'gpu' if gpu else 'cpu'}.json")


def _report(res: dict[str, Any], out: str | None, name: str) -> dict[str, Any]:
    print(json.dumps(res, indent=1))
    if out:
        path = Path(out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
