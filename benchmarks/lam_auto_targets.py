"""Issue 14's targets for ``--lam auto``, checked on the runs of a sweep.

    python benchmarks/lam_auto_targets.py results/sweep-lam-auto [results/sweep-cost-weighted]

Reads every ``results.json`` below the folders (``configs/sweep-lam-auto.toml``,
``configs/sweep-cost-weighted.toml``) and prints markdown tables, accuracy in %, mean over the
seeds present (their count in the ``seeds`` column):

1. every ``--lam auto`` setting: accuracy after sparsity training, right after pruning, after
   fine-tuning, the drop at pruning, parameters and FLOPs removed; the drop's target is at most
   1 point at 50 % of the channels and 2 points at 70 % (FLOPs targets: reported, no target);
2. the fixed lambda and no penalty, pruned at 50 % and 70 %;
3. the best final accuracy of each against no penalty + prune + fine-tune at about the same
   parameter count (the no-penalty run pruned at the same ratio);
4. with a second folder, cost-weighted (MorphNet) against unweighted at the same FLOPs target.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DROP_TARGET = {0.5: 1.0, 0.7: 2.0}


def load(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.rglob("results.json")):
        result = json.loads(path.read_text())
        cfg = result["config"]
        auto = cfg["lam"] == "auto"
        target = (f"FLOPs {cfg['target_flops']:g}" if cfg.get("target_flops") is not None
                  else f"params {cfg['target_params']:g}" if cfg.get("target_params") is not None
                  else f"ratio {result['prune']['ratio']:g}")
        # a baseline's runs (benchmarks/tp_baseline.py) record penalty none: label them apart
        penalty = result.get("baseline", {}).get("key", cfg["penalty"])
        none = penalty == "none"
        rows.append({
            "penalty": penalty, "mode": "—" if none else cfg["mode"],
            "lam": "—" if none else "auto" if auto else cfg["lam"],
            "target": target, "seed": cfg["seed"], "weighted": bool(cfg.get("cost_weighted")),
            "sparse": 100 * result["accuracy"]["sparse"],
            "pruned": 100 * result["accuracy"]["pruned"],
            "final": 100 * result["accuracy"]["finetuned"],
            "params_removed": 100 * result["params"]["removed"],
            "flops_removed": 100 * result["flops"]["removed"],
        })
    return rows


def grouped(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        key = (row["penalty"], row["mode"], row["lam"], row["target"], row["weighted"])
        groups[key].append(row)
    out = {}
    for key, members in groups.items():
        mean = {k: statistics.mean(r[k] for r in members) for k in
                ("sparse", "pruned", "final", "params_removed", "flops_removed")}
        mean["drop"] = statistics.mean(r["sparse"] - r["pruned"] for r in members)
        mean["worst_drop"] = max(r["sparse"] - r["pruned"] for r in members)
        mean["seeds"] = len(members)
        out[key] = mean
    return out


def _line(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(groups: dict[tuple, dict[str, Any]], keep, verdict: bool) -> list[str]:
    head = ["penalty", "mode", "lam", "target", "seeds", "sparse", "pruned", "fine-tuned",
            "drop (worst seed)", "params removed", "FLOPs removed"] + (["drop target"] if verdict
                                                                      else [])
    lines = [_line(head), _line(["---"] * len(head))]
    for key in sorted((k for k in groups if keep(k)), key=str):
        g = groups[key]
        cells = [*key[:4], g["seeds"], f"{g['sparse']:.2f}", f"{g['pruned']:.2f}",
                 f"{g['final']:.2f}", f"{g['drop']:.2f} ({g['worst_drop']:.2f})",
                 f"{g['params_removed']:.1f}", f"{g['flops_removed']:.1f}"]
        if verdict:
            ratio = float(key[3].split()[1]) if key[3].startswith("ratio") else None
            limit = DROP_TARGET.get(ratio) if ratio is not None else None
            cells.append("—" if limit is None else
                         ("met" if g["worst_drop"] <= limit else f"**missed** (> {limit:g})"))
        lines.append(_line(cells))
    return lines


def best_against_none(groups: dict[tuple, dict[str, Any]]) -> list[str]:
    lines = [_line(["ratio", "best --lam auto (final)", "params removed", "best fixed lam "
                    "(final)", "no penalty (final)", "params removed", "target"]),
             _line(["---"] * 7)]
    for ratio in ("ratio 0.5", "ratio 0.7"):
        auto = {k: g for k, g in groups.items() if k[2] == "auto" and k[3] == ratio}
        fixed = {k: g for k, g in groups.items() if k[2] not in ("auto",) and k[0] != "none"
                 and k[3] == ratio}
        none = [g for k, g in groups.items() if k[0] == "none" and k[3] == ratio]
        if not auto or not none:
            continue
        best = max(auto, key=lambda k: auto[k]["final"])
        best_fixed = max(fixed, key=lambda k: fixed[k]["final"]) if fixed else None
        met = auto[best]["final"] >= none[0]["final"]
        lines.append(_line([
            ratio, f"{best[0]} {best[1]}: {auto[best]['final']:.2f}",
            f"{auto[best]['params_removed']:.1f}",
            f"{best_fixed[0]} {best_fixed[1]}: {fixed[best_fixed]['final']:.2f}"
            if best_fixed else "—",
            f"{none[0]['final']:.2f}", f"{none[0]['params_removed']:.1f}",
            "met" if met else "**missed**"]))
    return lines


def weighted_against_plain(groups: dict[tuple, dict[str, Any]]) -> list[str]:
    lines = [_line(["penalty", "mode", "target", "seeds", "unweighted: final", "FLOPs removed",
                    "cost-weighted: final", "FLOPs removed", "difference"]),
             _line(["---"] * 9)]
    diffs = []
    for key, g in sorted(groups.items(), key=lambda item: str(item[0])):
        if not key[4]:
            continue
        plain = groups.get((*key[:4], False))
        if plain is None:
            continue
        diffs.append(g["final"] - plain["final"])
        lines.append(_line([key[0], key[1], key[3], f"{plain['seeds']}/{g['seeds']}",
                            f"{plain['final']:.2f}", f"{plain['flops_removed']:.1f}",
                            f"{g['final']:.2f}", f"{g['flops_removed']:.1f}",
                            f"{g['final'] - plain['final']:+.2f}"]))
    if diffs:
        lines.append("")
        lines.append(f"Mean difference {statistics.mean(diffs):+.2f} points; cost-weighted "
                     f"better in {sum(d > 0 for d in diffs)} of {len(diffs)} settings.")
    return lines


def main(folders: list[str]) -> None:
    rows = [row for folder in folders for row in load(Path(folder))]
    groups = grouped(rows)
    print("### `--lam auto`\n")
    print("\n".join(table(groups, lambda k: k[2] == "auto" and not k[4], verdict=True)))
    print("\n### Fixed lambda and no penalty\n")
    print("\n".join(table(groups, lambda k: k[2] != "auto", verdict=False)))
    print("\n### Best final accuracy against no penalty at the same ratio\n")
    print("\n".join(best_against_none(groups)))
    if any(k[4] for k in groups):
        print("\n### Cost-weighted (MorphNet) against unweighted\n")
        print("\n".join(weighted_against_plain(groups)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/lam_auto_targets.py RESULTS_DIR [MORE_DIRS...]")
    main(sys.argv[1:])
