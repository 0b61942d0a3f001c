"""Parameters and FLOPs, counted by PyTorch itself.

    >>> import ncslim
    >>> model = ncslim.build_model("vgg", width=0.25)
    >>> ncslim.count_flops(model, (3, 32, 32)) > 0
    True
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor once); buffers such as BN statistics excluded."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one input, as ``torch.utils.flop_counter`` counts them.

    ``input_shape`` is ``(C, H, W)`` for one image or ``(N, C, H, W)`` for a batch. A
    multiply-accumulate counts as two FLOPs (MACs = FLOPs / 2); element-wise layers (BN, ReLU,
    pooling) are not counted, as in the papers' tables.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape}")
    reference = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(shape, device=reference.device, dtype=reference.dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


log = logging.getLogger("ncslim")
UNSTEADY = 0.2  # a spread (interquartile range / median) above this: timings not trustworthy
SLOW_REPEATS = 3  # timed runs of a model whose one pass outlasts the budget (a bounded wait)
TIMING_LIMIT_S = 120.0  # a CPU timing expected to take longer is refused (ncslim info)
CONV_EFFICIENCY = 0.25  # share of a matrix product's FLOP rate a network is assumed to reach


@dataclass(frozen=True)
class Latency:
    """Timings of one model's forward pass, in seconds: the median and the middle half."""

    median: float
    q1: float
    q3: float
    runs: int
    threads: int | None  # CPU threads used (torch.get_num_threads); None on a GPU

    @property
    def spread(self) -> float:
        """Interquartile range over the median: 0.05 is a steady machine, 0.5 a busy one."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    @property
    def steady(self) -> bool:
        return self.spread <= UNSTEADY


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 30,
    budget_s: float = 2.0,
    threads: int | None = None,
) -> float:
    """Median wall time in seconds of one batched forward pass, after ``warmup`` passes.

    Repeats until ``max_repeats`` or until ``budget_s`` seconds have passed (at least
    ``min_repeats`` runs). On CUDA each run is timed with CUDA events. ``threads`` sets the CPU
    threads for the timing (``None`` or 0: as they are); :func:`time_forward` also gives the
    spread.
    """
    return time_forward([model], input_shape, batch_size, device, warmup, min_repeats,
                        max_repeats, budget_s, threads)[0].median


def compare_latency(models: Sequence[nn.Module], input_shape: Sequence[int],
                    batch_size: int = 1, device: torch.device | str | None = None,
                    **options: Any) -> list[float]:
    """The medians of :func:`time_forward` (``options``: its warmup, repeats, budget, threads)."""
    return [t.median for t in time_forward(models, input_shape, batch_size, device, **options)]


@torch.inference_mode()
def time_forward(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 30,
    budget_s: float = 2.0,
    threads: int | None = None,
) -> list[Latency]:
    """Forward-pass timings of several models, timed in turn, one pass of each per round.

    Interleaving makes a slow spell of the machine hit every model alike, so the ratios of the
    medians are fair even where the absolute times drift (shared machines do). ``budget_s`` is
    per model. ``threads`` (CPU) sets ``torch.set_num_threads`` for the timing only: on a shared
    machine, extra threads that wait for a busy core can cost 100x, so state the count. A model
    whose one warm-up pass outlasts ``budget_s`` is warmed up once and timed
    :data:`SLOW_REPEATS` times: the wait stays a few passes, however large the model.
    """
    check_batch_size(batch_size)
    device = torch.device(device) if device is not None else next(models[0].parameters()).device
    modes = [m.training for m in models]
    dtype = next(models[0].parameters()).dtype
    x = torch.randn(batch_size, *input_shape, device=device, dtype=dtype)
    times: list[list[float]] = [[] for _ in models]
    before = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    used = torch.get_num_threads() if device.type == "cpu" else None
    try:
        for model in models:
            model.eval()
            for _ in range(warmup):
                if _time_one(model, x) > budget_s > 0:  # slow: no more warm-up, fewest runs
                    min_repeats = max_repeats = min(min_repeats, SLOW_REPEATS)
                    break
        started, budget = time.perf_counter(), budget_s * len(models)
        while len(times[0]) < max_repeats and (
                len(times[0]) < min_repeats or time.perf_counter() - started < budget):
            for model, record in zip(models, times):
                record.append(_time_one(model, x))
    finally:
        torch.set_num_threads(before)
        for model, mode in zip(models, modes):
            model.train(mode)
    return [_summary(t, used) for t in times]


def check_threads(threads: int | None) -> None:
    """``threads`` (None or 0: torch's default) within the CPUs this machine has."""
    most = os.cpu_count() or 1
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 0 <= threads <= most):
        raise ValueError(f"--latency-threads must be an integer in [0, {most}] (0: torch's "
                         f"default; this machine has {most} CPUs), got {threads!r}")


