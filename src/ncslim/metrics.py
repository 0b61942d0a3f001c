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


@torch.inference_mode()
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
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    x = torch.randn(batch_size, *input_shape, device=device, dtype=dtype)
    try:
        for _ in range(warmup):
            model(x)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < max_repeats and (
                len(times) < min_repeats or time.perf_counter() - started < budget_s):
            times.append(_time_one(model, x))
    finally:
        model.train(was_training)
    return statistics.median(times)


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
