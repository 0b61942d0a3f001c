"""Issue 17's peer: Torch-Pruning's BNScalePruner in ncslim's harness, for seeds x regs x targets.

    python benchmarks/tp_baseline.py results/tp-bnscale --sweep configs/sweep-lam-auto.toml \\
        --reg 1e-5 1e-4 1e-3 3e-3 1e-2 --ratios 0.5 0.7 --target-flops 0.4
    ncslim report results --out docs/results/with-tp      # beside ncslim's own runs

The harness (data, model, epochs, optimizer, schedule, fine-tuning) is that of the ncslim sweep
the baseline is compared with: its preset and ``[base]`` (``--sweep``), or a preset
(``--preset``); ``--set KEY=VALUE`` overrides one key (a smoke run: ``--set epochs=1``). Seeds
and prune ratios default to the sweep's. ``--reg`` defaults to Torch-Pruning's own 1e-5; give
several to let the peer keep its best, as ncslim's runs get the lambda controller.

One training per (reg, seed) in ``OUT/tp-bnscale_reg{reg}_s{seed}/train``; each target is pruned
from it and fine-tuned in its own folder (``ratio-0.5``, ``target-flops-0.4``,
``target-params-0.3``) holding ``results.json``. Rerun after an interruption: finished targets
are skipped and an interrupted stage resumes at its last epoch. A target Torch-Pruning cannot
reach from a training (its pruner stops short of the share asked) is noted in that target's
``unreachable.txt``, skipped on reruns, and the other targets go on. Prints a markdown table (mean
over the seeds present) and the JSON line of every benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import print_json  # benchmarks/ is on sys.path when run as a script

from ncslim.config import Config, load_config, read_preset
from ncslim.models.files import atomic_write_text, run_lock
from ncslim.run.baselines import (
    COMMAND,
    DEFAULT_REG,
    NAME,
    TargetUnreachable,
    baseline_config,
    prune_and_finetune_baseline,
    train_baseline,
)
from ncslim.run.pipeline import write_config
from ncslim.run.sweep import cached_data

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RULES = ("ratio", "target_flops", "target_params")
UNREACHABLE = "unreachable.txt"  # a target Torch-Pruning cannot reach from that training


def parse_set(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a TOML value (``epochs=1``, ``lr=0.05``); else the text itself."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set takes KEY=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def target_dir(rule: str, value: float) -> str:
    return f"ratio-{value:g}" if rule == "ratio" else f"{rule.replace('_', '-')}-{value:g}"


def with_target(cfg: Config, rule: str, value: float, out: Path) -> Config:
    """``cfg`` pruned to one target only (the others cleared), in its folder below ``out``."""
    cleared = {key: None for key in RULES + ("threshold",)}
    return replace(cfg, **{**cleared, rule: value}, out=str(out / target_dir(rule, value)))


def run_one(preset: str | None, values: dict[str, Any], reg: float, seed: int,
            targets: list[tuple[str, float]], out: Path, cache: dict[tuple, Any]) -> None:
    """Train once with Torch-Pruning's regularizer, then prune and fine-tune at each target."""
    run_dir = out / f"{NAME}_reg{reg:g}_s{seed}"
    cfg = baseline_config(load_config(preset, {**values, "seed": seed, "out": str(run_dir)}), reg)
    todo = [baseline_config(with_target(cfg, rule, value, run_dir), reg)
            for rule, value in targets]  # every target checked before anything is written
    todo = [c for c in todo if not any((Path(c.out) / name).exists()
                                       for name in ("results.json", UNREACHABLE))]
    if not todo:
        print(f"{run_dir.name}: done, skipped", file=sys.stderr)
        return
    data = cached_data(cfg, cache)
    print(f"{run_dir.name}: {len(todo)} target(s) to run", file=sys.stderr)
    with run_lock(run_dir, fresh=False):  # two processes given the same run never interleave
        write_config(cfg, run_dir, COMMAND)
        model, sparse_acc = train_baseline(cfg, data, run_dir / "train", reg, resume=True)
        for target in todo:
            try:
                prune_and_finetune_baseline(model, sparse_acc, data, target, Path(target.out),
                                            reg, resume=True)
            except TargetUnreachable as err:  # the peer's own limit: noted, the rest go on
                Path(target.out).mkdir(parents=True, exist_ok=True)
                atomic_write_text(Path(target.out) / UNREACHABLE, f"{err}\n")
                print(f"{run_dir.name}/{Path(target.out).name}: {err}", file=sys.stderr)


def table(out: Path) -> list[dict[str, Any]]:
    """Mean over seeds of every (reg, target) below ``out``, as rows."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(out.rglob("results.json")):
        result = json.loads(path.read_text())
        if "baseline" in result:
            groups[(result["baseline"]["reg"], path.parent.name)].append(result)
    rows = []
    for (reg, target), results in sorted(groups.items()):
        mean = {name: statistics.mean(100 * get(r) for r in results) for name, get in (
            ("sparse", lambda r: r["accuracy"]["sparse"]),
            ("pruned", lambda r: r["accuracy"]["pruned"]),
            ("finetuned", lambda r: r["accuracy"]["finetuned"]),
            ("channels_removed", lambda r: r["prune"]["removed_fraction"]),
            ("params_removed", lambda r: r["params"]["removed"]),
            ("flops_removed", lambda r: r["flops"]["removed"]))}
        rows.append({"reg": reg, "target": target, "seeds": len(results), **mean})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder of the baseline's runs")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--sweep", help="the ncslim sweep file whose preset and [base] to use")
    source.add_argument("--preset", help="a preset name or .toml file (default: demo)")
    parser.add_argument("--set", action="append", default=[], type=parse_set,
                        metavar="KEY=VALUE", help="override one config key")
    parser.add_argument("--reg", type=float, nargs="+", default=[DEFAULT_REG])
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--ratios", type=float, nargs="*")
    parser.add_argument("--target-flops", type=float, nargs="*", default=[])
    parser.add_argument("--target-params", type=float, nargs="*", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # ncslim's epoch lines
    spec = read_preset(args.sweep) if args.sweep else {}
    preset = spec.get("preset", args.preset or "demo")
    values = {**spec.get("base", {}), **dict(args.set)}
    seeds = args.seeds if args.seeds is not None else spec.get("seeds", [0])
    explicit = args.ratios is not None or args.target_flops or args.target_params
    ratios = args.ratios if args.ratios is not None else (
        [] if explicit else spec.get("ratios", [0.5]))
    targets = ([("ratio", r) for r in ratios] + [("target_flops", f) for f in args.target_flops]
               + [("target_params", p) for p in args.target_params])
    cache: dict[tuple, Any] = {}
    try:
        for reg in args.reg:
            for seed in seeds:
                run_one(preset, values, reg, seed, targets, args.out, cache)
    except ValueError as err:  # a setting the baseline cannot run, in one line
        raise SystemExit(f"tp_baseline: {err}") from None
    rows = table(args.out)
    head = ["reg", "target", "seeds", "sparse", "pruned", "fine-tuned", "channels removed",
            "params removed", "FLOPs removed"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print(f"| {row['reg']:g} | {row['target']} | {row['seeds']} | {row['sparse']:.2f} | "
              f"{row['pruned']:.2f} | {row['finetuned']:.2f} | {row['channels_removed']:.1f} | "
              f"{row['params_removed']:.1f} | {row['flops_removed']:.1f} |")
    device = next(iter(cache.values())).train_images.device if cache else torch.device("cpu")
    print_json("tp_baseline", device, rows)


if __name__ == "__main__":
    main()
