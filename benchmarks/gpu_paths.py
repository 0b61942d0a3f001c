"""gpu_check's training-path checks: each path a few real steps, no host sync in the step,
a killed-and-resumed run, torchrun. See gpu_check.py."""

from __future__ import annotations

import math
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch
from gpu_harness import Context, Row, Skip
from torch import nn

import ncslim
from ncslim.config import Config, load_config
from ncslim.run import pipeline
from ncslim.run.methods import make_method
from ncslim.run.train import Trainer

# (name, flags): every way ncslim trains on a GPU
PATHS = [("float32", {}),
         ("float16+scaler", {"amp": True, "amp_dtype": "float16"}),
         ("bfloat16", {"amp": True, "amp_dtype": "bfloat16"}),
         ("channels-last", {"channels_last": True}),
         ("compile", {"compile": True})]
LOSS_TOLERANCE = 0.05  # a path's mean training loss within 5 % (+0.02) of float32's
WEIGHT_TOLERANCE = 1e-3  # resumed / distributed weights: largest |difference| / largest |weight|
ROOT = Path(__file__).resolve().parents[1]


def config(ctx: Context, out: str, **overrides: Any) -> Config:
    """VGG on the generated CIFAR-10, ``ctx.sizes.steps`` steps per epoch, l1 by prox."""
    s = ctx.sizes
    return load_config(None, {
        "dataset": "cifar10", "data_dir": str(ctx.data_dir), "arch": "vgg", "depth": s.depth,
        "width": s.width, "batch_size": s.batch, "limit_train": s.batch * s.steps,
        "limit_test": 2 * s.batch, "epochs": 1, "penalty": "l1", "mode": "proximal",
        "lam": 1e-4, "lr": 0.05, "device": str(ctx.device), "seed": 0,
        "out": str(ctx.work / out), **overrides})


class GradientProbe:
    """A sparsity method that notes, on the device, the largest |gradient| of a BN scale it is
    shown in ``after_backward``, then hands every hook to the method it wraps."""

    def __init__(self, method: Any, model: nn.Module) -> None:
        self.method, self.seen = method, []
        self.scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.method, name)

    def after_backward(self) -> None:
        self.seen.append(torch.stack([w.grad.abs().max() for w in self.scales]).max())
        self.method.after_backward()


