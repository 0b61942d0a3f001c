"""The figures of ``ncslim report`` (matplotlib, written as PNG).

Rows are those of :func:`ncslim.report.collect`: one per pruned-and-fine-tuned run. Several runs
get comparison figures (one without two points to compare is left out); a single run gets the
figures of that run (:func:`ncslim.runfigures.plan_run`).

:func:`plan` reads and checks everything the figures draw (every ``metrics.jsonl``, the parts of
each ``results.json`` only a figure uses) and decides which figures there will be, before a
file is written: a report refuses bad input before it writes anything. Every PNG carries the
text chunk ``Software: ncslim report`` (:data:`ncslim.figurebase.SOFTWARE`), by which a later
report knows the file as its own to replace.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..sparsity.registry import takes_lambda  # noqa: E402
from .figurebase import (  # noqa: E402
    Figure,
    Records,
    Rows,
    checked,
    is_number,
    save_figure,
)
from .rundata import (  # noqa: E402
    read_metrics,
    stage_folder,
)
from .runfigures import plan_run  # noqa: E402


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
        elif not takes_lambda(row["penalty"]):  # a method of its own (VCP)
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


def _first(group: Rows) -> dict[str, Any]:
    """The run a setting's figure draws: the first seed, at its lowest ratio."""
    return min(group, key=lambda r: (r["seed"], r["ratio"] or 0))


def _gammas(row: dict[str, Any]) -> list[float] | None:
    """The |gamma| values of a run after sparsity training; None where it records none."""
    values = row["_results"].get("gamma_values")
    if values is None or values == []:
        return None
    if not isinstance(values, list) or not all(is_number(v) for v in values):
        raise ValueError("gamma_values is not a list of numbers")
    return values


def gamma_distribution(groups: dict[str, list[float]], path: Path) -> Path:
    """|gamma| after sparsity training, one panel per setting (first seed, any ratio): the
    values of :func:`_gammas` by setting."""
    cols = min(4, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False,
                             sharex=True)
    floor = 1e-8
    bins = [10 ** (e / 4) for e in range(-32, 5)]  # 1e-8 .. 10, four bins a decade
    for ax, (setting, gammas) in zip(axes.flat, groups.items()):
        values = [max(abs(v), floor) for v in gammas]
        zeros = sum(v == 0 for v in gammas) / len(values)
        ax.hist(values, bins=bins, color="tab:blue")
        ax.set_xscale("log")
        ax.tick_params(labelbottom=True)
        ax.set_title(f"{setting}\n{zeros:.0%} exactly 0 (drawn at 1e-8)", fontsize=9)
        ax.set_xlabel("|gamma| (log scale)")
        ax.set_ylabel("channels")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle("BN scaling factors after sparsity training")
    return save_figure(fig, path)


def _ratio_points(rows: Rows) -> dict[str, dict[float, list[float]]]:
    """Per setting: accuracy right after pruning (%) of each run, by share of channels pruned."""
    out: dict[str, dict[float, list[float]]] = {}
    for setting, group in _by_setting(rows).items():
        points: dict[float, list[float]] = defaultdict(list)
        for row in group:
            # VCP's ratio is an outcome: drawn at the share of channels its rule removed
            x = row["channels_removed"] if row["ratio"] is None else row["ratio"]
            points[x].append(100 * row["acc_pruned"])
        out[setting] = points
    return out


def accuracy_vs_ratio(rows: Rows, path: Path) -> Path:
    """Test accuracy right after pruning (no fine-tuning) against the prune ratio."""
    fig, ax = plt.subplots(figsize=(8, 6))
    styles = _styles(rows)
    for setting, points in _ratio_points(rows).items():
        ratios = sorted(points)
        means = [sum(points[r]) / len(points[r]) for r in ratios]
        ax.plot([100 * r for r in ratios], means, label=setting, **styles[setting])
    ax.set_xlabel("channels pruned (%)")
    ax.set_ylabel("test accuracy right after pruning (%)")
    ax.set_title("Accuracy through pruning, before fine-tuning (mean over seeds)")
    ax.grid(alpha=0.3)
    _legend(ax, fig)
    return save_figure(fig, path, legend_rows=-(-len(styles) // 4))


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
    return save_figure(fig, path, legend_rows=-(-len(styles) // 4))


def _training_records(row: dict[str, Any]) -> Records | None:
    """The sparsity-training records of a run (read and checked); None where it has none."""
    metrics = stage_folder(row["_dir"], row["_results"]) / "train" / "metrics.jsonl"
    if not metrics.exists() and not metrics.is_symlink():  # a sweep: ratio-R/ beside train/
        metrics = Path(row["_dir"]).parent / "train" / "metrics.jsonl"
    if not metrics.exists() and not metrics.is_symlink():
        return None
    return read_metrics(metrics)


def training_curves(rows: Rows, trained: dict[str, Records | None], path: Path) -> Path:
    """Test accuracy and the share of |gamma| < 1e-2 per epoch of sparsity training; ``trained``
    holds each setting's records (:func:`_training_records` of its first run)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.5))
    styles = _styles(rows)
    for setting in _by_setting(rows):
        if trained.get(setting) is None:
            continue
        records = [r for r in trained[setting]
                   if r.get("test_acc") is not None and r.get("gamma_below_1e-2") is not None]
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
    return save_figure(fig, path, legend_rows=-(-len(styles) // 4))


COMPARISON_FIGURES = {"gamma": "gamma_distribution.png", "pruned": "accuracy_after_pruning.png",
                      "params": "frontier_params.png", "flops": "frontier_flops.png",
                      "curves": "training_curves.png"}


def plan(rows: Rows) -> list[Figure]:
    """The figures of a report, every file they draw from read and checked (a bad one is a
    one-line ValueError naming it), nothing drawn yet: those of the run for one run, else the
    comparisons."""
    if len(rows) == 1:
        return plan_run(rows[0])
    groups = {setting: _first(group) for setting, group in _by_setting(rows).items()}
    gammas = {setting: checked(row, partial(_gammas, row)) for setting, row in groups.items()}
    gammas = {setting: values for setting, values in gammas.items() if values is not None}
    trained = {setting: _training_records(row) for setting, row in groups.items()}
    figures = []
    if gammas:
        figures.append(Figure("gamma", COMPARISON_FIGURES["gamma"],
                              partial(gamma_distribution, gammas)))
    if sum(len(points) for points in _ratio_points(rows).values()) >= 2:
        figures.append(Figure("pruned", COMPARISON_FIGURES["pruned"],
                              partial(accuracy_vs_ratio, rows)))
    for measure in ("params", "flops"):
        figures.append(Figure(measure, COMPARISON_FIGURES[measure],
                              partial(_frontier, rows, measure)))
    figures.append(Figure("curves", COMPARISON_FIGURES["curves"],
                          partial(training_curves, rows, trained)))
    return figures


def _frontier(rows: Rows, measure: str, path: Path) -> Path:
    return frontier(rows, path, measure)


def draw_all(rows: Rows, out: Path, figures: list[Figure] | None = None) -> dict[str, Path]:
    """Draw the figures of :func:`plan` (planned here unless given) into ``out``."""
    figures = plan(rows) if figures is None else figures
    return {figure.key: figure.draw(out / figure.name) for figure in figures}
