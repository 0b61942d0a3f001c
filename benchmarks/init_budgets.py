"""Train once, slim to several budgets (issue 24, part 2): ``--init`` against the from-scratch
recipe at the same budgets, accuracy and total compute.

    python benchmarks/init_budgets.py OUT --scratch results/sweep-fair-v2 [--seeds 0 1]

The setting of the fair sweep (configs/sweep-fair.toml: the demo preset, Fashion-MNIST, 20k
training images, VGG-19 at 1/8 width). Per seed: one plain training (``ncslim train --penalty
none``, 6 epochs), then per budget one short ``--lam auto`` stage from it (l1 proximal, 2 epochs
at lr 0.01) and 2 epochs of fine-tuning at lr 0.01. The from-scratch runs at the same budgets
(6 epochs of sparsity training + 2 of fine-tuning, l1 proximal) are read from ``--scratch``, the
fair sweep's folder. Finished runs are skipped, so a killed benchmark resumes. Prints a markdown
table: per budget and seed, the accuracies (%) of both recipes; and the compute of each recipe
in training epochs over the 20k images (the plain training counted once for all budgets).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NCSLIM = [sys.executable, "-m", "ncslim"]
PLAIN_EPOCHS, SLIM_EPOCHS, FINETUNE_EPOCHS, SCRATCH_EPOCHS = 6, 2, 2, 6
BUDGETS = {"ratio 0.5": ["--ratio", "0.5"], "ratio 0.7": ["--ratio", "0.7"],
           "ratio 0.85": ["--ratio", "0.85"]}
SLIM = ["--config", "demo", "--lam", "auto", "--penalty", "l1", "--mode", "proximal",
        "--epochs", str(SLIM_EPOCHS), "--lr", "0.01", "--finetune-epochs", str(FINETUNE_EPOCHS),
        "--finetune-lr", "0.01"]


def _ncslim(args: list[str], out: Path) -> None:
    resume = ["--resume"] if (out / "config.json").is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.parent.joinpath(out.name + ".log").open("a") as log:
        code = subprocess.call([*NCSLIM, *args, *resume], stdout=log, stderr=subprocess.STDOUT,
                               env=os.environ, cwd=ROOT)
    if code:
        sys.exit(f"ncslim {args[0]} {out}: exit {code}, see {out.name}.log")


def run_seed(out: Path, seed: int, budgets: list[str]) -> None:
    plain = out / f"plain_s{seed}"
    if not (plain / "model.pt").is_file():
        _ncslim(["train", "--config", "demo", "--penalty", "none", "--epochs", str(PLAIN_EPOCHS),
                 "--seed", str(seed), "--out", str(plain)], plain)
    for budget in budgets:
        target = out / f"{budget.replace(' ', '-')}_s{seed}"
        if not (target / "results.json").is_file():
            _ncslim(["run", *SLIM, *BUDGETS[budget], "--init", str(plain / "model.pt"),
                     "--seed", str(seed), "--out", str(target)], target)


def _accuracies(path: Path) -> tuple[float, float, float] | None:
    if not path.is_file():
        return None
    acc = json.loads(path.read_text())["accuracy"]
    return 100 * acc["sparse"], 100 * acc["pruned"], 100 * acc["finetuned"]


def _scratch(folder: Path, budget: str, seed: int) -> tuple[float, float, float] | None:
    ratio = budget.split()[1]
    return _accuracies(folder / f"l1_lamauto_ratio{ratio}_proximal_s{seed}" / "target"
                       / "results.json")


def _plain(out: Path, seed: int) -> float | None:
    """The plain model's test accuracy (%): its training's last epoch."""
    path = out / f"plain_s{seed}" / "metrics.jsonl"
    if not path.is_file():
        return None
    return 100 * json.loads(path.read_text().splitlines()[-1])["test_acc"]


def table(out: Path, scratch: Path, seeds: list[int], budgets: list[str]) -> list[str]:
    lines = ["| budget | seed | plain model | from --init: sparse -> pruned -> fine-tuned | "
             "from scratch: sparse -> pruned -> fine-tuned | difference |",
             "|---|---|---|---|---|---|"]
    gaps = []
    for budget in budgets:
        for seed in seeds:
            ours = _accuracies(out / f"{budget.replace(' ', '-')}_s{seed}" / "results.json")
            theirs = _scratch(scratch, budget, seed)
            plain = _plain(out, seed)
            if ours is None:
                continue
            text = [" -> ".join(f"{a:.2f}" for a in acc) if acc else "—" for acc in (ours, theirs)]
            gap = "—" if theirs is None else f"{ours[2] - theirs[2]:+.2f}"
            if theirs is not None:
                gaps.append(ours[2] - theirs[2])
            shown = "—" if plain is None else f"{plain:.2f}"
            lines.append(f"| {budget} | {seed} | {shown} | {text[0]} | {text[1]} | {gap} |")
    n = len(budgets)
    lines += ["", f"Compute per seed, in epochs over the training set: from --init "
              f"{PLAIN_EPOCHS} + {n} x {SLIM_EPOCHS + FINETUNE_EPOCHS} = "
              f"{PLAIN_EPOCHS + n * (SLIM_EPOCHS + FINETUNE_EPOCHS)}; from scratch {n} x "
              f"{SCRATCH_EPOCHS + FINETUNE_EPOCHS} = {n * (SCRATCH_EPOCHS + FINETUNE_EPOCHS)}."]
    if gaps:
        lines.append(f"Mean difference (--init minus scratch, fine-tuned): "
                     f"{statistics.mean(gaps):+.2f} points over {len(gaps)} pairs.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scratch", type=Path, required=True,
                        help="the fair sweep's folder (from-scratch runs at the same budgets)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    parser.add_argument("--list", action="store_true", help="only print the table so far")
    args = parser.parse_args()
    if not args.list:
        for seed in args.seeds:
            run_seed(args.out, seed, args.only)
    print("\n".join(table(args.out, args.scratch, args.seeds, args.only)))


if __name__ == "__main__":
    main()
