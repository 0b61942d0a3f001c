"""Cost of the sparsity regularizer, side by side with a naive per-layer loop and a training step.

    python benchmarks/regularizer_cost.py --device cpu
    python benchmarks/regularizer_cost.py --device cuda --archs resnet

For each architecture (width 1, CIFAR-10 shapes) and penalty: the median time of one
``apply_gradient()`` and one ``proximal_step()``, of the same update written the way the
reference code does it (a few small ops per BN layer, in Python), and of one full training step at
batch 64. Prints a table and one JSON line with the ratios.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import median_time, print_json  # benchmarks/ is on sys.path when run as a script

import ncslim

PENALTIES = {"l1": {}, "lp": {"p": 0.5}, "tl1": {"a": 1.0}, "mcp": {"gamma": 3.0},
             "scad": {"a": 3.7}}


def naive_subgradient(bns: list[torch.nn.Module], penalty: ncslim.Penalty) -> None:
    """The reference code's way: one small update per BN layer."""
    with torch.no_grad():
        for bn in bns:
            bn.weight.grad.add_(penalty.grad(bn.weight))


def naive_prox(bns: list[torch.nn.Module], penalty: ncslim.Penalty, lr: float) -> None:
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(penalty.prox(bn.weight, lr))


def measure(arch: str, device: torch.device, repeats: int) -> list[dict[str, float | str]]:
    torch.manual_seed(0)
    model = ncslim.build_model(arch, num_classes=10).to(device)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    x = torch.randn(64, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def train_step() -> None:
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step = median_time(train_step, device, max(3, repeats // 20))
    rows = []
    for name, params in PENALTIES.items():
        penalty = ncslim.make_penalty(name, 1e-4, **params)
        sub = ncslim.SparsityRegularizer(model, penalty)
        prox = ncslim.SparsityRegularizer(model, penalty, mode="proximal")
        ours_grad = median_time(sub.apply_gradient, device, repeats)
        ours_prox = median_time(lambda p=prox: p.proximal_step(0.1), device, repeats)
        naive_grad = median_time(lambda p=penalty: naive_subgradient(bns, p), device, repeats)
        naive_p = median_time(lambda p=penalty: naive_prox(bns, p, 0.1), device, repeats)
        rows.append({"arch": arch, "bn_layers": len(bns), "penalty": name,
                     "apply_gradient_ms": 1e3 * ours_grad, "naive_gradient_ms": 1e3 * naive_grad,
                     "proximal_step_ms": 1e3 * ours_prox, "naive_prox_ms": 1e3 * naive_p,
                     "train_step_ms": 1e3 * step,
                     "gradient_speedup": naive_grad / ours_grad,
                     "prox_speedup": naive_p / ours_prox,
                     "gradient_share_of_step": ours_grad / step,
                     "prox_share_of_step": ours_prox / step})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", default="vgg,densenet,resnet")
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    print(f"{'arch':<9}{'BNs':>4} {'penalty':<6}{'grad ms':>9}{'naive':>9}{'x':>7}"
          f"{'prox ms':>9}{'naive':>9}{'x':>7}{'step ms':>10}{'grad/step':>10}{'prox/step':>10}")
    for arch in args.archs.split(","):
        for row in measure(arch, device, args.repeats):
            rows.append(row)
            print(f"{row['arch']:<9}{row['bn_layers']:>4} {row['penalty']:<6}"
                  f"{row['apply_gradient_ms']:>9.3f}{row['naive_gradient_ms']:>9.3f}"
                  f"{row['gradient_speedup']:>7.1f}{row['proximal_step_ms']:>9.3f}"
                  f"{row['naive_prox_ms']:>9.3f}{row['prox_speedup']:>7.1f}"
                  f"{row['train_step_ms']:>10.1f}{row['gradient_share_of_step']:>10.2%}"
                  f"{row['prox_share_of_step']:>10.2%}", flush=True)
    print_json("regularizer_cost", device, rows)


if __name__ == "__main__":
    main()
