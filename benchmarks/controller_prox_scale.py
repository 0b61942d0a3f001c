"""Is proximal mode's shortfall under ``--lam auto`` the proximal step's size? (docs/lambda-
controller.md, "When it falls short"). Runs ``ncslim run`` with every proximal step taken at
``--scale`` times the learning rate: 10 makes it as large as a momentum-0.9 SGD step of the same
subgradient, which is how the loss gradient that holds a channel alive is applied.

    python benchmarks/controller_prox_scale.py --scale 10 -- run --penalty l1 --mode proximal \\
        --lam auto --ratio 0.85 --epochs 6 --finetune-epochs 2 --finetune-lr 0.01 --seed 0 \\
        --out results/prox-scale10_s0
"""

from __future__ import annotations

import argparse
import sys

from ncslim.cli import main
from ncslim.sparsity import regularizer


def scale_proximal_steps(scale: float) -> None:
    plain = regularizer.SparsityRegularizer.proximal_step

    def scaled(self: regularizer.SparsityRegularizer, lr: float) -> None:
        plain(self, scale * lr)

    regularizer.SparsityRegularizer.proximal_step = scaled  # type: ignore[method-assign]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, required=True)
    parser.add_argument("ncslim_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    scale_proximal_steps(args.scale)
    ncslim_args = args.ncslim_args
    sys.exit(main(ncslim_args[1:] if ncslim_args[:1] == ["--"] else ncslim_args))
