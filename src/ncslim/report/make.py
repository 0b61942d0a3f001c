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

Everything is read and checked before a file is written (every ``results.json``, every
``metrics.jsonl`` a figure draws, each within a size limit): bad input is one line, exit 2, and
``--out`` as it was. A report replaces only files that a report wrote (:func:`refuse_foreign`):
a ``summary.md``, ``results.csv`` or figure of the user's own at one of its names is refused.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..config import Config
from ..sparsity.registry import find_method, own_rule_label, takes_lambda
from ..util.files import atomic_path, atomic_write_text
from ..util.liverun import refuse_near_live_run
from ..util.regular import JSON_RECORD_LIMIT, open_regular, read_bytes

COLUMNS = ["setting", "penalty", "params", "lam", "mode", "ratio", "passes", "seed", "acc_sparse",
           "acc_pruned", "acc_finetuned", "params_removed", "flops_removed", "speedup",
           "channels_removed", "run"]


def _penalty_label(config: dict[str, Any]) -> tuple[str, str]:
    """(penalty, its parameters as text, defaults filled in) for a run's config."""
    cfg = Config(**config)
    spec = find_method(cfg.penalty)
    if spec is not None and spec.describe is not None:
        return cfg.penalty, spec.describe(cfg)
    params = cfg.penalty_params()
    return config["penalty"], " ".join(f"{k}={v:g}" for k, v in params.items())


def _setting(row: dict[str, Any]) -> str:
    if row["penalty"] == "none":
        return "none"
    name = f"{row['penalty']}({row['params']})" if row["params"] else row["penalty"]
    if not takes_lambda(row["penalty"]) or row.get("baseline"):
        return name
    return f"{name} {row['mode']}"


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
        # a FIFO is refused unopened (it would hang the read), a file over the limit unread
        data = read_bytes(path, limit=JSON_RECORD_LIMIT, fix="remove it or rerun that run")
        try:
            row = _row(json.loads(data.decode("utf-8")), path, root)
            if row is not None:
                summary_table([row])  # every value the table shows, checked before any write
                rows.append(row)
        except (ValueError, KeyError, TypeError, AttributeError, StopIteration,
                ZeroDivisionError) as err:
            what = (f", line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})"
                    if isinstance(err, json.JSONDecodeError) else
                    f": not what ncslim writes ({type(err).__name__}: {err})")
            raise ValueError(f"{path}{what}; remove it or rerun that run") from None
    if not rows:
        raise ValueError(f"below {root} are only the results of single passes of unfinished runs "
                         f"of several passes; finish them with ncslim run ... --resume")
    return rows


NUMBERS = ("acc_sparse", "acc_pruned", "acc_finetuned", "params_removed", "flops_removed",
           "speedup", "channels_removed")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row(results: Any, path: Path, root: Path) -> dict[str, Any] | None:
    """The table row of one results.json (``results``, read from ``path``); None for one pass
    of a run of several (its ``passN/results.json``: the run's own results.json is the row).
    A value the table or figures cannot show is a TypeError (or KeyError, ...)."""
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
    bad = [key for key in NUMBERS if not _is_number(row[key])]
    if not (row["ratio"] is None or _is_number(row["ratio"])):
        bad.append("ratio")
    if not (isinstance(row["lam"], str) or _is_number(row["lam"])):
        bad.append("lam")
    if isinstance(row["seed"], bool) or not isinstance(row["seed"], int):
        bad.append("seed")
    if bad:
        raise TypeError(f"its {bad[0]} is not a number")
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
    own = own_rule_label(config.get("penalty"))
    if own is not None:
        return own
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
        lam = row["lam"] if takes_lambda(row["penalty"]) else 0.0
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


CSV_HEAD = "setting,penalty,"  # how every results.csv of a report begins (its column names)
SUMMARY_HEAD = "| setting | lam |"  # how every summary.md of a report begins (its table's head)
SNIFF = 64 * 1024  # what is read of a file at an output name to tell whose it is


def _png_software(head: bytes) -> str | None:
    """The ``Software`` text chunk of a PNG that begins with ``head``; None if it has none
    before its image data (or is no PNG)."""
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    at = 8
    while at + 8 <= len(head):
        length, kind = int.from_bytes(head[at:at + 4], "big"), head[at + 4:at + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"tEXt":
            key, _, value = head[at + 8:at + 8 + length].partition(b"\0")
            if key == b"Software":
                return value.decode("latin-1")
        at += 12 + length
    return None


def _written_by_report(path: Path, older_figures: bool = False) -> bool:
    """Whether ``path`` is missing or a file a report wrote (see :func:`refuse_foreign`)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True
    if not stat.S_ISREG(mode):  # a link, a FIFO, a folder: never what a report writes
        return False
    with open_regular(path, "rb") as f:
        head = f.read(SNIFF)
    if path.suffix == ".png":
        from .figurebase import SOFTWARE

        software = _png_software(head) or ""
        return software == SOFTWARE or (older_figures and software.startswith("Matplotlib"))
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    return first.startswith(CSV_HEAD if path.suffix == ".csv" else SUMMARY_HEAD)


def refuse_foreign(out: Path, names: list[str]) -> None:
    """Refuse, in one line naming it, a file at one of the output ``names`` in ``out`` that a
    report did not write: the report would replace it.

    A report's files say so themselves, so no list of them is kept that could go stale: its
    ``results.csv`` begins with its column names (``setting,penalty,...``), its ``summary.md``
    with its table's head (``| setting | lam | ...``), and each figure is a PNG whose text chunk
    ``Software`` is ``ncslim report``. Figures of reports from before that chunk (``Software:
    Matplotlib ...``) count as a report's where the folder's ``results.csv`` is a report's. A
    link, FIFO or folder at an output name is never a report's. A report regenerated into its
    own earlier folder therefore replaces its own files and nothing else.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; choose another --out")
    older_figures = (out / "results.csv").is_file() and _written_by_report(out / "results.csv")
    for name in names:
        if not _written_by_report(out / name, older_figures):
            raise ValueError(f"{out / name}: not written by ncslim report, and the report would "
                             f"replace it; choose another --out, or remove the file")


def report(runs_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Table and figures for every run below ``runs_dir``; returns the files written.

    Every file read is read and checked first, and the files at the output names are checked
    to be a report's own (:func:`refuse_foreign`): only then is anything written."""
    out = Path(out) if out is not None else Path(runs_dir) / "report"
    refuse_near_live_run(out)  # never into a run in progress (its train/, say)
    rows = collect(runs_dir)  # every results.json, checked
    from . import figures

    table = summary_table(rows)
    planned = figures.plan(rows)  # every metrics.jsonl a figure draws, read and checked
    files = {"csv": out / "results.csv", "markdown": out / "summary.md"}
    refuse_foreign(out, [path.name for path in files.values()] + [f.name for f in planned])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, files["csv"])
    atomic_write_text(files["markdown"], table)
    files.update(figures.draw_all(rows, out, planned))
    return files
