from __future__ import annotations

import pytest
import torch
from torch import nn

import ncslim
from ncslim.models.measure import (
    Latency,
    compare_latency,
    latency_warnings,
    measure_latency,
    time_forward,
)


def test_compare_latency_times_every_model_and_restores_modes():
    fast = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    slow = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.Conv2d(64, 64, 3)).eval()
    calls = {"fast": 0, "slow": 0}
    fast.register_forward_hook(lambda *_: calls.__setitem__("fast", calls["fast"] + 1))
    slow.register_forward_hook(lambda *_: calls.__setitem__("slow", calls["slow"] + 1))
    times = compare_latency([fast, slow], (3, 16, 16), batch_size=2, warmup=2, min_repeats=4,
                            max_repeats=4, budget_s=0.0)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert calls == {"fast": 6, "slow": 6}  # warm-up + one pass each per round, in turn
    assert fast.training and not slow.training


def test_measure_latency_is_one_model_of_compare():
    model = ncslim.build_model("vgg", depth=11, width=0.0625)
    assert measure_latency(model, (3, 32, 32), min_repeats=3, max_repeats=3) > 0
    assert model.training


@pytest.mark.parametrize("shape", [(3, 32), (0, 3, 32, 32)])
def test_count_flops_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="input_shape must be"):
        ncslim.count_flops(ncslim.build_model("vgg", depth=11, width=0.0625), shape)


def test_flops_are_twice_the_macs_of_a_linear_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert ncslim.count_flops(model, (3, 2, 2)) == 2 * 12 * 5
    assert torch.is_grad_enabled()


def test_timing_states_its_thread_count_and_restores_the_default(monkeypatch):
    seen = []

    def fake(model, x):
        seen.append(torch.get_num_threads())
        return 0.001

    monkeypatch.setattr("ncslim.models.measure._time_one", fake)
    before = torch.get_num_threads()
    model = ncslim.build_model("vgg", depth=11, width=0.0625)
    (timing,) = time_forward([model], (3, 32, 32), threads=1, min_repeats=4, max_repeats=4)
    assert set(seen) == {1} and timing.threads == 1 and timing.runs == 4
    assert torch.get_num_threads() == before
    (timing,) = time_forward([model], (3, 32, 32), threads=None, min_repeats=3, max_repeats=3)
    assert timing.threads == before


def test_the_spread_says_when_timings_are_not_trustworthy(monkeypatch):
    times = iter([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0] * 2)
    monkeypatch.setattr("ncslim.models.measure._time_one", lambda model, x: next(times) / 1000)
    model = ncslim.build_model("vgg", depth=11, width=0.0625)
    (busy,) = time_forward([model], (3, 32, 32), threads=1, min_repeats=8, max_repeats=8)
    assert busy.median == pytest.approx(1e-3) and busy.q3 == pytest.approx(1.5e-3)
    assert busy.spread == pytest.approx(0.5) and not busy.steady
    row = {"spread": busy.spread}
    (warning,) = latency_warnings({"cpu": {"batch_1": row, "batch_64": {"spread": 0.03}}})
    assert warning.startswith("latency on cpu at batch 1 varied by 50% between runs")
    assert "not trustworthy" in warning
    assert Latency(median=1.0, q1=0.99, q3=1.01, runs=9, threads=1).steady
