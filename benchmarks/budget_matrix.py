"""Does the budget hold in every run? ``--lam auto`` across the regimes users run (issue 24).

    python benchmarks/budget_matrix.py OUT [--seeds 0 1] [--only NAME ...] [--list]

One cell is one ``ncslim run`` (real Fashion-MNIST, one after another: 2 cores). Around a base
cell (VGG-19 at 1/8 width, l1 proximal, 3 epochs on 5,000 images, batch 64, step schedule,
``--ratio 0.6``, 1 epoch of fine-tuning at lr 0.01) each other cell changes one thing: the run's
length, the batch, the schedule, the target (ratios 0.3-0.95, FLOPs 0.3 and 0.05), the penalty
and mode, the family (ResNet, DenseNet, a residual ``--model`` network of our own), and starting
from a trained model (``--init``, a short stage at lr 0.01). Finished cells are skipped, so a
killed matrix resumes. Prints a markdown table: the share of |gamma| <= 0.01 at the end of
sparsity training against the share pruning removed, the channels it cut that were not near zero,
the drop at pruning and the accuracies (%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NCSLIM = [sys.executable, "-m", "ncslim"]
BASE = ["--lam", "auto", "--penalty", "l1", "--mode", "proximal", "--epochs", "3",
        "--limit-train", "5000", "--finetune-epochs", "1", "--finetune-lr", "0.01"]
RATIO = ["--ratio", "0.6"]
PLAIN = "plain-vgg"  # a model trained without a penalty, where the --init cells start
CELLS: dict[str, list[str]] = {
    "base": [*RATIO],
    "1 epoch on 5k": [*RATIO, "--epochs", "1"],
    "6 epochs on 20k": [*RATIO, "--epochs", "6", "--limit-train", "20000"],
    "batch 256, lr 0.2": [*RATIO, "--batch-size", "256", "--lr", "0.2"],
    "cosine": [*RATIO, "--schedule", "cosine"],
    "constant, lr 0.05": [*RATIO, "--schedule", "constant", "--lr", "0.05"],
    "ratio 0.3": ["--ratio", "0.3"],
    "ratio 0.8": ["--ratio", "0.8"],
    "ratio 0.95": ["--ratio", "0.95"],
    "FLOPs 0.3": ["--target-flops", "0.3"],
    "FLOPs 0.05": ["--target-flops", "0.05"],
    "TL1 subgradient": [*RATIO, "--penalty", "tl1", "--mode", "subgradient"],
    "MCP proximal": [*RATIO, "--penalty", "mcp"],
    "SCAD subgradient": [*RATIO, "--penalty", "scad", "--mode", "subgradient"],
    "lp subgradient": [*RATIO, "--penalty", "lp", "--mode", "subgradient"],
    "ResNet-20 x1/2": [*RATIO, "--arch", "resnet", "--depth", "20", "--width", "0.5"],
    "DenseNet-16 x1/2": [*RATIO, "--arch", "densenet", "--depth", "16", "--width", "0.5"],
    "residual --model": [*RATIO, "--model", "budgetnets:residual_cnn"],
    "--init, 1 epoch at lr 0.01": [*RATIO, "--epochs", "1", "--lr", "0.01", "--init", PLAIN],
    "--init, ratio 0.8": ["--ratio", "0.8", "--epochs", "1", "--lr", "0.01", "--init", PLAIN],
}


def folder_name(name: str, seed: int) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-") + f"_s{seed}"


def run_cell(out: Path, name: str, seed: int) -> None:
    target = out / folder_name(name, seed)
    if (target / "results.json").is_file():
        return
    flags = list(CELLS[name])
    if "--init" in flags:
        plain = out / f"{PLAIN}_s{seed}"
        if not (plain / "model.pt").is_file():
            _ncslim(["train", "--penalty", "none", "--epochs", "3", "--limit-train", "5000",
                     "--seed", str(seed), "--out", str(plain)], plain)
        flags[flags.index("--init") + 1] = str(plain / "model.pt")
    _ncslim(["run", *BASE, *flags, "--seed", str(seed), "--out", str(target)], target)


def _ncslim(args: list[str], out: Path) -> None:
    nets = [str(ROOT / "benchmarks" / "nets"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, nets))}
    resume = ["--resume"] if (out / "config.json").is_file() else []
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        code = subprocess.call([*NCSLIM, *args, *resume], stdout=f, stderr=subprocess.STDOUT,
                               env=env, cwd=ROOT)
    if code:
        print(f"{' '.join(args[:1])} {out.name}: exit {code}, see {log}", file=sys.stderr)


def row(out: Path, name: str, seed: int) -> str | None:
    path = out / folder_name(name, seed) / "results.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    gammas = result["gamma_values"]
    near = sum(abs(g) <= 0.01 for g in gammas) / len(gammas)
    kept = {c["layer"]: c for c in result["channels"]}
    live = _live_cut(result, kept)
    acc = result["accuracy"]
    drop = 100 * (acc["sparse"] - acc["pruned"])
    return (f"| {name} | {seed} | {near:.1%} / {result['prune']['removed_fraction']:.1%} | "
            f"{result['flops']['removed']:.1%} | {live} | {drop:+.2f} | "
            f"{100 * acc['sparse']:.2f} | {100 * acc['pruned']:.2f} | "
            f"{100 * acc['finetuned']:.2f} |")


def _live_cut(result: dict, kept: dict) -> str:
    """Channels removed while |gamma| > 0.01, where the report's layers are the BN layers."""
    gammas, start, live = result["gamma_values"], 0, 0
    if sum(c["total"] for c in result["channels"]) != len(gammas):
        return "n/a (coupled)"
    for layer in result["channels"]:
        part = sorted(abs(g) for g in gammas[start:start + layer["total"]])
        live += sum(g > 0.01 for g in part[:layer["total"] - layer["kept"]])
        start += layer["total"]
    return str(live)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--list", action="store_true", help="only print the table so far")
    args = parser.parse_args()
    if not args.list:
        for seed in args.seeds:
            for name in args.only:
                run_cell(args.out, name, seed)
    print("| cell | seed | near zero / removed | FLOPs removed | live cut | drop | sparse | "
          "pruned | fine-tuned |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.only:
        for seed in args.seeds:
            line = row(args.out, name, seed)
            if line:
                print(line)


if __name__ == "__main__":
    main()
