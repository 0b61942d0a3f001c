"""gpu_check's timings: pruned models against their originals, and the training throughput of
the paper presets with the projected time of a full run. See gpu_check.py."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from gpu_harness import Context, Row
from pruned_latency import NAMES, RATIO, calibrate, latencies, set_gammas
from torch import nn

import ncslim
from ncslim.config import Config, load_config
from ncslim.run import pipeline
from ncslim.run.device import amp_dtype
from ncslim.run.methods import make_method
from ncslim.run.train import Trainer

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
LATENCY_TARGET = 0.8  # VGG-19 at 70 %, batch 64: speed-up >= 0.8 x the FLOPs ratio
RUN_TARGET_S = 600.0  # a 160-epoch VGG-19 sparsity run within 10 minutes
LOOP_TARGET = 1.10  # the training loop within 1.10 x the bare compute


def cuda_latencies(models: dict[str, nn.Module], x: torch.Tensor,
                   budget_s: float) -> dict[str, float]:
    """Median seconds of a forward of each model, by CUDA events, round-robin."""
    events: dict[str, list[tuple[Any, Any]]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(3):
                model(x)
        torch.cuda.synchronize()
        started = time.perf_counter()
        while len(events["original"]) < 10 or (time.perf_counter() - started < budget_s
                                                and len(events["original"]) < 200):
            for name, model in models.items():
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                begin.record()
                model(x)
                end.record()
                events[name].append((begin, end))
            torch.cuda.synchronize()
    return {name: statistics.median(b.elapsed_time(e) for b, e in pairs) / 1000
            for name, pairs in events.items()}


def check_latency(ctx: Context) -> list[Row]:
    """Each reference family at the paper's ratio (the paper's FLOPs profile, see
    benchmarks/pruned_latency.py): the speed-up at each batch beside the FLOPs ratio."""
    rows = []
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    for arch in ("vgg", "densenet", "resnet"):
        torch.manual_seed(0)
        model = ncslim.build_model(arch, 10, 3, ctx.sizes.latency_width)
        set_gammas(model, calibrate(model, arch))
        small, report = ncslim.prune_model(model, ratio=RATIO[arch])
        flops_ratio = 1 / (1 - report.flops_removed)
        models = {"original": model.eval().to(ctx.device), "pruned": small.eval().to(ctx.device)}
        speedups = {}
        for batch in ctx.sizes.latency_batches:
            if ctx.cuda:
                x = torch.randn(batch, 3, 32, 32, device=ctx.device)
                times = cuda_latencies(models, x, ctx.sizes.latency_budget_s)
            else:
                times = latencies(models, batch, (3, 32, 32), ctx.sizes.latency_budget_s)
            speedups[batch] = times["original"] / times["pruned"]
        name = f"latency {NAMES[arch]} at {RATIO[arch]:.0%}"
        cells = ", ".join(f"batch {b} x{s:.2f}" for b, s in speedups.items())
        rows.append(Row(name, "ok", f"{cells}; FLOPs ratio x{flops_ratio:.2f}",
                        values={"speedups": speedups, "flops_ratio": flops_ratio}))
        if arch == "vgg" and ctx.cuda:
            quotient = speedups[64] / flops_ratio
            rows.append(Row("target: VGG-19 latency", "met" if quotient >= LATENCY_TARGET
                            else "missed", f"speed-up at batch 64 = {quotient:.2f} x the FLOPs "
                            f"ratio (target >= {LATENCY_TARGET})", values={"quotient": quotient}))
    return rows


class EpochClock:
    """An epoch observer noting the wall time of each whole epoch (training, evaluation)."""

    def __init__(self) -> None:
        self.marks = [time.perf_counter()]

    def epoch_end(self, record: dict[str, Any], model: nn.Module) -> None:
        self.marks.append(time.perf_counter())

    def close(self) -> None:
        pass


def bare_rate(cfg: Config, model: nn.Module, device: torch.device, steps: int) -> float:
    """Images/s of forward, loss, backward and SGD alone on batches already on the device, in
    the run's precision and memory format: what the loop would reach with no overhead."""
    dtype = amp_dtype(cfg, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    forward = torch.compile(model) if cfg.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(cfg.batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    model.train()
    for step in range(steps + 3):
        if step == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def timed_run(ctx: Context, preset: str, label: str, bare: bool,
              **flags: Any) -> dict[str, Any]:
    """Two epochs of the preset's sparsity training on ``timed_images`` generated images (the
    first warms up); the second's rates, the projection to the full run, and with ``bare`` the
    bare compute's rate beside it."""
    n_train = ctx.sizes.timed_images
    n_test = max(n_train // 5, 64)
    cfg = load_config(preset, {"data_dir": str(ctx.data_dir), "device": str(ctx.device),
                               "width": ctx.sizes.preset_width, "limit_train": n_train,
                               "limit_test": n_test, "epochs": 2, "dataset": "cifar10",
                               "out": str(ctx.work / "throughput" / label), **flags})
    full_epochs = load_config(preset).epochs
    data = pipeline.load_data(cfg, ctx.device)
    model = pipeline.new_model(cfg, data).to(ctx.device)
    steps = n_train // cfg.batch_size
    clock = EpochClock()
    record = Trainer(model, data, cfg, Path(cfg.out), 2,
                     make_method(cfg, model, n_train, 2 * steps), observers=[clock]
                     ).fit().history[-1]
    train_s, wall = record["epoch_time"], clock.marks[-1] - clock.marks[-2]
    rest_s = max(wall - train_s, 0.0)  # evaluation (and the checkpoint): scaled by test images
    epoch_s = train_s * CIFAR_TRAIN / record["images"] + rest_s * CIFAR_TEST / n_test
    got = {"label": label, "images_per_s": record["images_per_s"], "epoch_s": epoch_s,
           "run_s": full_epochs * epoch_s, "epochs": full_epochs}
    if bare:
        rate = bare_rate(cfg, model, ctx.device, max(steps, 4))
        got.update(bare_images_per_s=rate, loop_over_bare=rate / record["images_per_s"])
    return got


def _describe(got: dict[str, Any]) -> str:
    bare = (f" (bare compute {got['bare_images_per_s']:,.0f}: loop x{got['loop_over_bare']:.2f})"
            if "bare_images_per_s" in got else "")
    return (f"{got['images_per_s']:,.0f} img/s{bare}; {got['epochs']} epochs ~ "
            f"{got['run_s'] / 60:.1f} min")


def check_throughput(ctx: Context) -> list[Row]:
    """The paper presets at their batch of 64, each beside its bare compute; VGG-19 also with
    what makes it fast (no bare rate there: compiling it again would cost a minute)."""
    fast = {"amp": True, "amp_dtype": "bfloat16", "channels_last": True,
            "compile": ctx.cuda}  # inductor on a CPU compiles for minutes: CUDA only
    runs = [("vgg19-cifar10", "VGG-19", {}),
            ("vgg19-cifar10", "VGG-19 bf16+channels-last" + ("+compile" if ctx.cuda else ""),
             fast),
            ("vgg19-cifar10", "VGG-19 same, batch 256", {**fast, "batch_size": 256}),
            ("densenet40-cifar10", "DenseNet-40", {}),
            ("resnet164-cifar10", "ResNet-164", {})]
    rows, vgg = [], []
    for preset, label, flags in runs:
        if not ctx.cuda and flags.get("batch_size", 0) > ctx.sizes.timed_images:
            continue
        got = timed_run(ctx, preset, label.replace(" ", "_").replace("+", "_"),
                        bare=not flags, **flags)
        rows.append(Row(f"train {label}", "ok", _describe(got), values=got))
        if preset.startswith("vgg") and "batch_size" not in flags:
            vgg.append(got)
    if ctx.cuda:
        best = min(vgg, key=lambda g: g["run_s"])
        rows.append(Row("target: VGG-19 160-epoch run", "met" if best["run_s"] <= RUN_TARGET_S
                        else "missed", f"{best['run_s'] / 60:.1f} min at batch 64 "
                        f"({best['label']}; target <= {RUN_TARGET_S / 60:.0f} min)"))
        plain = vgg[0]
        rows.append(Row("target: loop overhead", "met" if plain["loop_over_bare"] <= LOOP_TARGET
                        else "missed", f"VGG-19 float32 loop at x{plain['loop_over_bare']:.2f} "
                        f"of the bare compute (target <= {LOOP_TARGET})"))
    return rows


TIMING_CHECKS = {"latency": check_latency, "throughput": check_throughput}
