"""Shared by the benchmark scripts: the median time of a call, and the JSON line every script
prints last."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def print_json(benchmark: str, device: torch.device, rows: list[dict[str, Any]]) -> None:
    print(json.dumps({"benchmark": benchmark, "device": str(device), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "rows": rows}))


def median_time(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
