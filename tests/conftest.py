"""Shared test fixtures: tiny models with spread-out BN statistics, and tiny dataset files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ncslim import data as D

# (arch, constructor keywords): every family at tiny width, several depths.
TINY_MODELS = [
    ("vgg", {"width": 0.125, "depth": 11}),
    ("vgg", {"width": 0.0625, "depth": 19}),
    ("densenet", {"width": 0.34, "depth": 10}),
    ("densenet", {"width": 0.17, "depth": 40}),
    ("resnet", {"width": 0.25, "depth": 11}),
    ("resnet", {"width": 0.125, "depth": 29}),
]
TINY_IDS = [f"{arch}{kw['depth']}-w{kw['width']}" for arch, kw in TINY_MODELS]


def spread_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN distinct gammas, betas and running statistics, as after training.

    A fresh model has every gamma at 0.5 (all tied) and identity statistics, which would make
    pruning and equivalence tests meaningless.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.randn(n, generator=gen).abs() * torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model


@pytest.fixture
def spread() -> Callable[..., nn.Module]:
    return spread_bn


@pytest.fixture
def images() -> Callable[..., torch.Tensor]:
    def make(n: int = 2, channels: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1)
        return torch.randn(n, channels, 32, 32, generator=gen).to(dtype)

    return make


def write_fashion(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny Fashion-MNIST-shaped IDX files (64 training and 32 test images of random pixels,
    ten classes) and their md5 in the catalog."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sums = {}
    for prefix, n in (("train", 64), ("t10k", 32)):
        arrays = {"images": rng.integers(0, 256, (n, 28, 28)), "labels": rng.integers(0, 10, n)}
        for kind, array in arrays.items():
            raw = (bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
                   + array.astype(np.uint8).tobytes())
            name = f"{prefix}-{kind}-idx{array.ndim}-ubyte.gz"
            (folder / name).write_bytes(gzip.compress(raw))
            sums[name] = hashlib.md5(raw).hexdigest()
    monkeypatch.setitem(D.MD5, "fashion-mnist", sums)


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another live ncslim process holding ``folder`` (as ``ncslim run --out folder`` does)."""
    code = ("import sys, time\nfrom ncslim.util.liverun import run_lock\n"
            "with run_lock(sys.argv[1], fresh=False):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder served on 127.0.0.1 and named by $NCSLIM_DOWNLOAD_URL."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("NCSLIM_DOWNLOAD_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
