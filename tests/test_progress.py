"""Progress a person can follow: loss, last test accuracy, small gammas, lambda, time left for the
whole run; a bar on a terminal, a line every tenth of an epoch elsewhere."""

from __future__ import annotations

import io
import re

import torch

from ncslim.util import progress as progress_module
from ncslim.util.progress import LossReadout, RunProgress, format_seconds

CPU = torch.device("cpu")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_loss_readout_is_the_mean_since_the_last_reading():
    readout = LossReadout(CPU)
    assert readout.read() is None
    for value in (1.0, 2.0, 3.0):
        readout.add(torch.tensor(value))
    assert readout.read() == 2.0
    readout.add(torch.tensor(5.0))
    assert readout.read() == 5.0
    assert readout.read() == 5.0  # nothing new: the last reading stays


def test_without_a_terminal_a_line_every_tenth_of_an_epoch(monkeypatch, caplog):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    caplog.set_level("INFO", logger="ncslim")
    run = RunProgress(total_steps=200)  # 2 epochs of 100 steps
    run.begin_stage(lam=3e-3)
    run.note(test_acc=0.85, small=0.12)
    readings = 0
    with run.epoch("train", 1, 2, 100, CPU) as bar:
        for step in range(100):
            clock.now += 0.2  # 0.2 s a step: a refresh every 3rd step (REFRESH_S = 0.5)
            readings += bar.step(torch.tensor(float(step))) is not None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    tenths = [int(re.search(r"(\d+)%", line).group(1)) // 10 for line in lines]
    assert tenths == list(range(1, 11))  # one line in each tenth of the epoch
    assert readings >= 30  # the loss is refreshed far more often than every 50 steps
    last = lines[-1]
    assert last.startswith("train 1/2 100%  loss ")
    assert "test 85.00%  |gamma|<1e-2 12.0%  lam 0.003  run left 20s" in last


def test_the_estimate_covers_the_whole_run_and_not_resumed_steps(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    run = RunProgress(total_steps=1000)
    run.skip(400)  # a resumed run: these were done by an earlier process
    assert run.remaining_s() is None
    with run.epoch("finetune", 1, 3, 100, CPU) as bar:
        for _ in range(100):
            clock.now += 0.5
            bar.step(torch.tensor(1.0))
    assert run.done == 500
    assert run.remaining_s() == 250.0  # 0.5 s a step, 500 steps left
    assert format_seconds(250) == "4m10s" and format_seconds(7200) == "2h00m"


def test_on_a_terminal_a_bar_shows_the_same(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(progress_module.sys, "stderr", screen)
    monkeypatch.setattr(progress_module, "REFRESH_S", 0.0)
    run = RunProgress(total_steps=20)
    run.begin_stage(lam=1e-4)
    with run.epoch("train", 1, 1, 20, CPU) as bar:
        for _ in range(20):
            bar.step(torch.tensor(0.25))
        bar.bar.refresh()
    shown = screen.getvalue()
    assert "train 1/1" in shown and "loss 0.2500" in shown and "lam 0.0001" in shown


def test_a_disabled_progress_prints_nothing(caplog):
    caplog.set_level("INFO", logger="ncslim")
    run = RunProgress(total_steps=10, enabled=False)
    with run.epoch("train", 1, 1, 10, CPU) as bar:
        for _ in range(10):
            bar.step(torch.tensor(1.0))
    assert not caplog.records and run.done == 10


def test_lam_auto_shows_lambda_and_the_distance_to_its_target():
    run = RunProgress(total_steps=10)
    run.begin_stage(lam=1e-4)
    run.note(lam=2.5e-3, distance=0.123)
    assert run.describe(0.5) == "loss 0.5000  lam 0.0025  to target +12.3%"
