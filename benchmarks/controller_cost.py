"""Cost of ``--lam auto``: the lambda controller's hooks against the plain penalty's and against
one training step, measured side by side in one process.

    python benchmarks/controller_cost.py --device cpu
    python benchmarks/controller_cost.py --device cuda --width 1

For each architecture (CIFAR-10 shapes, batch 64) and mode: the median time of ``every`` steps'
hooks (``after_backward`` and ``after_step``) for the plain regularizer and for the controller in
each of its phases (select: one of them the update, a measurement, a top-k mask of the channels
to prune, a multiplicative step of lambda; finish: the frozen channels' linear shrink; hold:
their reset to zero), and the median time of one full training step. The controller's extra
cost per step is (controller - regularizer) / every, reported as a share of a training step.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import median_time, print_json  # benchmarks/ is on sys.path when run as a script

import ncslim
from ncslim.sparsity.controller import EVERY, START_LAM, LambdaController

TOTAL = 100_000  # steps of the controller's run: the timed ones stay in one phase
PHASES = ("select", "finish", "hold")


def hooks(method: ncslim.sparsity.SparsityMethod, steps: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(steps):
            method.after_backward()
            method.after_step(0.1)
    return run


def measure(arch: str, mode: str, width: float, device: torch.device,
            repeats: int) -> dict[str, float]:
    model = ncslim.build_model(arch, width=width).to(device)
    x = torch.randn(64, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    penalty = ncslim.make_penalty("tl1", lam=START_LAM, a=1.0)
    plain = ncslim.SparsityRegularizer(model, penalty, mode=mode)
    controllers = {phase: in_phase(LambdaController(
        ncslim.SparsityRegularizer(model, ncslim.make_penalty("tl1", lam=START_LAM, a=1.0),
                                   mode=mode), target=0.5, total_steps=TOTAL), phase)
        for phase in PHASES}
    opt = torch.optim.SGD(plain.param_groups(1e-4), lr=0.1, momentum=0.9)
    loss = F.cross_entropy(model(x), y)
    loss.backward()  # every gamma has a gradient for apply_gradient

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        plain.after_backward()
        opt.step()
        plain.after_step(0.1)

    step = median_time(train_step, device, repeats)
    base = median_time(hooks(plain, EVERY), device, repeats * 3) / EVERY
    row = {"step_ms": 1e3 * step, "penalty_ms": 1e3 * base}
    for phase, controller in controllers.items():
        auto = median_time(hooks(controller, EVERY), device, repeats * 3) / EVERY
        row[f"{phase}_ms"] = 1e3 * auto
        row[f"{phase}_extra_share"] = (auto - base) / step
    return row


def in_phase(controller: LambdaController, phase: str) -> LambdaController:
    """The controller moved to ``phase``: select (from the start), finish (its removed channels
    frozen, shrinking) or hold (frozen at zero); the timed steps stay inside the phase."""
    if phase != "select":
        controller.steps = int((0.4 if phase == "finish" else 0.6) * TOTAL)
        controller.mass = float(controller.steps)
        controller._freeze()
    return controller


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", default="vgg,resnet,densenet")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    print(f"{'arch':<10}{'mode':<13}{'train step ms':>15}{'penalty ms':>12}"
          + "".join(f"{phase + ' ms':>11}{'extra':>9}" for phase in PHASES))
    for arch in args.archs.split(","):
        for mode in ("subgradient", "proximal"):
            row = measure(arch, mode, args.width, device, args.repeats)
            rows.append({"arch": arch, "mode": mode, "width": args.width, **row})
            print(f"{arch:<10}{mode:<13}{row['step_ms']:>15.1f}{row['penalty_ms']:>12.3f}"
                  + "".join(f"{row[phase + '_ms']:>11.3f}"
                            f"{100 * row[phase + '_extra_share']:>8.3f}%" for phase in PHASES))
    print_json("controller_cost", device, rows)


if __name__ == "__main__":
    main()
