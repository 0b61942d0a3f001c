"""Issue 17's comparison at matched compression: every penalty x mode through the lambda
controller, against no penalty and Torch-Pruning's BNScalePruner in the same harness.

    ncslim sweep configs/sweep-fair.toml
    python benchmarks/tp_baseline.py results/tp-bnscale --sweep configs/sweep-fair.toml \\
        --reg 1e-5 1e-4 1e-3 1e-2 --seeds 0 --ratios 0.5 0.7 0.85 --target-flops 0.4
    python benchmarks/fair_comparison.py results/sweep-lam-auto results/tp-bnscale \\
        --figures docs/results/fair

Reads every ``results.json`` below the folders (fixed-lambda runs are left out: they aim at no
compression) and prints markdown, accuracy in %, mean ± std over the seeds present:

1. every method at every target: accuracy after sparsity training, right after pruning, after
   fine-tuning, parameters and FLOPs removed;
2. the frontiers: at each point of a peer (no penalty; Torch-Pruning at each target with the reg
   whose mean final accuracy there is best, chosen on the runs present), the accuracy of every
   ncslim setting at the peer's compression, read off the setting's own measured points (linear
   between the two that bracket it; below its first point, that point's accuracy, since it
   removes more; ``TOLERANCE`` points beyond its last point and no further), the best of them,
   and the accuracy difference. A setting that does not reach the peer's compression is not
   compared there;
3. where each keeps its channels: at each of Torch-Pruning's points, its channels kept per
   layer beside those of the ncslim setting nearest it in FLOPs removed;
4. the paper's three claims, re-tested at matched compression;

and with ``--figures`` draws accuracy against parameters and FLOPs removed, one line per
method (``frontier-params.png``, ``frontier-flops.png``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

NONE, TP = "no penalty", "tp-bnscale"
TP_BEST = f"{TP} (best reg per target)"
MEASURES = ("params_removed", "flops_removed")
TOLERANCE = 1.0  # points of compression a setting may be read beyond its last measured point
COLOURS = {"l1": "tab:blue", "lp": "tab:orange", "tl1": "tab:green", "mcp": "tab:red",
           "scad": "tab:purple"}


def _target(result: dict[str, Any]) -> str:
    cfg, baseline = result["config"], result.get("baseline")
    if baseline is not None:
        measure, kept = baseline["target"]["measure"], baseline["target"]["kept"]
        return f"ratio {1 - kept:g}" if measure == "channels" else f"{measure} {kept:g}"
    if cfg.get("target_flops") is not None:
        return f"flops {cfg['target_flops']:g}"
    if cfg.get("target_params") is not None:
        return f"params {cfg['target_params']:g}"
    return f"ratio {result['prune']['ratio']:g}"


def _method(result: dict[str, Any]) -> str | None:
    cfg, baseline = result["config"], result.get("baseline")
    if baseline is not None:
        return f"{TP} reg {baseline['reg']:g}"
    if cfg["penalty"] == "none":
        return NONE
    if cfg["lam"] != "auto" or cfg.get("cost_weighted"):
        return None  # a fixed lambda aims at no compression; cost weighting is issue 14's
    ranking = result["prune"].get("ranking", "global")  # (records before it: global)
    return f"{cfg['penalty']} {cfg['mode']}" + ("" if ranking == "global" else f" by {ranking}")


def load(folders: list[str]) -> list[dict[str, Any]]:
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("results.json")):
            result = json.loads(path.read_text())
            method = _method(result)
            if method is None:
                continue
            acc = result["accuracy"]
            rows.append({"method": method, "target": _target(result),
                         "seed": result["config"]["seed"], "sparse": 100 * acc["sparse"],
                         "pruned": 100 * acc["pruned"], "final": 100 * acc["finetuned"],
                         "params_removed": 100 * result["params"]["removed"],
                         "flops_removed": 100 * result["flops"]["removed"],
                         "kept": [c["kept"] for c in result.get("channels", [])]})
    return rows


def grouped(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["method"], row["target"]].append(row)
    out = {}
    for key, members in groups.items():
        stats: dict[str, Any] = {"seeds": len(members)}
        for field in ("sparse", "pruned", "final", *MEASURES):
            values = [m[field] for m in members]
            stats[field] = statistics.mean(values)
            stats[f"{field}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        widths = [m["kept"] for m in members]
        if widths[0] and all(len(w) == len(widths[0]) for w in widths):
            stats["kept"] = [statistics.mean(layer) for layer in zip(*widths)]
        out[key] = stats
    return out


def _line(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _pm(g: dict[str, Any], field: str, digits: int = 2) -> str:
    return f"{g[field]:.{digits}f} ± {g[field + '_std']:.{digits}f}"


def table(groups: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    head = ["method", "target", "seeds", "sparse", "pruned", "fine-tuned", "params removed",
            "FLOPs removed"]
    lines = [_line(head), _line(["---"] * len(head))]
    for key in sorted(groups):
        g = groups[key]
        lines.append(_line([*key, g["seeds"], _pm(g, "sparse"), _pm(g, "pruned"),
                            _pm(g, "final"), _pm(g, "params_removed", 1),
                            _pm(g, "flops_removed", 1)]))
    return lines


def tp_envelope(groups: dict[tuple[str, str], dict[str, Any]]
                ) -> dict[tuple[str, str], dict[str, Any]]:
    """Torch-Pruning at its best: at each target, the reg whose mean fine-tuned accuracy is
    highest (chosen on the runs present, as ncslim's best setting is), as method ``TP_BEST``
    with the reg named in the target."""
    best: dict[str, tuple[str, dict[str, Any]]] = {}
    for (method, target), g in groups.items():
        if method.startswith(TP) and method != TP_BEST and (
                target not in best or g["final"] > best[target][1]["final"]):
            best[target] = (method.removeprefix(f"{TP} "), g)
    return {(TP_BEST, f"{target} ({reg})"): g for target, (reg, g) in best.items()}


def ours(method: str) -> bool:
    return method != NONE and not method.startswith(TP)


def interpolated(points: list[tuple[float, float]], x: float) -> float | None:
    """Accuracy at compression ``x`` along measured (compression, accuracy) points: linear
    between the two that bracket ``x``; below the first, the first's accuracy (a point that
    removes more and is as accurate lies at or above any point at ``x``); up to ``TOLERANCE``
    beyond the last, the last's; farther out, None (no claim where nothing was measured)."""
    points = sorted(points)
    if not points or x > points[-1][0] + TOLERANCE:
        return None
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return max(y0, y1) if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def frontier(groups: dict[tuple[str, str], dict[str, Any]], peer: str,
             measure: str) -> list[str]:
    """At each point of ``peer``: every ncslim setting's accuracy at the same compression."""
    what = "parameters" if measure == "params_removed" else "FLOPs"
    lines = [_line([f"{peer}: target", f"{what} removed", "fine-tuned",
                    f"best ncslim at as many {what} removed", "its fine-tuned (interpolated)",
                    "difference", "settings compared"]), _line(["---"] * 7)]
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (method, _), g in groups.items():
        if ours(method):
            curves[method].append((g[measure], g["final"]))
    for (method, target), g in sorted(groups.items()):
        if method != peer:
            continue
        at = {m: interpolated(points, g[measure]) for m, points in curves.items()}
        at = {m: acc for m, acc in at.items() if acc is not None}
        if not at:
            lines.append(_line([target, f"{g[measure]:.1f}", _pm(g, "final"),
                                "no setting reaches it", "—", "—", 0]))
            continue
        best = max(at, key=at.__getitem__)
        lines.append(_line([target, f"{g[measure]:.1f}", _pm(g, "final"), best,
                            f"{at[best]:.2f}", f"{at[best] - g['final']:+.2f}", len(at)]))
    return lines


