"""What one run directory holds, as the report's figures need it: both stages' metrics on one
epoch axis, the |gamma| histogram and its pruning cut, the channels kept per layer. A run of
several passes (``ncslim run --passes N``) shows its last pass's training and cut, and the
channels its final model keeps of the original's.

Read by :mod:`ncslim.report` (tables) and :mod:`ncslim.figures` (figures); imports neither.
:func:`metrics_records` is the one reader of ``metrics.jsonl``, for the report and for a
resumed stage (:func:`ncslim.run.checkpoint.read_metrics`) alike.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..sparsity.registry import own_rule_label
from ..util.regular import MiB, open_regular

# ncslim writes a line of about 1 KB an epoch: 128 MiB is over 100,000 epochs, and what is kept
# of it (the parsed records) stays within a few hundred MB
METRICS_LIMIT = 128 * MiB
METRICS_LINE_LIMIT = 1 * MiB
METRICS_FIX = "remove that line, or rerun that run"


class MetricsError(ValueError):
    """A ``metrics.jsonl`` that is not what ncslim writes: ``line`` (its number, counting blank
    lines; None for the whole file) holds ``problem``. Its text is the one line
    ``PATH, line N: PROBLEM; remove that line, or rerun that run``."""

    def __init__(self, path: Path, line: int | None, problem: str, fix: str = METRICS_FIX):
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}; {fix}")


def metrics_records(path: Path, *, torn_tail: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of each line of a ``metrics.jsonl``, in file order: the one reader
    of the file (the report's curves and a resumed stage both read it here).

    Read line by line from a regular file (a FIFO or device is refused unopened) of at most
    :data:`METRICS_LIMIT` bytes, lines of at most :data:`METRICS_LINE_LIMIT`; every record is an
    epoch record (:func:`epoch_record`). With ``torn_tail`` the last line may be cut short (not
    JSON or not UTF-8), as by a crash mid-append, and is left out; anything else that is not a
    record is a :class:`MetricsError` naming the file and line.
    """
    records, pending = [], None  # pending: the error of a line that only the end may excuse
    total = 0
    with open_regular(path, "rb", fix="remove it or rerun that run") as f:
        size = os.fstat(f.fileno()).st_size
        if size > METRICS_LIMIT:
            raise MetricsError(path, None, f"{size:,} bytes, more than the "
                               f"{METRICS_LIMIT // MiB} MiB of epoch records ncslim reads",
                               "is it the right file? remove it or rerun that run")
        for number in itertools.count(1):
            raw = f.readline(METRICS_LINE_LIMIT + 1)
            if not raw:
                break
            total += len(raw)
            if total > METRICS_LIMIT:
                raise MetricsError(path, None, f"more than the {METRICS_LIMIT // MiB} MiB of "
                                   f"epoch records ncslim reads", "is it the right file? "
                                   "remove it or rerun that run")
            if len(raw) > METRICS_LINE_LIMIT:
                raise MetricsError(path, number, f"longer than the {METRICS_LINE_LIMIT // MiB} "
                                   f"MiB an epoch record takes")
            if not raw.strip():
                continue
            if pending is not None:  # a bad line with more lines after it: no torn tail
                raise pending
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                pending = MetricsError(path, number, "not UTF-8 text")
                continue
            except ValueError as err:
                pending = MetricsError(path, number, f"not JSON ({getattr(err, 'msg', err)})")
                continue
            records.append((number, epoch_record(record, path, number)))
    if pending is not None and not torn_tail:
        raise pending
    return records


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl``, by epoch (the last line of an epoch wins, as
    after a resume); ``[]`` where the file is missing. See :func:`metrics_records`."""
    if not path.exists() and not path.is_symlink():
        return []
    records = {record["epoch"]: record for _, record in metrics_records(path)}
    return [records[e] for e in sorted(records)]


PLOTTED = ("test_acc", "train_loss", "train_acc", "gamma_below_1e-2", "lam")  # numbers or null


def epoch_record(record: Any, path: Path, number: int) -> dict[str, Any]:
    """``record`` (line ``number`` of ``path``, parsed) if it is an epoch record of ncslim: a
    JSON object with an epoch number >= 1 whose plotted values are numbers or null; else a
    :class:`MetricsError`."""
    epoch = record.get("epoch") if isinstance(record, dict) else None
    bad = [k for k in PLOTTED if isinstance(record, dict) and k in record and (
        isinstance(record[k], bool) or not isinstance(record[k], (int, float, type(None))))]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1 or bad:
        what = f"{bad[0]!r} is not a number" if bad else "no epoch number"
        raise MetricsError(path, number, f"not an epoch record of ncslim ({what})")
    return record


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


def stage_folder(run_dir: Path, results: dict[str, Any] | None = None) -> Path:
    """The folder that holds a run's ``train/`` and ``finetune/``: the run's own, or for a run
    of several passes its last pass's (``passN/``)."""
    passes = (results or {}).get("passes") or []
    return Path(run_dir) / f"pass{len(passes)}" if len(passes) > 1 else Path(run_dir)


def pruned_share(results: dict[str, Any]) -> float | None:
    """The share of channels that the pruning at the cut of :func:`pruning_cut` removed: for a
    run of several passes, the last pass's share of the channels it started with."""
    passes = results.get("passes") or []
    prune = passes[-1]["prune"] if len(passes) > 1 else results.get("prune", {})
    return prune.get("removed_fraction")


def run_curves(run_dir: Path, results: dict[str, Any] | None = None) -> RunCurves:
    """The metrics of a run directory; a sweep's run keeps ``train/`` one level up."""
    run_dir = stage_folder(run_dir, results)
    train = run_dir / "train" / "metrics.jsonl"
    if not train.exists() and not train.is_symlink():  # (a FIFO there is read, and refused)
        train = run_dir.parent / "train" / "metrics.jsonl"
    acc = (results or {}).get("accuracy", {}).get("pruned")
    return RunCurves(read_metrics(train), read_metrics(run_dir / "finetune" / "metrics.jsonl"), acc)


def pruning_cut(results: dict[str, Any]) -> float | None:
    """The |gamma| at or below which channels were pruned; ``None`` where it is not a |gamma|
    (a method's own rule, VCP's, and a baseline rank their own scores) or nothing was cut."""
    if own_rule_label(results.get("config", {}).get("penalty")) or results.get("baseline"):
        return None
    cut = results.get("prune", {}).get("threshold")
    return cut if isinstance(cut, (int, float)) and cut > 0 else None


def gamma_histogram(results: dict[str, Any], bins_per_decade: int = 8,
                    min_bins: int = 24) -> dict[str, Any] | None:
    """Log-spaced histogram of |gamma| after sparsity training: ``edges``, ``counts``, ``cut``,
    ``exact``, and ``zeros``: the channels a log axis cannot show, those below ``floor``
    (exactly 0 where ``floor`` is 0). ``gamma_values`` that are not a list of numbers are a
    ValueError.

    From ``gamma_values``, over their range (and the cut's) in quarter decades, at least
    ``min_bins`` bins; a run without them falls back to the coarse decade histogram in
    ``results["gamma"]`` (``exact`` False); ``None`` if neither is there.
    """
    cut = pruning_cut(results)
    values = results.get("gamma_values")
    if values is not None and not (isinstance(values, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ValueError("gamma_values is not a list of numbers")
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
