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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config

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
    paths = sorted(root.rglob("results.json"))
    if not paths:
        raise ValueError(f"no results.json below {root}; run `ncslim run` or `ncslim sweep` first")
    rows = []
    for path in paths:
        results = json.loads(path.read_text())
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
        row["setting"] = _setting(row)
        rows.append(row)
    return rows


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
    return "—"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl``, by epoch (the last line of an epoch wins, as
    after a resume); ``[]`` where the file is missing."""
    if not path.is_file():
        return []
    records = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["epoch"]] = record
    return [records[e] for e in sorted(records)]


@dataclass
class RunCurves:
    """Both stages of one run on one epoch axis: fine-tuning epoch e is drawn at boundary + e."""

    train: list[dict[str, Any]] = field(default_factory=list)
    finetune: list[dict[str, Any]] = field(default_factory=list)
    acc_pruned: float | None = None  # test accuracy right after pruning, drawn at the boundary

    @property
    def boundary(self) -> int:
        """The last epoch of sparsity training (where the run was pruned)."""
        return self.train[-1]["epoch"] if self.train else 0

    def series(self, key: str, stage: str) -> tuple[list[int], list[float]]:
        """(epochs on the shared axis, values) of ``key`` in ``stage`` ("train" or "finetune");
        records without it are skipped."""
        records, offset = (self.train, 0) if stage == "train" else (self.finetune, self.boundary)
        points = [(offset + r["epoch"], r[key]) for r in records if r.get(key) is not None]
        return [x for x, _ in points], [y for _, y in points]

    def has(self, key: str) -> bool:
        return any(r.get(key) is not None for r in self.train + self.finetune)


def run_curves(run_dir: Path, results: dict[str, Any] | None = None) -> RunCurves:
    """The metrics of a run directory; a sweep's run keeps ``train/`` one level up."""
    run_dir = Path(run_dir)
    train = run_dir / "train" / "metrics.jsonl"
    if not train.is_file():
        train = run_dir.parent / "train" / "metrics.jsonl"
    acc = (results or {}).get("accuracy", {}).get("pruned")
    return RunCurves(read_metrics(train), read_metrics(run_dir / "finetune" / "metrics.jsonl"), acc)


def pruning_cut(results: dict[str, Any]) -> float | None:
    """The |gamma| at or below which channels were pruned; ``None`` where it is not a |gamma|
    (VCP ranks its own scores) or nothing was cut."""
    if results.get("config", {}).get("penalty") == "vcp":
        return None
    cut = results.get("prune", {}).get("threshold")
    return cut if isinstance(cut, (int, float)) and cut > 0 else None


def gamma_histogram(results: dict[str, Any], bins_per_decade: int = 8,
                    min_bins: int = 24) -> dict[str, Any] | None:
    """Log-spaced histogram of |gamma| after sparsity training: ``edges``, ``counts``, ``cut``,
    ``exact``, and ``zeros``: the channels a log axis cannot show, those below ``floor``
    (exactly 0 where ``floor`` is 0).

    From ``gamma_values``, over their range (and the cut's) in quarter decades, at least
    ``min_bins`` bins; a run without them falls back to the coarse decade histogram in
    ``results["gamma"]`` (``exact`` False); ``None`` if neither is there.
    """
    cut = pruning_cut(results)
    values = results.get("gamma_values")
    if values:
        data = np.abs(np.asarray(values, dtype=float))
        positive = data[data > 0]
        extent = np.log10([*positive.tolist(), *([cut] if cut else [])] or [1.0])
        low, high = np.floor(4 * extent.min()) / 4, np.ceil(4 * extent.max()) / 4
        high = max(high, low + 0.25)
        count = max(min_bins, int(round(bins_per_decade * (high - low))))
        edges = np.logspace(low, high, count + 1)
        counts, _ = np.histogram(positive, bins=edges)
        return {"edges": edges.tolist(), "counts": counts.tolist(),
                "zeros": int((data == 0).sum()), "floor": 0.0, "cut": cut, "exact": True}
    coarse = results.get("gamma", {}).get("gamma_hist")
    if not coarse:
        return None
    # counts[i] is [edges[i], edges[i + 1]), the last one [edges[-1], inf): drawn a decade wide
    edges, counts = coarse["edges"], coarse["counts"]
    return {"edges": [*edges[1:], 10 * edges[-1]], "counts": counts[1:], "zeros": counts[0],
            "floor": edges[1], "cut": cut, "exact": False}


def channel_bars(results: dict[str, Any]) -> tuple[list[str], list[int], list[int]]:
    """(layer names, channels kept, channels before pruning), in network order."""
    layers = results.get("channels", [])
    return ([c["layer"] for c in layers], [c["kept"] for c in layers],
            [c["total"] for c in layers])


def report(runs_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Table and figures for every run below ``runs_dir``; returns the files written."""
    rows = collect(runs_dir)
    out = Path(out) if out is not None else Path(runs_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "markdown": out / "summary.md"}
    write_csv(rows, files["csv"])
    files["markdown"].write_text(summary_table(rows))
    from . import figures

    files.update(figures.draw_all(rows, out))
    return files
