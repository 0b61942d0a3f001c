"""Where and in what precision ncslim computes: the device a run asks for, and what ``--amp``
means on it."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from ..config import Config
from ..util import distributed

__all__ = ["amp_dtype", "autocast", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a device "
                         f"(use cpu, cuda, cuda:N or auto)") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: ncslim runs on cpu or cuda (cuda:N); use one of "
                         f"those")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                         f"GPU(s), numbered from 0")
    if device.type == "cuda" and device.index is None and distributed.launched():
        device = torch.device("cuda", distributed.local_rank())  # one GPU per process
    return device


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """What ``--amp`` computes in on ``device`` (None: no autocast). float16 trains with a
    gradient scaler, bfloat16 (float32's range) needs none."""
    if not cfg.amp:
        return None
    if cfg.amp_dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, cfg.amp_dtype)


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
