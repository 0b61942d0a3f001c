"""The comparison figures of ``ncslim report`` (matplotlib, written as PNG).

Rows are those of :func:`ncslim.report.collect`: one per pruned-and-fine-tuned run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

DPI = 130
Rows = list[dict[str, Any]]


def _by_setting(rows: Rows) -> dict[str, Rows]:
    groups: dict[str, Rows] = defaultdict(list)
    for row in rows:
        groups[row["setting"]].append(row)
    return dict(sorted(groups.items()))


def _styles(rows: Rows) -> dict[str, dict[str, Any]]:
    """One colour per penalty (and its parameters), one line/marker style per mode."""
    kinds = sorted({(r["penalty"], r["params"]) for r in rows if r["penalty"] != "none"})
    palette = plt.get_cmap("tab10")
    colour = {kind: palette(i % 10) for i, kind in enumerate(kinds)}
    styles = {}
    for row in rows:
        if row["penalty"] == "none":
            styles[row["setting"]] = {"color": "black", "linestyle": ":", "marker": "x"}
        elif row["penalty"] == "vcp":
            styles[row["setting"]] = {"color": colour[(row["penalty"], row["params"])],
                                      "linestyle": "-.", "marker": "D"}
        else:
            proximal = row["mode"] == "proximal"
            styles[row["setting"]] = {"color": colour[(row["penalty"], row["params"])],
                                      "linestyle": "--" if proximal else "-",
                                      "marker": "s" if proximal else "o"}
    return styles


def _legend(ax: Any, fig: Any) -> None:
    """Legend below the axes, so it never hides data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)


def _save(fig: Any, path: Path, legend_rows: int = 0) -> Path:
    if legend_rows:
        fig.tight_layout(rect=(0, 0.045 * legend_rows, 1, 1))
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        return path
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def gamma_distribution(rows: Rows, path: Path) -> Path:
    """|gamma| after sparsity training, one panel per setting (first seed, any ratio)."""
    groups = _by_setting(rows)
    cols = min(4, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False,
                             sharex=True)
    floor = 1e-8
    bins = [10 ** (e / 4) for e in range(-32, 5)]  # 1e-8 .. 10, four bins a decade
    for ax, (setting, group) in zip(axes.flat, groups.items()):
        first = min(group, key=lambda r: (r["seed"], r["ratio"] or 0))
        values = [max(abs(v), floor) for v in first["_results"]["gamma_values"]]
        zeros = sum(v == 0 for v in first["_results"]["gamma_values"]) / len(values)
        ax.hist(values, bins=bins, color="tab:blue")
        ax.set_xscale("log")
        ax.tick_params(labelbottom=True)
        ax.set_title(f"{setting}\n{zeros:.0%} exactly 0 (drawn at 1e-8)", fontsize=9)
        ax.set_xlabel("|gamma| (log scale)")
        ax.set_ylabel("channels")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle("BN scaling factors after sparsity training")
    return _save(fig, path)


def accuracy_vs_ratio(rows: Rows, path: Path) -> Path:
    """Test accuracy right after pruning (no fine-tuning) against the prune ratio."""
    fig, ax = plt.subplots(figsize=(8, 6))
    styles = _styles(rows)
    for setting, group in _by_setting(rows).items():
        points: dict[float, list[float]] = defaultdict(list)
        for row in group:
            # VCP's ratio is an outcome: drawn at the share of channels its rule removed
            x = row["channels_removed"] if row["ratio"] is None else row["ratio"]
            points[x].append(100 * row["acc_pruned"])
        ratios = sorted(points)
        means = [sum(points[r]) / len(points[r]) for r in ratios]
        ax.plot([100 * r for r in ratios], means, label=setting, **styles[setting])
    ax.set_xlabel("channels pruned (%)")
    ax.set_ylabel("test accuracy right after pruning (%)")
    ax.set_title("Accuracy through pruning, before fine-tuning (mean over seeds)")
    ax.grid(alpha=0.3)
    _legend(ax, fig)
    return _save(fig, path, legend_rows=-(-len(styles) // 4))


def frontier(rows: Rows, path: Path, measure: str) -> Path:
    """Accuracy after fine-tuning against the share of parameters (or FLOPs) kept."""
    key = {"params": "params_removed", "flops": "flops_removed"}[measure]
    label = {"params": "parameters kept (%)", "flops": "FLOPs kept (%)"}[measure]
    fig, ax = plt.subplots(figsize=(8, 6))
    styles = _styles(rows)
    for setting, group in _by_setting(rows).items():
        kept = [100 * (1 - r[key]) for r in group]
        acc = [100 * r["acc_finetuned"] for r in group]
        style = styles[setting]
        ax.scatter(kept, acc, label=setting, s=32, color=style["color"], marker=style["marker"])
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title(f"Trade-off: accuracy against {label.split(' (')[0]} (one point per run)")
    ax.grid(alpha=0.3)
    _legend(ax, fig)
    return _save(fig, path, legend_rows=-(-len(styles) // 4))


def training_curves(rows: Rows, path: Path) -> Path:
    """Test accuracy and the share of |gamma| < 1e-2 per epoch of sparsity training."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.5))
    styles = _styles(rows)
    for setting, group in _by_setting(rows).items():
        first = min(group, key=lambda r: (r["seed"], r["ratio"] or 0))
        metrics = first["_dir"] / "train" / "metrics.jsonl"  # ncslim run
        if not metrics.exists():  # a sweep: ratio-R/ beside the shared train/
            metrics = first["_dir"].parent / "train" / "metrics.jsonl"
        if not metrics.exists():
            continue
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        epochs = [r["epoch"] for r in records]
        left.plot(epochs, [100 * r["test_acc"] for r in records], label=setting,
                  **styles[setting])
        right.plot(epochs, [100 * r["gamma_below_1e-2"] for r in records], label=setting,
                   **styles[setting])
    left.set_ylabel("test accuracy (%)")
    right.set_ylabel("channels with |gamma| < 1e-2 (%)")
    for ax in (left, right):
        ax.set_xlabel("epoch of sparsity training")
        ax.grid(alpha=0.3)
    _legend(right, fig)
    fig.suptitle("Sparsity training (first seed)")
    return _save(fig, path, legend_rows=-(-len(styles) // 4))


def draw_all(rows: Rows, out: Path) -> dict[str, Path]:
    return {
        "gamma": gamma_distribution(rows, out / "gamma_distribution.png"),
        "pruned": accuracy_vs_ratio(rows, out / "accuracy_after_pruning.png"),
        "params": frontier(rows, out / "frontier_params.png", "params"),
        "flops": frontier(rows, out / "frontier_flops.png", "flops"),
        "curves": training_curves(rows, out / "training_curves.png"),
    }
