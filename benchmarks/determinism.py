"""Is a CPU run repeatable, and what changes its numbers? Trains the same short run in fresh
processes under several thread counts and CPU instruction sets and compares the results.

    python benchmarks/determinism.py --out runs/determinism

Each variant is one ``ncslim train`` (Fashion-MNIST, VGG-11 at 1/8 width, 3 epochs of TL1). The
table gives each variant's test accuracy per epoch and the largest weight difference from the
first variant: 0 means bit for bit. ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` make this
machine run the kernels of an older CPU (AVX2 instead of AVX-512), as another machine would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

RUN = ["--dataset", "fashion-mnist", "--arch", "vgg", "--depth", "11", "--width", "0.125",
       "--limit-train", "4000", "--limit-test", "2000", "--epochs", "3", "--penalty", "tl1",
       "--lam", "3e-3", "--device", "cpu"]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
VARIANTS = [  # (name, environment)
    ("2 threads", {"OMP_NUM_THREADS": "2"}),
    ("2 threads, again", {"OMP_NUM_THREADS": "2"}),
    ("1 thread", {"OMP_NUM_THREADS": "1"}),
    ("2 threads, AVX2 kernels", {"OMP_NUM_THREADS": "2", **AVX2}),
]


def train(out: Path, env: dict[str, str]) -> None:
    if not (out / "model.pt").exists():
        subprocess.run([sys.executable, "-m", "ncslim", "train", *RUN, "--out", str(out)],
                       env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def largest_difference(a: Path, b: Path) -> float:
    one = torch.load(a, weights_only=True)["state_dict"]
    two = torch.load(b, weights_only=True)["state_dict"]
    return max(float((one[k].double() - two[k].double()).abs().max()) for k in one
               if one[k].is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/determinism")
    args = parser.parse_args()
    root = Path(args.out)
    dirs = []
    for index, (name, env) in enumerate(VARIANTS):
        dirs.append(root / f"variant-{index}")
        print(f"training: {name}", file=sys.stderr)
        train(dirs[-1], env)
    print(f"torch {torch.__version__}, this CPU: {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'variant':<26}{'test accuracy per epoch (%)':<34}{'largest weight difference':>26}")
    for (name, _), folder in zip(VARIANTS, dirs):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        accs = " ".join(f"{100 * json.loads(line)['test_acc']:.2f}" for line in lines)
        diff = largest_difference(dirs[0] / "model.pt", folder / "model.pt")
        print(f"{name:<26}{accs:<34}{diff:>26.3g}")


if __name__ == "__main__":
    main()
