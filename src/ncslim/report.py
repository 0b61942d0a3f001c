"""Reports: every ``results.json`` below a folder in one table, and the comparison figures.

    ncslim report runs/sweep-fashion-vgg19 --out docs/results

Writes ``results.csv`` (one row per run), ``summary.md`` (mean ± std over seeds per setting) and
PNG figures: the |gamma| distribution after sparsity training per penalty, accuracy right after
pruning versus the prune ratio, accuracy after fine-tuning versus parameters and FLOPs kept, and
the training curves. A comparison with fewer than two points is not drawn.

A report of a single run draws that run instead: the training curves of both stages on one epoch
axis, the |gamma| histogram after sparsity training with the pruning cut, and the channels kept
per layer. The series behind them come from :func:`run_curves`, :func:`gamma_histogram` and
:func:`channel_bars`.

A run of several passes (``ncslim run --passes N``) is one row, its final model against the
original, with ``passes`` in both tables; its figures show its last pass's training and cut.
``summary.md`` then lists every pass of every such run below the table. The ``results.json``
each pass folder holds is that pass's own and is not a row.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .config import Config
from .io import atomic_path, atomic_write_text
from .liverun import refuse_near_live_run
from .regular import check_regular, read_text

COLUMNS = ["setting", "penalty", "params", "lam", "mode", "ratio", "passes", "seed", "acc_sparse",
           "acc_pruned", "acc_finetuned", "params_removed", "flops_removed", "speedup",
           "channels_removed", "run"]


def _penalty_label(config: dict[str, Any]) -> tuple[str, str]:
    """(penalty, its parameters as text, defaults filled in) for a run's config."""
    cfg = Config(**config)
    if cfg.penalty == "vcp":
        kl = "1/N" if cfg.vcp_kl_weight is None else f"{cfg.vcp_kl_weight:g}"
        return "vcp", f"kl={kl} sigma0={cfg.vcp_sigma_init:g}"
    params = cfg.penalty_params()
    return config["penalty"], " ".join(f"{k}={v:g}" for k, v in params.items())


def _setting(row: dict[str, Any]) -> str:
    if row["penalty"] == "none":
        return "none"
    name = f"{row['penalty']}({row['params']})" if row["params"] else row["penalty"]
    return name if row["penalty"] == "vcp" or row.get("baseline") else f"{name} {row['mode']}"


