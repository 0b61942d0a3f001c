"""Peak memory: training the demo, inference of original vs pruned models, the batch pipeline.

    python benchmarks/memory.py

Every measurement runs in a fresh child process and reads its own peak resident set size (Linux
``VmHWM``; ``ru_maxrss`` would carry this process's peak across the exec), so nothing earlier in
this process inflates it:

- ``demo training``: ``ncslim run --config demo`` shortened to 1 + 1 epochs (sparsity training,
  pruning, fine-tuning, latency: every phase of the real job; the later epochs repeat the first);
- ``import``: the same interpreter importing torch and ncslim only, the floor of the above;
- inference of each reference model at width 1 (original and pruned at the paper's ratio, with
  the calibrated gamma profile of ``pruned_latency.py``): the weights, and the peak of the C
  heap above its starting point during one forward at batch 64 (activations and workspaces),
  sampled before and after every layer through glibc's ``mallinfo2``;
- one training step (forward, backward, SGD with momentum) of each model at width 1, batch 64:
  the peak resident size above the size just before it;
- the batch pipeline over a synthetic SVHN+extra-sized uint8 training set (604,388 images,
  1.86 GB): peak above the dataset itself while drawing one whole epoch of augmented batches.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import print_json  # benchmarks/ is on sys.path when run as a script
from torch import Tensor, nn

MIB = 2**20
HERE = Path(__file__).resolve().parent


# this process's own peak resident set size in KiB; also run as code by the demo's child
PEAK_KIB = 'int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])'


def peak_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024 / MIB


def current_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def child(kind: str, arg: str) -> dict[str, Any]:
    import ncslim  # noqa: F401  (what the import floor measures)

    if kind == "import":
        return {"peak_mib": peak_mib()}
    if kind == "pipeline":
        from ncslim.data import DATASETS, batches

        n = 604_388
        images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
        images.view(-1)[:: 4096] = 1  # touch every page, so the dataset is resident
        labels = torch.zeros(n, dtype=torch.long)
        info = DATASETS["cifar10"]  # augmenting, the costlier path
        before = current_mib()
        gen = torch.Generator().manual_seed(0)
        seen = 0
        for _, y in batches(images, labels, 128, info=info, train=True, generator=gen):
            seen += y.numel()
        return {"dataset_mib": images.numel() / MIB, "current_before_mib": before,
                "peak_mib": peak_mib(), "epoch_mib": peak_mib() - before, "images": seen}
    if kind == "train_step":
        model = ncslim.build_model(arg)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
        before = current_mib()
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return {"current_before_mib": before, "peak_mib": peak_mib(),
                "step_mib": peak_mib() - before}
    raise SystemExit(f"unknown child kind {kind}")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def malloc_in_use() -> int:
    """Bytes the C heap has handed out and not taken back (glibc ``mallinfo2``)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def forward_peak_mib(model: nn.Module, x: Tensor) -> float:
    """Peak heap bytes above the start during one forward, sampled around every leaf module."""
    peak = [0]

    def sample(*_: object) -> None:
        peak[0] = max(peak[0], malloc_in_use())

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_pre_hook(sample) for m in leaves]
    hooks += [m.register_forward_hook(sample) for m in leaves]
    try:
        with torch.inference_mode():
            model(x)  # warm-up: one-off caches are not activations
            start = malloc_in_use()
            peak[0] = start
            model(x)
            sample()
    finally:
        for hook in hooks:
            hook.remove()
    return (peak[0] - start) / MIB


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True, cwd=HERE)
    return json.loads(out.stdout.strip().splitlines()[-1])


def demo_training(workdir: Path) -> dict[str, Any]:
    """Peak RSS of the whole demo job (1 + 1 epochs), read from the finished child."""
    code = ("import re, sys; from ncslim.cli import main; rc = main(sys.argv[1:]); "
            f"print({PEAK_KIB}); sys.exit(rc)")
    out = subprocess.run(
        [sys.executable, "-c", code, "run", "--config", "demo", "--epochs", "1",
         "--finetune-epochs", "1", "--out", str(workdir / "demo")],
        check=True, capture_output=True, text=True)
    return {"peak_mib": int(out.stdout.strip().splitlines()[-1]) * 1024 / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
    parser.add_argument("--archs", default="vgg,densenet,resnet")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from pruned_latency import NAMES, RATIO, calibrate, set_gammas

    import ncslim

    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="ncslim-memory-"))
    floor = run_child("import", "-")["peak_mib"]
    demo = demo_training(workdir)["peak_mib"]
    rows += [{"what": "import torch+ncslim", "peak_mib": floor},
             {"what": "demo run (train+prune+finetune)", "peak_mib": demo,
              "above_import_mib": demo - floor}]
    print(f"peak RSS: import {floor:.0f} MiB; demo run {demo:.0f} MiB "
          f"({demo - floor:.0f} MiB above the import)")
    print(f"{'model':<12}{'variant':<10}{'weights MiB':>12}{'forward@64 MiB':>16}")
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        model = ncslim.build_model(arch).eval()
        set_gammas(model, calibrate(model, arch))
        shape = model.input_shape()
        small = ncslim.prune_model(model, ratio=RATIO[arch])[0]
        for variant, m in (("original", model), ("pruned", small)):
            weights = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
            result = {"weights_mib": weights / MIB,
                      "forward_mib": forward_peak_mib(m.eval(), torch.randn(64, *shape))}
            rows.append({"what": "inference", "arch": arch, "variant": variant, "batch": 64,
                         **result})
            print(f"{NAMES[arch]:<12}{variant:<10}{result['weights_mib']:>12.1f}"
                  f"{result['forward_mib']:>16.1f}")
    for arch in args.archs.split(","):
        step = run_child("train_step", arch)
        rows.append({"what": "training step", "arch": arch, "batch": 64, **step})
        print(f"{NAMES[arch]}: a training step at batch 64 (with SGD momentum) adds "
              f"{step['step_mib']:.0f} MiB of peak resident memory")
    pipe = run_child("pipeline", "-")
    rows.append({"what": "batch pipeline, SVHN+extra size", **pipe})
    print(f"batch pipeline over {pipe['images']:,} uint8 images ({pipe['dataset_mib']:.0f} MiB): "
          f"one augmented epoch adds {pipe['epoch_mib']:.0f} MiB of peak")
    print_json("memory", torch.device("cpu"), rows)


if __name__ == "__main__":
    main()
