"""TensorBoard logs of training (``--tensorboard``): the epoch's metrics and |gamma| histograms.

    ncslim run --config demo --tensorboard --out runs/demo
    tensorboard --logdir runs/demo/tensorboard

A stage writes into ``OUT/tensorboard/STAGE`` (``train``, ``finetune``): TensorBoard shows the
stages of a run as two runs of one logdir, and ``--logdir`` on a folder of run directories (a
sweep's) shows them all. The global step is the epoch, counted from 1 as in ``metrics.jsonl``.

Scalars are the numbers of the epoch's ``metrics.jsonl`` line: ``loss/``, ``accuracy/``,
``optim/lr``, ``speed/`` and ``sparsity/`` (lam, the shares of |gamma| below 1e-3 and 1e-2 and at
zero, and whatever else the sparsity method reports, e.g. the penalty's value or the
controller's distance to its target). Histograms: |gamma| of each BatchNorm layer, keyed by the
layer's name (``abs_gamma/features.1``), and of all layers together (``abs_gamma_all``).

A resumed stage appends a new event file to the same logdir. That file starts with
TensorBoard's purge marker at its first epoch: what an interrupted session logged from that
epoch on (an epoch whose checkpoint was never written) is dropped, so every epoch shows once,
as the run that went on measured it. Epochs trained without ``--tensorboard`` are not filled in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.scales import find_scales

LOGDIR = "tensorboard"  # under the run directory: one subfolder per stage
HISTOGRAM = "abs_gamma"  # tag prefix of the per-layer |gamma| histograms
HISTOGRAM_ALL = "abs_gamma_all"
TAGS = {"train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train",
        "test_acc": "accuracy/test", "lr": "optim/lr", "epoch_time": "speed/epoch_seconds",
        "images_per_s": "speed/images_per_s"}
NOT_SCALARS = ("epoch", "images")  # the step itself; the images an epoch trains on (fixed)


def summary_writer() -> Any:
    """torch's ``SummaryWriter`` class; a one-line error naming the extra when it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install "
                         "'ncslim[tensorboard]'") from None
    return SummaryWriter


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` line, by tag.

    The line's other numbers come from the |gamma| statistics and the sparsity method's
    ``end_epoch()``: they go under ``sparsity/`` with their own key (``sparsity/lam``).
    """
    return {TAGS.get(key, f"sparsity/{key}"): float(value) for key, value in record.items()
            if key not in NOT_SCALARS and isinstance(value, (int, float))
            and not isinstance(value, bool)}


class TensorBoardLog:
    """An epoch observer (:class:`ncslim.run.train.EpochObserver`) that writes one stage's
    logdir."""

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self.writer_class = summary_writer()  # a missing package is named before training
        self.writer: Any = None

    def epoch_end(self, record: dict[str, Any], model: nn.Module) -> None:
        step = int(record["epoch"])
        if self.writer is None:  # this session's first epoch: older events from it on are stale
            self.writer = self.writer_class(str(self.logdir), purge_step=step)
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        scales = find_scales(model)
        with torch.no_grad():  # one copy to the host for every layer together
            flat = torch.cat([g.detach().abs().float().flatten() for g in scales.values()]).cpu()
        parts = flat.split([g.numel() for g in scales.values()])
        for name, values in zip(scales, parts):
            self.writer.add_histogram(f"{HISTOGRAM}/{name}", values.numpy(), step)
        self.writer.add_histogram(HISTOGRAM_ALL, flat.numpy(), step)
        self.writer.flush()  # an epoch logged is on disk, as its metrics.jsonl line is

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