def train_path(ctx: Context, name: str, flags: dict[str, Any]) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = config(ctx, f"paths/{name}", **flags)
    data = pipeline.load_data(cfg, ctx.device)
    model = pipeline.new_model(cfg, data).to(ctx.device)
    start = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    probe = GradientProbe(make_method(cfg, model, cfg.limit_train, ctx.sizes.steps), model)
    trainer = Trainer(model, data, cfg, Path(cfg.out), 1, probe)
    record = trainer.fit().history[0]
    end = [m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return {"loss": record["train_loss"], "test_acc": record["test_acc"],
            "grad": float(torch.stack(probe.seen).max()), "steps": len(probe.seen),
            "moved": max(float((a - b).abs().max()) for a, b in zip(start, end)),
            "scaler": trainer.scaler.is_enabled(), "scale": trainer.scaler.get_scale()
            if trainer.scaler.is_enabled() else None,
            "graphs": int(counters["stats"]["unique_graphs"])}


def check_paths(ctx: Context) -> list[Row]:
    """Each path trains with the penalty on unscaled gradients and follows float32."""
    if not ctx.cuda and not _has_compiler():
        paths = [p for p in PATHS if p[0] != "compile"]
    else:
        paths = PATHS
    rows, reference = [], None
    for name, flags in paths:
        got = train_path(ctx, name, flags)
        reference = reference or got
        problems = []
        if not math.isfinite(got["loss"]) or got["steps"] != ctx.sizes.steps:
            problems.append(f"loss {got['loss']} after {got['steps']} steps")
        elif abs(got["loss"] - reference["loss"]) > LOSS_TOLERANCE * reference["loss"] + 0.02:
            problems.append(f"loss {got['loss']:.4f} against float32's {reference['loss']:.4f}")
        if got["grad"] > 100 * reference["grad"]:  # GradScaler starts at 65536
            problems.append(f"the method saw scaled gradients ({got['grad']:.3g} against "
                            f"{reference['grad']:.3g})")
        if got["moved"] == 0:
            problems.append("no BN scale moved")
        if (got["graphs"] > 0) != bool(flags.get("compile")):
            problems.append(f"{got['graphs']} graphs compiled")
        if got["scaler"] != (flags.get("amp_dtype") == "float16"):
            problems.append(f"GradScaler {'on' if got['scaler'] else 'off'}")
        detail = (f"loss {got['loss']:.4f} (float32 {reference['loss']:.4f}), largest BN-scale "
                  f"gradient the penalty saw {got['grad']:.3g}"
                  + (f", scale {got['scale']:g}" if got["scaler"] else "")
                  + (f", {got['graphs']} graph(s) compiled" if got["graphs"] else ""))
        rows.append(Row(f"steps {name}", "FAIL" if problems else "ok",
                        "; ".join(problems) or detail, values=got))
    if len(paths) < len(PATHS):
        rows.append(Row("steps compile", "skipped", "no C++ compiler for inductor on the CPU"))
    return rows


def _has_compiler() -> bool:
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def syncs_in_epoch(ctx: Context, steps: int, flags: dict[str, Any]) -> int:
    """Synchronising CUDA calls warned of in one training epoch of ``steps`` steps (after a
    warm-up epoch)."""
    cfg = config(ctx, f"sync/{steps}", limit_train=ctx.sizes.batch * steps, **flags)
    data = pipeline.load_data(cfg, ctx.device)
    model = pipeline.new_model(cfg, data).to(ctx.device)
    trainer = Trainer(model, data, cfg, Path(cfg.out), 2,
                      make_method(cfg, model, cfg.limit_train, 2 * steps))
    trainer.progress.begin_stage(lam=trainer.method.lam)
    for epoch in range(2):
        with trainer.progress.epoch("sync", epoch + 1, 2, steps, ctx.device) as progress, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn" if epoch else "default")
            try:
                trainer.train_epoch(epoch, cfg.lr, progress)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def check_no_sync(ctx: Context) -> list[Row]:
    """An epoch of 2S steps syncs as often as one of S: nothing per step."""
    if not ctx.cuda:
        raise Skip("CUDA only (torch.cuda.set_sync_debug_mode)")
    rows = []
    steps = ctx.sizes.steps // 2
    for label, flags in (("float16+scaler, lam auto", {"amp": True, "amp_dtype": "float16",
                                                        "lam": "auto", "ratio": 0.5}),
                         ("bfloat16, channels-last, lp subgradient",
                          {"amp": True, "amp_dtype": "bfloat16", "channels_last": True,
                           "penalty": "lp", "mode": "subgradient"})):
        short, long = syncs_in_epoch(ctx, steps, flags), syncs_in_epoch(ctx, 2 * steps, flags)
        per_step = (long - short) / steps
        rows.append(Row(f"no sync in the step ({label})", "ok" if long <= short else "FAIL",
                        f"{short} syncs in an epoch of {steps} steps, {long} in one of "
                        f"{2 * steps}: {per_step:g} per step",
                        values={"short": short, "long": long}))
    return rows


def _cli_args(ctx: Context, epochs: int, steps: int) -> list[str]:
    s = ctx.sizes
    args = ["--dataset", "cifar10", "--data-dir", str(ctx.data_dir), "--arch", "vgg",
            "--depth", str(s.depth), "--width", str(s.width), "--batch-size", str(s.batch),
            "--limit-train", str(s.batch * steps), "--limit-test", str(2 * s.batch),
            "--epochs", str(epochs), "--penalty", "tl1", "--lam", "auto", "--ratio", "0.5",
            "--lr", "0.05", "--device", str(ctx.device)]
    return args + (["--amp", "--amp-dtype", "float16"] if ctx.cuda else [])


def _run(ctx: Context, argv: list[str], what: str, expect: int = 0) -> None:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != expect:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{what} exited {done.returncode} (expected {expect}): {last}")


def weight_difference(a: Path, b: Path) -> tuple[float, float]:
    """(largest |difference|, largest |weight|) between two model files."""
    left = ncslim.load_model(a).state_dict()
    right = ncslim.load_model(b).state_dict()
    diff = max(float((left[k].double() - right[k].double()).abs().max()) for k in left)
    scale = max(float(v.double().abs().max()) for v in left.values() if v.is_floating_point())
    return diff, scale


def check_resume(ctx: Context) -> Row:
    """SIGKILL mid-epoch 2 of 3 (lam auto, float16+scaler on CUDA), resume: the same model."""
    steps = max(ctx.sizes.steps // 2, 3)
    args = _cli_args(ctx, 3, steps)
    ref, killed = ctx.work / "resume" / "reference", ctx.work / "resume" / "killed"
    _run(ctx, [ctx.python, "-m", "ncslim", "train", *args, "--out", str(ref)], "the reference")
    _run(ctx, [ctx.python, str(ROOT / "tests" / "killer.py"), "step", str(steps + 2), "--",
               "train", *args, "--out", str(killed)], "the killed run", expect=-9)
    _run(ctx, [ctx.python, "-m", "ncslim", "train", *args, "--out", str(killed), "--resume"],
         "the resumed run")
    diff, scale = weight_difference(ref / "model.pt", killed / "model.pt")
    same = "bit for bit" if diff == 0 else f"largest weight difference {diff:.3g} of {scale:.3g}"
    ok = diff == 0 or (ctx.cuda and diff <= WEIGHT_TOLERANCE * scale)
    return Row("resume after SIGKILL", "ok" if ok else "FAIL",
               f"killed at step {steps + 2} of {3 * steps}, resumed: {same}"
               + ("" if ctx.cuda else " (the CPU must match bit for bit)"),
               values={"difference": diff, "scale": scale})


def check_torchrun(ctx: Context) -> Row:
    """torchrun (NCCL on CUDA, one process per GPU; gloo on the CPU) against one process."""
    procs = torch.cuda.device_count() if ctx.cuda else 2
    if procs < 2:
        raise Skip(f"NCCL needs two GPUs and this host has {procs}; the CPU path runs gloo")
    steps = max(ctx.sizes.steps // 2, 2)
    args = [*_cli_args(ctx, 2, steps), "--sync-bn"]
    args[args.index("--batch-size") + 1] = str(ctx.sizes.batch * procs)
    args[args.index("--device") + 1] = "cuda" if ctx.cuda else "cpu"
    one, many = ctx.work / "torchrun" / "one", ctx.work / "torchrun" / "many"
    _run(ctx, [ctx.python, "-m", "ncslim", "train", *args, "--out", str(one)], "one process")
    _run(ctx, [ctx.python, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", "-m", "ncslim", "train", *args, "--out", str(many)],
         f"torchrun with {procs} processes")
    diff, scale = weight_difference(one / "model.pt", many / "model.pt")
    backend = "NCCL" if ctx.cuda else "gloo"
    return Row(f"torchrun ({backend}, {procs} processes)",
               "ok" if diff <= WEIGHT_TOLERANCE * scale else "FAIL",
               f"--sync-bn, 2 epochs: largest weight difference from one process {diff:.3g} of "
               f"{scale:.3g} (tolerance {WEIGHT_TOLERANCE:g} of it)",
               values={"difference": diff, "scale": scale, "processes": procs})


PATH_CHECKS = {"steps": check_paths, "no-sync": check_no_sync, "resume": check_resume,
               "torchrun": check_torchrun}
