"""What gpu_check's checks share: sizes, rows, the context, generated CIFAR-10 files."""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the official CIFAR-10 python layout: folder, training batches, test batch, label key
CIFAR10 = ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
           "labels")


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: the paper's shapes on a GPU, tiny ones on the CPU."""

    width: float  # the VGG of the path checks
    depth: int
    batch: int
    steps: int  # training steps per path check
    per_file: int  # images per generated CIFAR-10 batch file (6 files)
    latency_width: float
    latency_batches: tuple[int, ...]
    latency_budget_s: float  # per model pair and batch size
    preset_width: float  # the presets' models when timing training
    timed_images: int  # images of one timed epoch (projected to the dataset's 50,000)


GPU_SIZES = Sizes(width=1.0, depth=19, batch=64, steps=24, per_file=10_000, latency_width=1.0,
                  latency_batches=(1, 64, 256), latency_budget_s=2.0, preset_width=1.0,
                  timed_images=12_800)
CPU_SIZES = Sizes(width=0.0625, depth=11, batch=16, steps=6, per_file=64, latency_width=0.125,
                  latency_batches=(1, 8), latency_budget_s=0.3, preset_width=0.0625,
                  timed_images=64)


@dataclass
class Row:
    """One check's outcome: ``ok``, ``FAIL`` or ``skipped`` (with why)."""

    check: str
    status: str
    detail: str
    seconds: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    work: Path  # scratch: generated data, runs
    data_dir: Path
    python: str = sys.executable

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


class Skip(Exception):
    """A check that cannot run here; the message says why."""


def write_cifar10(root: Path, per_file: int, seed: int = 0) -> Path:
    """CIFAR-10 as its official python pickles (``root/cifar-10-batches-py``): five training
    batches and a test batch of ``per_file`` images each. A class is a bright block in one
    channel at one place, over noise, so a few steps learn something."""
    sub, train, test, key = CIFAR10
    folder = root / sub
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for member in (*train, *test):
        labels = rng.integers(0, 10, per_file)
        images = rng.integers(0, 128, (per_file, 3, 32, 32), dtype=np.uint8)
        for label in range(10):
            rows = labels == label
            top, left = 4 + 8 * (label // 3 % 3), 4 + 8 * (label % 3)
            images[rows, label % 3, top:top + 8, left:left + 8] += 120
        batch = {b"batch_label": member.encode(), key.encode(): labels.tolist(),
                 b"data": images.reshape(per_file, 3072),
                 b"filenames": [f"{i}.png".encode() for i in range(per_file)]}
        (folder / member).write_bytes(pickle.dumps(batch, protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return root
