"""What every benchmark script prints last: one JSON line with the machine and its rows."""

from __future__ import annotations

import json
from typing import Any

import torch


def print_json(benchmark: str, device: torch.device, rows: list[dict[str, Any]]) -> None:
    print(json.dumps({"benchmark": benchmark, "device": str(device), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "rows": rows}))
