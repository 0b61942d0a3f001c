"""Parameters and FLOPs, counted by PyTorch itself.

    >>> import ncslim
    >>> model = ncslim.build_model("vgg", width=0.25)
    >>> ncslim.count_flops(model, (3, 32, 32)) > 0
    True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

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


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 30,
    budget_s: float = 2.0,
) -> float:
    """Median wall time in seconds of one batched forward pass, after ``warmup`` passes.

    Repeats until ``max_repeats`` or until ``budget_s`` seconds have passed (at least
    ``min_repeats`` runs). On CUDA each run is timed with CUDA events.
    """
    return compare_latency([model], input_shape, batch_size, device, warmup, min_repeats,
                           max_repeats, budget_s)[0]


@torch.inference_mode()
def compare_latency(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 30,
    budget_s: float = 2.0,
) -> list[float]:
    """:func:`measure_latency` of several models, timed in turn, one pass of each per round.

    Interleaving makes a slow spell of the machine hit every model alike, so the ratios of the
    medians are fair even where the absolute times drift (shared machines do).
    """
    device = torch.device(device) if device is not None else next(models[0].parameters()).device
    modes = [m.training for m in models]
    dtype = next(models[0].parameters()).dtype
    x = torch.randn(batch_size, *input_shape, device=device, dtype=dtype)
    times: list[list[float]] = [[] for _ in models]
    try:
        for model in models:
            model.eval()
            for _ in range(warmup):
                model(x)
        started = time.perf_counter()
        while len(times[0]) < max_repeats and (
                len(times[0]) < min_repeats or time.perf_counter() - started < budget_s):
            for model, record in zip(models, times):
                record.append(_time_one(model, x))
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)
    return [statistics.median(t) for t in times]


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
