"""Is the behaviour unchanged? A fingerprint of five short runs, recorded before a refactor and
compared after it (issue 26: the same seed gives the same results, bit for bit on one machine).

    python benchmarks/behaviour.py OUT                      # run the five, print the fingerprint
    python benchmarks/behaviour.py OUT --save before.json   # ... and keep it
    python benchmarks/behaviour.py OUT2 --compare before.json   # exit 1 on any difference

The runs (real Fashion-MNIST, 2,000 training and 1,000 test images, one after another):
the demo's recipe shortened (fixed lambda), ``--lam auto`` at a FLOPs budget, ``--passes 2``,
a ``--model`` network (``benchmarks/nets/budgetnets.py``) and the Bayesian baseline (VCP).
The fingerprint holds, per run, every accuracy, the parameter and FLOP counts, the pruned
widths, lambda at every epoch and a digest of the final |gamma| values; latencies and
timings are left out (they are measured, not computed). Finished runs are reused, so a killed
recording resumes; give a fresh OUT for each state of the code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--dataset", "fashion-mnist", "--limit-train", "2000", "--limit-test", "1000",
         "--epochs", "2", "--finetune-epochs", "1", "--device", "cpu", "--seed", "0"]
VGG = ["--arch", "vgg", "--depth", "11", "--width", "0.125"]
RUNS: dict[str, list[str]] = {
    "demo": ["--config", "demo", *SHORT],
    "lam-auto": [*SHORT, *VGG, "--penalty", "l1", "--mode", "proximal", "--lam", "auto",
                 "--target-flops", "0.3"],
    "passes-2": [*SHORT, *VGG, "--penalty", "tl1", "--lam", "3e-3", "--passes", "2",
                 "--ratio", "0.3"],
    "model": [*SHORT, "--model", "budgetnets:residual_cnn", "--penalty", "l1", "--lam", "auto",
              "--ratio", "0.5"],
    "vcp": [*SHORT, *VGG, "--penalty", "vcp"],
}


def run(out: Path, name: str) -> Path:
    target = out / name
    if not (target / "results.json").is_file():
        paths = [str(ROOT / "benchmarks" / "nets"), str(ROOT / "src"),
                 os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
        resume = ["--resume"] if (target / "config.json").is_file() else []
        subprocess.run([sys.executable, "-m", "ncslim", "run", *RUNS[name], "--out", str(target),
                        *resume], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return target


def lambdas(folder: Path) -> list[Any]:
    """Lambda at the end of every sparsity-training epoch, of every pass."""
    found = []
    for metrics in sorted(folder.rglob("train/metrics.jsonl")):
        found += [json.loads(line).get("lam") for line in metrics.read_text().splitlines()]
    return found


def fingerprint(folder: Path) -> dict[str, Any]:
    results = json.loads((folder / "results.json").read_text())
    gammas = json.dumps(results.get("gamma_values"), separators=(",", ":")).encode()
    return {"accuracy": results["accuracy"], "params": results["params"],
            "flops": results["flops"], "channels": [c["kept"] for c in results["channels"]],
            "lam": lambdas(folder), "gamma_digest": hashlib.sha256(gammas).hexdigest()[:16]}


def differences(before: dict[str, Any], after: dict[str, Any], where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            found += differences(before.get(key), after.get(key), f"{where}.{key}".lstrip("."))
        return found
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--save", type=Path, help="write the fingerprint to this JSON file")
    parser.add_argument("--compare", type=Path, help="a saved fingerprint: exit 1 if different")
    args = parser.parse_args()
    prints = {name: fingerprint(run(args.out, name)) for name in args.only}
    text = json.dumps(prints, indent=1)
    if args.save:
        args.save.write_text(text + "\n")
    if not args.compare:
        print(text)
        return
    before = json.loads(args.compare.read_text())
    found = differences({k: before.get(k) for k in args.only}, prints)
    print("\n".join(found) if found else f"the same, bit for bit: {', '.join(args.only)}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