def layer_widths(groups: dict[tuple[str, str], dict[str, Any]], peer: str) -> list[str]:
    """At each of ``peer``'s points, its channels kept per layer (mean over seeds) beside those of
    the ncslim setting x target nearest it in FLOPs removed: where each spends its FLOPs."""
    lines = [_line(["point", "FLOPs removed", "parameters removed", "fine-tuned",
                    "channels kept per layer (first to last)"]), _line(["---"] * 5)]
    candidates = {key: g for key, g in groups.items() if ours(key[0]) and "kept" in g}
    if not candidates:
        return lines
    for (method, target), g in sorted(groups.items()):
        if method != peer or "kept" not in g:
            continue
        near = min(candidates, key=lambda k: abs(candidates[k]["flops_removed"]
                                                 - g["flops_removed"]))
        for name, h in ((f"{peer} {target}", g), (" ".join(near), candidates[near])):
            lines.append(_line([name, f"{h['flops_removed']:.1f}",
                                f"{h['params_removed']:.1f}", _pm(h, "final"),
                                " ".join(f"{k:.0f}" for k in h["kept"])]))
    return lines


def claims(groups: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Each claim's numbers per target, penalty by penalty (both modes)."""
    targets = sorted({t for (m, t) in groups if ours(m)})
    head = ["target"] + [f"{p} {mode}" for p in ("l1", "lp", "tl1", "mcp", "scad")
                         for mode in ("subgradient", "proximal")]
    parts = []
    for title, cell in (
            ("1. TL1 preserves accuracy through pruning: the drop at pruning (points)",
             lambda g: f"{g['sparse'] - g['pruned']:.2f}"),
            ("2. lp compresses more at similar accuracy: parameters removed / FLOPs removed",
             lambda g: f"{g['params_removed']:.1f} / {g['flops_removed']:.1f}"),
            ("3. MCP and SCAD are more accurate after fine-tuning: fine-tuned accuracy",
             lambda g: _pm(g, "final"))):
        lines = [f"**{title}**", "", _line(head), _line(["---"] * len(head))]
        for target in targets:
            lines.append(_line([target] + [
                cell(groups[(m, target)]) if (m, target) in groups else "—"
                for m in head[1:]]))
        parts += lines + [""]
    return parts


def figures(groups: dict[tuple[str, str], dict[str, Any]], out: Path, tp: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    shown = sorted({m for m, _ in groups if ours(m)}) + [NONE] + ([tp] if tp else [])
    for measure, name in (("params_removed", "params"), ("flops_removed", "flops")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for method in shown:
            points = sorted((g[measure], g["final"], g["final_std"])
                            for (m, _), g in groups.items() if m == method)
            if not points:
                continue
            x, y, err = zip(*points)
            if method in (NONE, tp):
                style, colour = ("--o", "black") if method == NONE else ("-.s", "grey")
            else:  # one colour per penalty; proximal solid, subgradient dotted
                style = "-o" if method.endswith("proximal") else ":^"
                colour = COLOURS[method.split()[0]]
            ax.errorbar(x, y, yerr=err, fmt=style, color=colour, capsize=2, label=method,
                        markersize=4)
        ax.set_xlabel(f"{'parameters' if name == 'params' else 'FLOPs'} removed (%)")
        ax.set_ylabel("test accuracy after fine-tuning (%)")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"frontier-{name}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--figures", type=Path, help="folder for the frontier figures")
    args = parser.parse_args()
    groups = grouped(load(args.folders))
    envelope = tp_envelope(groups)
    tp = TP_BEST if envelope else None
    groups = {**groups, **envelope}
    print("### Every method at every target\n")
    print("\n".join(table(groups)))
    for peer in [NONE] + ([tp] if tp else []):
        for measure in MEASURES:
            print(f"\n### Frontier against {peer} ({measure.replace('_', ' ')})\n")
            print("\n".join(frontier(groups, peer, measure)))
    for folder in args.folders:
        for note in sorted(Path(folder).rglob("unreachable.txt")):
            print(f"\n{note.parent.parent.name}, {note.parent.name}: "
                  f"{note.read_text().strip()}")
    if tp:
        print(f"\n### Where the channels are kept: {tp} beside the ncslim setting nearest in "
              "FLOPs\n")
        print("\n".join(layer_widths(groups, tp)))
    print("\n### The paper's claims at matched compression\n")
    print("\n".join(claims(groups)))
    if args.figures:
        figures(groups, args.figures, tp)


if __name__ == "__main__":
    main()