def cpu_flops_per_s(threads: int | None) -> float:
    """What this CPU computes a second with ``threads``, as a 256^3 float32 matrix product
    measures it (the best of a few, ~ms); convolutions of small layers reach a fraction of it."""
    a = torch.randn(256, 256, device="cpu")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        best = min(_time_product(a) for _ in range(5))
    finally:
        torch.set_num_threads(before)
    return 2 * 256**3 / max(best, 1e-9)


def _time_product(a: torch.Tensor) -> float:
    begin = time.perf_counter()
    a @ a
    return time.perf_counter() - begin


def check_timing_time(flops: int, batch_size: int, threads: int | None, what: str) -> None:
    """Refuse a CPU timing expected to outlast :data:`TIMING_LIMIT_S`: its fewest passes
    (1 warm-up and :data:`SLOW_REPEATS` timed) of ``flops`` per image at ``batch_size``, at
    :data:`CONV_EFFICIENCY` of :func:`cpu_flops_per_s`."""
    rate = CONV_EFFICIENCY * cpu_flops_per_s(threads)
    seconds = (1 + SLOW_REPEATS) * flops * batch_size / rate
    if seconds > TIMING_LIMIT_S:
        raise ValueError(f"{what} would take about {seconds:,.0f} s ({flops * batch_size:,} "
                         f"FLOPs a pass, this CPU does ~{rate / 1e9:,.0f} GFLOP/s on "
                         f"convolutions), more than {TIMING_LIMIT_S:.0f} s; lower --batch-size "
                         f"or time a smaller model")


def check_batch_time(one: float, batch_size: int, what: str) -> None:
    """Refuse a batch whose fewest passes, at ``one`` second an image (as timed at batch 1),
    would outlast :data:`TIMING_LIMIT_S`."""
    seconds = (1 + SLOW_REPEATS) * one * batch_size
    if seconds > TIMING_LIMIT_S:
        raise ValueError(f"{what} would take about {seconds:,.0f} s (one image: "
                         f"{1e3 * one:,.0f} ms), more than {TIMING_LIMIT_S:.0f} s; lower "
                         f"--batch-size or time a smaller model")


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size (the batch timed) must be an integer of at least 1, "
                         f"got {batch_size!r}")


def _summary(times: list[float], threads: int | None) -> Latency:
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return Latency(median=median, q1=q1, q3=q3, runs=len(times), threads=threads)


def _time_one(model: nn.Module, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    begin = time.perf_counter()
    model(x)
    return time.perf_counter() - begin


LATENCY_BUDGET_S = 2.0  # seconds of timing per model and batch size, in run and info alike


def threads_text(threads: int | None) -> str:
    return "GPU" if threads is None else f"{threads} thread{'s' if threads > 1 else ''}"


def latency_rows(models: list[nn.Module], input_shape: tuple[int, ...], device: torch.device,
                 batch_sizes: tuple[int, ...], threads: int) -> dict[str, list[Latency]]:
    """Timings of each model per batch size (models timed in turn), as ``run`` and ``info``
    take them: the same warm-up, budget and thread count."""
    used = (threads or torch.get_num_threads()) if device.type == "cpu" else None
    log.info("timing the forward pass of %d model(s) on %s at batch %s (%s, ~%.0f s)",
             len(models), device, " and ".join(map(str, batch_sizes)), threads_text(used),
             LATENCY_BUDGET_S * len(models) * len(batch_sizes))
    return {f"batch_{b}": time_forward(models, input_shape, b, device, budget_s=LATENCY_BUDGET_S,
                                       threads=threads or None) for b in batch_sizes}


def latency_warnings(latency: dict[str, dict[str, Any]]) -> list[str]:
    """One line per unsteady timing in ``{device: {batch_N: row}}``: the machine was busy."""
    warnings = []
    for device, table in latency.items():
        for batch, row in table.items():
            if row["spread"] > UNSTEADY:
                warnings.append(
                    f"latency on {device} at {batch.replace('_', ' ')} varied by "
                    f"{row['spread']:.0%} between runs (interquartile range / median): the "
                    f"machine is busy and these times are not trustworthy; time again on an "
                    f"idle machine with `ncslim info --checkpoint MODEL`")
    return warnings


def latency_table(original: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...],
                  device: torch.device, batch_sizes: tuple[int, ...],
                  threads: int = 1) -> dict[str, Any]:
    """Forward latency of both models on ``device`` (timed in turn) and the speed-up, per batch
    size: median and middle half (q1, q3) in ms, thread count, runs."""
    table: dict[str, Any] = {}
    for batch, (full, small) in latency_rows([original, pruned], input_shape, device,
                                             batch_sizes, threads).items():
        table[batch] = {"original_ms": 1e3 * full.median, "pruned_ms": 1e3 * small.median,
                        "speedup": full.median / small.median, "threads": full.threads,
                        "original_q1_ms": 1e3 * full.q1, "original_q3_ms": 1e3 * full.q3,
                        "pruned_q1_ms": 1e3 * small.q1, "pruned_q3_ms": 1e3 * small.q3,
                        "spread": max(full.spread, small.spread), "runs": full.runs}
    return table
