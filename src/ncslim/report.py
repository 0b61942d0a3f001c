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
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .config import Config
from .io import atomic_path, atomic_write_text

COLUMNS = ["setting", "penalty", "params", "lam", "mode", "ratio", "seed", "acc_sparse",
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
    return name if row["penalty"] == "vcp" else f"{name} {row['mode']}"


def collect(runs_dir: str | Path) -> list[dict[str, Any]]:
    """One row per ``results.json`` below ``runs_dir``."""
    root = Path(runs_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is not a folder; give the folder that holds the runs")
    paths = sorted(root.rglob("results.json"))
    if not paths:
        raise ValueError(f"no results.json below {root}; run `ncslim run` or `ncslim sweep` first")
    rows = []
    for path in paths:
        try:
            rows.append(_row(path, root))
        except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as err:
            what = "not valid JSON" if isinstance(err, json.JSONDecodeError) else (
                f"not what ncslim writes ({type(err).__name__}: {err})")
            raise ValueError(f"{path}: {what}; remove it or rerun that run") from None
    return rows


def _row(path: Path, root: Path) -> dict[str, Any]:
    """The table row of one results.json."""
    results = json.loads(path.read_text(encoding="utf-8"))
    config = results["config"]
    penalty, params = _penalty_label(config)
    latency = next(iter(results["latency"].values()))
    batch = max(latency, key=lambda k: int(k.split("_")[1]))
    row = {
        "penalty": penalty, "params": params, "lam": config["lam"], "mode": config["mode"],
        "ratio": results["prune"].get("ratio"), "rule": _rule(results["prune"], config),
        "seed": config["seed"],
        "acc_sparse": results["accuracy"]["sparse"],
        "acc_pruned": results["accuracy"]["pruned"],
        "acc_finetuned": results["accuracy"]["finetuned"],
        "params_removed": results["params"]["removed"],
        "flops_removed": results["flops"]["removed"],
        "speedup": latency[batch]["speedup"],
        "channels_removed": results["prune"]["removed_fraction"],
        "run": str(path.parent.relative_to(root)),
        "_results": results, "_dir": path.parent,
    }
    row["setting"] = _setting(row) + (" distilled" if config.get("distill") else "")
    return row


def _rule(prune: dict[str, Any], config: dict[str, Any]) -> str:
    """How a run was pruned, as the summary's "ratio" column shows it."""
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
    """Markdown: one line per (setting, lam, ratio), mean ± std over seeds, in percent."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        lam = row["lam"] if row["penalty"] not in ("none", "vcp") else 0.0
        groups[(row["setting"], lam, row["rule"])].append(row)
    head = ("| setting | lam | ratio | seeds | acc. sparse | acc. pruned | acc. fine-tuned "
            "| params removed | FLOPs removed | speed-up |")
    lines = [head, "|" + "---|" * 10]
    for (setting, lam, rule), group in sorted(
            groups.items(), key=lambda kv: (kv[1][0]["ratio"] or 0, kv[0][2], kv[0][0])):
        cells = [_mean_std([r[k] for r in group]) for k in
                 ("acc_sparse", "acc_pruned", "acc_finetuned", "params_removed", "flops_removed")]
        speedup = statistics.mean(r["speedup"] for r in group)
        lam_text = "—" if not lam else lam if isinstance(lam, str) else f"{lam:g}"
        lines.append(f"| {setting} | {lam_text} | {rule} | {len(group)} | "
                     + " | ".join(cells) + f" | x{speedup:.2f} |")
    return "\n".join(lines) + "\n"


def report(runs_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Table and figures for every run below ``runs_dir``; returns the files written."""
    rows = collect(runs_dir)
    out = Path(out) if out is not None else Path(runs_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "markdown": out / "summary.md"}
    write_csv(rows, files["csv"])
    atomic_write_text(files["markdown"], summary_table(rows))
    from . import figures

    files.update(figures.draw_all(rows, out))
    return files