def collect(runs_dir: str | Path) -> list[dict[str, Any]]:
    """One row per ``results.json`` below ``runs_dir``."""
    root = Path(runs_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is not a folder; give the folder that holds the runs")
    # every entry so named, also a link that leads nowhere (rglob would pass over it): each is
    # read or refused, never silently left out
    paths = sorted(Path(where) / "results.json" for where, folders, files in os.walk(root)
                   if "results.json" in files or "results.json" in folders)
    if not paths:
        raise ValueError(f"no results.json below {root}; run `ncslim run` or `ncslim sweep` first")
    rows = []
    for path in paths:
        check_regular(path, fix="remove it or rerun that run")  # a FIFO would hang the read
        try:
            row = _row(path, root)
            if row is not None:
                rows.append(row)
        except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as err:
            what = (f", line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})"
                    if isinstance(err, json.JSONDecodeError) else
                    f": not what ncslim writes ({type(err).__name__}: {err})")
            raise ValueError(f"{path}{what}; remove it or rerun that run") from None
    if not rows:
        raise ValueError(f"below {root} are only the results of single passes of unfinished runs "
                         f"of several passes; finish them with ncslim run ... --resume")
    return rows


def _row(path: Path, root: Path) -> dict[str, Any] | None:
    """The table row of one results.json; None for one pass of a run of several (its
    ``passN/results.json``: the run's own results.json is the row)."""
    results = json.loads(read_text(path))
    config = results["config"]
    if config.get("passes", 1) > 1 and "passes" not in results:
        return None
    penalty, params = _penalty_label(config)
    baseline = results.get("baseline")  # another library's method in our harness
    if baseline:
        penalty, params = baseline["key"], f"reg={baseline['reg']:g}"
    latency = next(iter(results["latency"].values()))
    batch = max(latency, key=lambda k: int(k.split("_")[1]))
    row = {
        "penalty": penalty, "params": params, "lam": config["lam"], "mode": config["mode"],
        "ratio": results["prune"].get("ratio"), "rule": _rule(results["prune"], config),
        "passes": len(results.get("passes") or [None]), "seed": config["seed"],
        "acc_sparse": results["accuracy"]["sparse"],
        "acc_pruned": results["accuracy"]["pruned"],
        "acc_finetuned": results["accuracy"]["finetuned"],
        "params_removed": results["params"]["removed"],
        "flops_removed": results["flops"]["removed"],
        "speedup": latency[batch]["speedup"],
        "channels_removed": results["prune"]["removed_fraction"],
        "run": str(path.parent.relative_to(root)), "baseline": bool(baseline),
        "_results": results, "_dir": path.parent,
    }
    row["setting"] = _setting(row) + (" distilled" if config.get("distill") else "")
    return row


def _rule(prune: dict[str, Any], config: dict[str, Any]) -> str:
    """How a run was pruned, as the summary's "ratio" column shows it; "per pass" where a run of
    several passes applied it to each (``pass_target = "each"``)."""
    rule = _one_rule(prune, config)
    if prune.get("ratio") is not None and prune.get("ranking", "global") != "global":
        rule = f"{rule} by {prune['ranking']}"  # (records before the ranking: global)
    if config.get("passes", 1) > 1 and config.get("pass_target") == "each":
        return f"{rule} per pass"
    return rule


def _one_rule(prune: dict[str, Any], config: dict[str, Any]) -> str:
    if prune.get("ratio") is not None:
        return f"{prune['ratio']:g}"
    if config.get("penalty") == "vcp":
        return "VCP rule"
    if config.get("threshold") is not None:
        return f"|gamma| <= {config['threshold']:g}"
    if config.get("target_flops") is not None:
        return f"FLOPs <= {config['target_flops']:g}"
    if config.get("target_params") is not None:
        return f"params <= {config['target_params']:g}"
    return "—"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (setting, lam, ratio, passes), mean ± std over seeds, in percent;
    below it, with runs of several passes, each of their passes."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        lam = row["lam"] if row["penalty"] not in ("none", "vcp") else 0.0
        groups[(row["setting"], lam, row["rule"], row["passes"])].append(row)
    head = ("| setting | lam | ratio | passes | seeds | acc. sparse | acc. pruned "
            "| acc. fine-tuned | params removed | FLOPs removed | speed-up |")
    lines = [head, "|" + "---|" * 11]
    for (setting, lam, rule, passes), group in sorted(
            groups.items(), key=lambda kv: (kv[1][0]["ratio"] or 0, kv[0][2], kv[0][3],
                                            kv[0][0])):
        cells = [_mean_std([r[k] for r in group]) for k in
                 ("acc_sparse", "acc_pruned", "acc_finetuned", "params_removed", "flops_removed")]
        speedup = statistics.mean(r["speedup"] for r in group)
        lam_text = "—" if not lam else lam if isinstance(lam, str) else f"{lam:g}"
        lines.append(f"| {setting} | {lam_text} | {rule} | {passes} | {len(group)} | "
                     + " | ".join(cells) + f" | x{speedup:.2f} |")
    return "\n".join(lines + _pass_table(rows)) + "\n"


def _pass_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: each pass of each run of several passes (none without such runs), the
    sizes against the run's original model."""
    lines = []
    for row in rows:
        results = row["_results"]
        for entry in results.get("passes") or []:
            acc = entry["accuracy"]
            cells = [100 * acc[k] for k in ("sparse", "pruned", "finetuned")] + [
                100 * (1 - entry[k] / results[k]["original"]) for k in ("params", "flops")]
            lines.append(f"| {row['run']} | {entry['pass']} | "
                         + " | ".join(f"{c:.2f}" for c in cells) + " |")
    if not lines:
        return []
    return ["", "Each pass (parameters and FLOPs removed: of the original model)", "",
            "| run | pass | acc. sparse | acc. pruned | acc. fine-tuned | params removed "
            "| FLOPs removed |", "|" + "---|" * 7, *lines]


def report(runs_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Table and figures for every run below ``runs_dir``; returns the files written."""
    out = Path(out) if out is not None else Path(runs_dir) / "report"
    refuse_near_live_run(out)  # never into a run in progress (its train/, say)
    rows = collect(runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "markdown": out / "summary.md"}
    write_csv(rows, files["csv"])
    atomic_write_text(files["markdown"], summary_table(rows))
    from . import figures

    files.update(figures.draw_all(rows, out))
    return files
