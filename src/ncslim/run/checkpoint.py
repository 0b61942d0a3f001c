"""A stage's run files read back for ``--resume``: ``last.pt`` and ``metrics.jsonl``, checked so
that an edited or damaged file is one line naming it, never a traceback or a silent resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..models.files import CHECKPOINT_FORMAT, safe_load
from ..report.rundata import MetricsError, metrics_records
from ..util.files import atomic_write_text


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    state = safe_load(path, device)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an ncslim training checkpoint (last.pt of a run)")
    missing = {"epoch", "best_acc", "model", "optimizer", "scaler"} - set(state)
    if missing or not isinstance(state["model"], dict):
        raise ValueError(f"{path}: an incomplete training checkpoint (lacks "
                         f"{', '.join(sorted(missing)) or 'the model'}); start the run afresh in "
                         f"another --out")
    optimizer = state["optimizer"]
    wrong = [name for name, ok in (
        ("epoch", isinstance(state["epoch"], int) and state["epoch"] >= 0),
        ("best_acc", isinstance(state["best_acc"], (int, float))),
        ("model", isinstance(state["model"].get("state_dict"), dict)),
        ("optimizer", isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
         and isinstance(optimizer.get("param_groups"), list)),
        ("scaler", isinstance(state["scaler"], dict)),
        ("method", isinstance(state.get("method", {}), (dict, type(None))))) if not ok]
    if wrong:
        raise damaged(path, f"its {', '.join(wrong)} part(s) are not what ncslim writes")
    return state


def damaged(path: Path, what: str) -> ValueError:
    """The one-line error for a run file that was edited or damaged."""
    return ValueError(f"{path}: {what}; the file was edited or damaged, so the run cannot be "
                      f"resumed safely: start it afresh in another --out")


def read_metrics(path: Path, keep: int, rewrite: bool = True) -> list[dict[str, Any]]:
    """The metrics of the first ``keep`` epochs; later lines (written before a crash) go
    (from the file too, when ``rewrite``).

    Read by :func:`ncslim.report.rundata.metrics_records`, the one reader of the file, with a
    last line cut short by a crash mid-append left out (it is one of those later lines); any
    other line that is not an epoch record is damage, named by file and line.
    """
    if not path.exists() and not path.is_symlink():
        return []
    try:
        records = [record for _, record in metrics_records(path, torn_tail=True)]
    except MetricsError as err:
        where = f"line {err.line} is " if err.line is not None else "it is "
        raise damaged(path, where + err.problem) from None
    records = [r for r in records if r["epoch"] <= keep]
    if [r["epoch"] for r in records] != list(range(1, keep + 1)):
        raise damaged(path, f"it does not hold the records of epochs 1-{keep}, which last.pt "
                            f"says are done")
    if rewrite:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def check_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Every per-parameter buffer (momentum) has its parameter's shape."""
    for param, buffers in opt.state.items():
        for name, value in buffers.items():
            if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                raise ValueError(f"optimizer {name} of shape {tuple(value.shape)} for a "
                                 f"parameter of shape {tuple(param.shape)}")
