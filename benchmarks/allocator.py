"""Training-step time with glibc's default allocator settings versus tuned ones, on CPU.

    python benchmarks/allocator.py

glibc serves every allocation above its mmap threshold (at most 32 MiB, usually far less) with a
fresh ``mmap`` and returns it with ``munmap``, so each large activation or gradient of a
batch-64 step is page-faulted in anew, every step. ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:
glibc.malloc.trim_threshold=...`` keeps freed memory in the process for reuse. This times one
SGD step (forward, backward, update, batch 64) of each reference model in child processes with
and without the setting, alternating, and prints the ratio. The setting must be in the
environment before Python starts; ncslim never sets it for you (it keeps the peak memory the
process has reached, see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from common import print_json  # benchmarks/ is on sys.path when run as a script

TUNED = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
MODELS = {"vgg/8": ("vgg", 0.125), "vgg": ("vgg", 1.0), "densenet": ("densenet", 1.0),
          "resnet": ("resnet", 1.0)}


def child(name: str, steps: int) -> float:
    import time

    import torch
    import torch.nn.functional as F

    import ncslim

    arch, width = MODELS[name]
    torch.manual_seed(0)
    model = ncslim.build_model(arch, width=width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    import torch

    base_env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    envs = {"default": base_env, "tuned": {**base_env, "GLIBC_TUNABLES": TUNED}}
    rows = []
    print(f"{'model':<10}{'default ms':>12}{'tuned ms':>10}{'speed-up':>10}")
    for name in args.models.split(","):
        steps = 10 if name == "vgg/8" else 3
        times: dict[str, list[float]] = {k: [] for k in envs}
        for _ in range(args.rounds):
            for label, env in envs.items():
                out = subprocess.run([sys.executable, __file__, "--child", name, str(steps)],
                                     env=env, check=True, capture_output=True, text=True)
                times[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
        default, tuned = (statistics.median(times[k]) for k in ("default", "tuned"))
        rows.append({"model": name, "default_ms": 1e3 * default, "tuned_ms": 1e3 * tuned,
                     "speedup": default / tuned})
        print(f"{name:<10}{1e3 * default:>12.1f}{1e3 * tuned:>10.1f}{default / tuned:>10.2f}",
              flush=True)
    print_json("allocator", torch.device("cpu"), rows)


if __name__ == "__main__":
    main()
