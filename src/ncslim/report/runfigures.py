"""The figures of one run in ``ncslim report``: its training curves, the histogram of its
final |gamma| and the channels each layer kept (matplotlib, written as PNG)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..sparsity.registry import own_rule_label, takes_lambda  # noqa: E402
from .figurebase import Figure, checked, is_number, save_figure  # noqa: E402
from .rundata import (  # noqa: E402
    RunCurves,
    channel_bars,
    gamma_histogram,
    pruned_share,
    run_curves,
)

RUN_FIGURES = {"curves": "run_training_curves.png", "gamma": "run_gamma_histogram.png",
               "channels": "run_channels_kept.png"}
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
    lam = f", lam {_lam_text(row['lam'])}" if takes_lambda(row["penalty"]) else ""
    if row["ratio"] is not None:
        rule = f"ratio {row['ratio']:g}"
    elif own_rule_label(row["penalty"]):
        rule = own_rule_label(row["penalty"])
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


def _panels(curves: RunCurves) -> list[Any]:
    """The panels of :data:`CURVE_PANELS` that ``curves`` has data for."""
    if not (curves.train or curves.finetune):
        return []
    return [p for p in CURVE_PANELS if any(curves.has(k[0]) for k in p[3])]


def run_training_curves(row: dict[str, Any], curves: RunCurves, title: str, path: Path) -> Path:
    """Sparsity training then fine-tuning on one epoch axis, the pruning marked between them
    (``curves``: :func:`ncslim.rundata.run_curves` of the run, with data for a panel)."""
    panels = _panels(curves)
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
    fig.suptitle(f"Training of {which}{when}\n{title}", fontsize=11)
    return save_figure(fig, path)


def _histogram(row: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`ncslim.rundata.gamma_histogram` of the run, with ``removed`` (the share of
    channels its cut removed) where there is a cut; checked to be drawable."""
    hist = gamma_histogram(row["_results"])
    if hist is None:
        return None
    counts, edges = hist["counts"], hist["edges"]
    if not (isinstance(counts, list) and isinstance(edges, list)
            and all(is_number(c) for c in counts) and all(is_number(e) for e in edges)
            and len(edges) == len(counts) + 1 and is_number(hist["zeros"])):
        raise ValueError("its |gamma| histogram is not one")
    if hist["cut"] is not None:
        removed = pruned_share(row["_results"])
        hist["removed"] = row["channels_removed"] if removed is None else removed
        if not is_number(hist["removed"]):
            raise ValueError("its share of channels removed is not a number")
    return hist


def run_gamma_histogram(hist: dict[str, Any], title: str, path: Path) -> Path:
    """|gamma| after sparsity training on log-spaced bins, the pruning cut marked (``hist``:
    :func:`_histogram` of the run)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    edges, counts = hist["edges"], hist["counts"]
    ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8, label="channels")
    ax.set_xscale("log")
    if hist["cut"] is not None:
        removed = hist["removed"]
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
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def _bars(row: dict[str, Any]) -> tuple[list[str], list[int], list[int]] | None:
    """:func:`ncslim.rundata.channel_bars` of the run, checked; None where it has no layers."""
    names, kept, total = channel_bars(row["_results"])
    if not names:
        return None
    if not (all(isinstance(name, str) for name in names)
            and all(is_number(k) and is_number(t) and 0 <= k <= t for k, t in zip(kept, total))
            and sum(total) > 0):
        raise ValueError("its channels per layer are not counts")
    return names, kept, total


def run_channels_kept(bars: tuple[list[str], list[int], list[int]], title: str,
                      path: Path) -> Path:
    """Channels kept and channels before pruning per BN layer, in network order (``bars``:
    :func:`_bars` of the run)."""
    names, kept, total = bars
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
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plan_run(row: dict[str, Any]) -> list[Figure]:
    """The figures of one run (a figure without data in the run is left out), every file they
    draw from read and checked."""
    title = checked(row, partial(_run_title, row))
    curves = run_curves(row["_dir"], row["_results"])  # its metrics.jsonl: named if bad
    hist = checked(row, partial(_histogram, row))
    bars = checked(row, partial(_bars, row))
    figures = []
    if _panels(curves):
        figures.append(Figure("curves", RUN_FIGURES["curves"],
                              partial(run_training_curves, row, curves, title)))
    if hist is not None:
        figures.append(Figure("gamma", RUN_FIGURES["gamma"],
                              partial(run_gamma_histogram, hist, title)))
    if bars is not None:
        figures.append(Figure("channels", RUN_FIGURES["channels"],
                              partial(run_channels_kept, bars, title)))
    return figures
