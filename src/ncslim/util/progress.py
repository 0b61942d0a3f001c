"""Progress a person can follow: one bar per epoch on a terminal, a log line every tenth of an
epoch elsewhere, and an estimate for the whole run, not only the epoch.

    progress = RunProgress(total_steps=12 * 312)          # every stage of the run
    with progress.epoch("train", 1, 8, 312, device) as bar:
        for x, y in batches:
            ...
            loss_now = bar.step(loss.detach())            # None until a reading is in
    progress.note(test_acc=0.87, small=0.31, lam=3e-3)    # shown from then on

The loss is read without making the training loop wait for the device (:class:`LossReadout`).
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

import torch

log = logging.getLogger("ncslim")

REFRESH_S = 0.5  # the loss shown is at most this old (plus one refresh on a GPU)
LINES_PER_EPOCH = 10  # without a terminal: a line every tenth of an epoch


class LossReadout:
    """The mean training loss since the last reading, read on the host without a sync.

    On a GPU the running sum is copied to pinned memory asynchronously and read at a later
    refresh, once its CUDA event has passed: the reading lags one refresh and the loop never
    waits. On the CPU there is nothing to wait for and the value is read at once.
    """

    def __init__(self, device: torch.device) -> None:
        self.asynchronous = device.type == "cuda"
        self.total = torch.zeros((), device=device)
        self.count = 0
        self.host = torch.zeros((), pin_memory=self.asynchronous)
        self.in_flight: tuple[Any, int] | None = None  # (CUDA event, steps it covers)
        self.value: float | None = None

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.float()
        self.count += 1

    def read(self) -> float | None:
        """The latest mean loss that has reached the host (``None`` before the first)."""
        if not self.asynchronous:
            if self.count:
                self.value = self.total.item() / self.count  # CPU: no device to wait for
                self.total.zero_()
                self.count = 0
            return self.value
        if self.in_flight is not None and self.in_flight[0].query():
            self.value = self.host.item() / self.in_flight[1]  # pinned host memory: no sync
            self.in_flight = None
        if self.in_flight is None and self.count:
            self.host.copy_(self.total, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.in_flight = (event, self.count)
            self.total.zero_()  # after the copy in stream order
            self.count = 0
        return self.value


class RunProgress:
    """Steps done over all stages of a run, and what the last epoch measured."""

    def __init__(self, total_steps: int, enabled: bool = True) -> None:
        self.total = max(total_steps, 1)
        self.done = 0
        self.enabled = enabled
        self.timed_from = (time.perf_counter(), 0)  # (clock, steps done) when timing began
        self.status: dict[str, float] = {}

    def skip(self, steps: int) -> None:
        """Count steps that a resumed run does not redo (they are not timed)."""
        self.done += steps
        self.timed_from = (time.perf_counter(), self.done)

    def begin_stage(self, **values: float) -> None:
        """A new stage (e.g. fine-tuning): forget what the last stage measured."""
        self.status = dict(values)

    def note(self, **values: float) -> None:
        """What the last epoch measured: ``test_acc``, ``small`` (share of |gamma| < 1e-2), ``lam``.
        """
        self.status.update(values)

    def remaining_s(self) -> float | None:
        """Seconds left in the run at the pace so far (evaluation included), or None."""
        clock, steps = self.timed_from
        timed = self.done - steps
        if timed <= 0:
            return None
        return (time.perf_counter() - clock) / timed * (self.total - self.done)

    def epoch(self, stage: str, epoch: int, epochs: int, steps: int,
              device: torch.device) -> EpochProgress:
        return EpochProgress(self, f"{stage} {epoch}/{epochs}", steps, device)

    def describe(self, loss: float | None) -> str:
        parts = [] if loss is None else [f"loss {loss:.4f}"]
        if "test_acc" in self.status:
            parts.append(f"test {100 * self.status['test_acc']:.2f}%")
        if "small" in self.status:
            parts.append(f"|gamma|<1e-2 {100 * self.status['small']:.1f}%")
        if "lam" in self.status:
            parts.append(f"lam {self.status['lam']:.3g}")
        if "distance" in self.status:  # lam auto: the share still to bring near zero
            parts.append(f"to target {100 * self.status['distance']:+.1f}%")
        remaining = self.remaining_s()
        if remaining is not None:
            parts.append(f"run left {format_seconds(remaining)}")
        return "  ".join(parts)


class EpochProgress:
    """The display of one epoch: a tqdm bar on a terminal, log lines otherwise."""

    def __init__(self, run: RunProgress, label: str, steps: int, device: torch.device) -> None:
        self.run, self.label, self.steps = run, label, max(steps, 1)
        self.readout = LossReadout(device)
        self.step_count = 0
        self.next_refresh = time.perf_counter() + REFRESH_S
        self.next_line = 1  # the tenth of the epoch whose end prints the next line
        self.bar: Any = None
        if run.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=label, leave=False, dynamic_ncols=True,
                            mininterval=REFRESH_S, bar_format="{desc} {percentage:3.0f}%|{bar}| "
                                                              "{n_fmt}/{total_fmt} {postfix}")

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()

    def step(self, loss: torch.Tensor) -> float | None:
        """Count one training step of ``loss`` (detached); the latest loss reading or None."""
        self.readout.add(loss)
        self.step_count += 1
        self.run.done += 1
        if self.bar is not None:
            self.bar.update(1)
        now = time.perf_counter()
        if now < self.next_refresh and self.step_count < self.steps:
            return None
        self.next_refresh = now + REFRESH_S
        value = self.readout.read()
        if self.bar is not None:
            self.bar.set_postfix_str(self.run.describe(value), refresh=False)
        elif self.run.enabled and self.step_count * LINES_PER_EPOCH >= self.next_line * self.steps:
            self.next_line = self.step_count * LINES_PER_EPOCH // self.steps + 1
            log.info("%s %3.0f%%  %s", self.label, 100 * self.step_count / self.steps,
                     self.run.describe(value))
        return value


def format_seconds(seconds: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 7.2 -> '7s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
