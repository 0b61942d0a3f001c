"""The figures of ``ncslim report`` (matplotlib, written as PNG).

Rows are those of :func:`ncslim.report.collect`: one per pruned-and-fine-tuned run. Several runs
get comparison figures (one without two points to compare is left out); a single run gets the
figures of that run (:func:`draw_run`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .io import atomic_path  # noqa: E402
from .rundata import (  # noqa: E402
    RunCurves,
    channel_bars,
    gamma_histogram,
    pruned_share,
    read_metrics,
    run_curves,
    stage_folder,
)

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
    """Write the figure atomically (a killed report leaves the previous file whole)."""
    if legend_rows:
        fig.tight_layout(rect=(0, 0.045 * legend_rows, 1, 1))
    else:
        fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png")
    finally:
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
        metrics = stage_folder(first["_dir"], first["_results"]) / "train" / "metrics.jsonl"
        if not metrics.exists():  # a sweep: ratio-R/ beside the shared train/
            metrics = first["_dir"].parent / "train" / "metrics.jsonl"
        if not metrics.exists():
            continue
        records = [r for r in read_metrics(metrics)
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
    return _save(fig, path, legend_rows=-(-len(styles) // 4))


def draw_all(rows: Rows, out: Path) -> dict[str, Path]:
    """The figures of a report: those of the run for one run, else the comparisons."""
    if len(rows) == 1:
        return draw_run(rows[0], out)
    files = {"gamma": gamma_distribution(rows, out / "gamma_distribution.png")}
    if sum(len(points) for points in _ratio_points(rows).values()) >= 2:
        files["pruned"] = accuracy_vs_ratio(rows, out / "accuracy_after_pruning.png")
    files["params"] = frontier(rows, out / "frontier_params.png", "params")
    files["flops"] = frontier(rows, out / "frontier_flops.png", "flops")
    files["curves"] = training_curves(rows, out / "training_curves.png")
    return files


# ----------------------------------------------------------------------------- one run

RUN_FIGURES = {"curves": "run_training_curves.png", "gamma": "run_gamma_histogram.png",
               "channels": "run_channels_kept.png"}
# (title, y label, y scale, [(metrics key, legend label, factor, colour)]); a panel is drawn if
# any of its keys is in the metrics. "share": a percentage that may stay at 0 throughout.
TEST, TRAIN = "tab:blue", "tab:orange"
CURVE_PANELS = [
    ("Accuracy", "accuracy (%)", "linear",
     [("test_acc", "test", 100, TEST), ("train_acc", "train", 100, TRAIN)]),
    # "log" where the values span more than a decade: the first fine-tuning epoch's test loss
    # can be ten times the rest
    ("Loss", "cross-entropy loss", "log",
     [("test_loss", "test", 1, TEST), ("train_loss", "train", 1, TRAIN)]),
    ("Small scaling factors", "share of the channels present (%)", "share",
     [("gamma_below_1e-2", "|gamma| < 1e-2", 100, "tab:purple"),
      ("gamma_below_1e-3", "|gamma| < 1e-3", 100, "tab:brown"),
      ("share_near_zero", "near zero (lam auto)", 100, "tab:red"),
      ("target_share", "the target's share", 100, "black")]),
    ("Sparsity penalty", "penalty term (lam included)", "linear",
     [("penalty", "penalty", 1, "tab:gray")]),
]


def _run_title(row: dict[str, Any]) -> str:
    config = row["_results"]["config"]
    lam = f", lam {_lam_text(row['lam'])}" if row["penalty"] not in ("none", "vcp") else ""
    if row["ratio"] is not None:
        rule = f"ratio {row['ratio']:g}"
    elif row["penalty"] == "vcp":
        rule = "VCP rule"
    elif config.get("target_flops") is not None:
        rule = f"FLOPs target {config['target_flops']:g}"
    elif config.get("target_params") is not None:
        rule = f"parameter target {config['target_params']:g}"
    else:
        rule = f"threshold {config.get('threshold')}"
    depth = f"-{config['depth']}" if config.get("depth") else ""
    passes = f", {row['passes']} passes" if row.get("passes", 1) > 1 else ""
    return (f"{row['setting']}{lam}, {rule}{passes} — {config['arch']}{depth} "
            f"on {config['dataset']}, seed {row['seed']}")


def _lam_text(lam: float | str) -> str:
    return lam if isinstance(lam, str) else f"{lam:g}"


def _top_legend(ax: Any, ncol: int = 4) -> None:
    """Legend in a strip above the axes, so it never hides data."""
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=ncol, fontsize=8, frameon=False)


def _curve_panel(ax: Any, curves: RunCurves, keys: list[tuple[str, str, int, str]]) -> None:
    for key, label, factor, colour in keys:
        xs, ys = curves.series(key, "train")
        ax.plot(xs, [factor * y for y in ys], color=colour, marker="o", ms=3, label=label)
        fx, fy = curves.series(key, "finetune")
        fy = [factor * y for y in fy]
        if key == "test_acc" and curves.acc_pruned is not None and xs:
            drop = 100 * curves.acc_pruned
            ax.plot([xs[-1], xs[-1]], [factor * ys[-1], drop], color="tab:red", linestyle=":")
            ax.plot([xs[-1]], [drop], color="tab:red", marker="v", linestyle="none", zorder=3,
                    label="test, right after pruning")
            fx, fy = [xs[-1], *fx], [drop, *fy]
        ax.plot(fx, fy, color=colour, marker="o", ms=3, label=None if xs else label)


def _spans_a_decade(curves: RunCurves, keys: list[tuple[str, str, int, str]]) -> bool:
    values = [v for key, *_ in keys for stage in ("train", "finetune")
              for v in curves.series(key, stage)[1] if v > 0]
    return bool(values) and max(values) > 10 * min(values)


def _epoch_label(curves: RunCurves) -> str:
    if not curves.finetune:
        return "epoch of sparsity training (no fine-tuning metrics)"
    if not curves.train:
        return "epoch of fine-tuning (no sparsity-training metrics)"
    return f"epoch: sparsity training 1–{curves.boundary}, then fine-tuning (shaded)"


def run_training_curves(row: dict[str, Any], path: Path) -> Path | None:
    """Sparsity training then fine-tuning on one epoch axis, the pruning marked between them."""
    curves = run_curves(row["_dir"], row["_results"])
    panels = [p for p in CURVE_PANELS if any(curves.has(k[0]) for k in p[3])]
    if not (curves.train or curves.finetune) or not panels:
        return None
    cols = 2 if len(panels) > 1 else 1
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows + 0.8), squeeze=False,
                             sharex=True)
    last = curves.boundary + (curves.finetune[-1]["epoch"] if curves.finetune else 0)
    for ax, (title, ylabel, scale, keys) in zip(axes.flat, panels):
        if curves.finetune:
            ax.axvspan(curves.boundary, last + 0.3, color="0.93", zorder=0)
        if curves.train and curves.finetune:
            ax.axvline(curves.boundary, color="0.5", linestyle="--", linewidth=1, zorder=1)
        _curve_panel(ax, curves, keys)
        if keys[0][0] == "penalty" and curves.has("lam"):
            twin = ax.twinx()
            twin.plot(*curves.series("lam", "train"), color="tab:green", marker="s", ms=3)
            twin.set_ylabel("lam", color="tab:green")
            lams = [v for v in curves.series("lam", "train")[1] if v > 0]
            if lams and max(lams) > 10 * min(lams):  # the controller moved it over decades
                twin.set_yscale("log")
            else:
                twin.set_ylim(0, 1.2 * max(lams, default=1.0))
            ax.plot([], [], color="tab:green", marker="s", ms=3, label="lam (right axis)")
        ax.set_title(title, fontsize=10, pad=20)
        ax.set_ylabel(ylabel)
        if scale == "share":
            ax.set_ylim(0, max(5.0, ax.get_ylim()[1]))
        elif scale == "log" and _spans_a_decade(curves, keys):
            ax.set_yscale("log")
            ax.set_ylabel(f"{ylabel} (log scale)")
        ax.tick_params(labelbottom=True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _top_legend(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:len(panels)]):
        if i + cols >= len(panels):  # the lowest panel of its column
            ax.set_xlabel(_epoch_label(curves))
    when = f", pruned after epoch {curves.boundary}" if curves.train else ""
    which = (f"the last of {row['passes']} passes" if row.get("passes", 1) > 1 else "one run")
    fig.suptitle(f"Training of {which}{when}\n{_run_title(row)}", fontsize=11)
    return _save(fig, path)


def run_gamma_histogram(row: dict[str, Any], path: Path) -> Path | None:
    """|gamma| after sparsity training on log-spaced bins, the pruning cut marked."""
    hist = gamma_histogram(row["_results"])
    if hist is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    edges, counts = hist["edges"], hist["counts"]
    ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8, label="channels")
    ax.set_xscale("log")
    if hist["cut"] is not None:
        removed = pruned_share(row["_results"])
        removed = row["channels_removed"] if removed is None else removed
        ax.axvspan(edges[0], hist["cut"], color="tab:red", alpha=0.08, zorder=0)
        ax.axvline(hist["cut"], color="tab:red", linestyle="--",
                   label=f"pruning cut |gamma| ≤ {hist['cut']:.3g} ({removed:.0%} of channels "
                         "pruned)")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("|gamma| after sparsity training (log scale)")
    ax.set_ylabel("channels per bin")
    ax.grid(alpha=0.3)
    _top_legend(ax, ncol=2)
    total = sum(counts) + hist["zeros"]
    bins = "log-spaced bins" if hist["exact"] else "decade bins (no gamma_values in results)"
    hidden = ""
    if hist["zeros"]:
        where = "exactly 0" if hist["floor"] == 0 else f"below {hist['floor']:g}"
        hidden = f"\n{hist['zeros']} channels {where} are not on the log axis"
    ax.set_title(f"BN scaling factors after sparsity training: {total} channels, {bins}{hidden}",
                 fontsize=9, pad=22)
    fig.suptitle(_run_title(row), fontsize=11)
    return _save(fig, path)


def run_channels_kept(row: dict[str, Any], path: Path) -> Path | None:
    """Channels kept and channels before pruning per BN layer, in network order."""
    names, kept, total = channel_bars(row["_results"])
    if not names:
        return None
    n = len(names)
    fig, ax = plt.subplots(figsize=(min(24, max(7, 2 + 0.4 * n)), 5.5))
    x = range(n)
    ax.bar(x, total, color="0.82", label="before pruning")
    ax.bar(x, kept, color="tab:blue", label="kept")
    if n <= 40:
        for i, k in enumerate(kept):
            ax.annotate(str(k), (i, k), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x), names, rotation=90, fontsize=8 if n <= 40 else 6)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("BN layer (network order)")
    ax.set_ylabel("channels")
    ax.grid(alpha=0.3, axis="y")
    _top_legend(ax, ncol=2)
    share = sum(kept) / sum(total)
    ax.set_title(f"Channels kept per layer: {sum(kept)} of {sum(total)} ({share:.0%})",
                 fontsize=10, pad=20)
    fig.suptitle(_run_title(row), fontsize=11)
    return _save(fig, path)


def draw_run(row: dict[str, Any], out: Path) -> dict[str, Path]:
    """The figures of one run (a figure without data in the run is left out)."""
    draw = {"curves": run_training_curves, "gamma": run_gamma_histogram,
            "channels": run_channels_kept}
    files = {key: draw[key](row, out / name) for key, name in RUN_FIGURES.items()}
    return {key: path for key, path in files.items() if path is not None}
