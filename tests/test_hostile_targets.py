"""Issue 25, section 5: contradictory settings are refused. Two pruning targets set in one
place (the flags, a preset, a sweep's [base] or grid point) are an error naming both; a target
given over a lower layer's (a flag over a preset) replaces it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncslim.cli import main
from ncslim.config import command_config
from ncslim.run.sweep import expand

TARGETS = {"ratio": st.sampled_from([0.3, 0.5, 0.7]),
           "threshold": st.sampled_from([0.0, 0.01, 0.2]),
           "target_flops": st.sampled_from([0.1, 0.4, 1.0]),
           "target_params": st.sampled_from([0.2, 0.5, 0.9])}
SOURCES = ["flags", "preset", "sweep [base]", "sweep grid point", "flags after a preset"]


@st.composite
def two_targets(draw) -> tuple[dict[str, float], str]:
    names = draw(st.lists(st.sampled_from(sorted(TARGETS)), min_size=2, max_size=2,
                          unique=True))
    return {name: draw(TARGETS[name]) for name in names}, draw(st.sampled_from(SOURCES))


def _configure(tmp: Path, values: dict[str, Any], source: str) -> Any:
    preset = tmp / "p.toml"
    preset.write_text("".join(f"{k} = {v}\n" for k, v in values.items()) if source == "preset"
                      else "ratio = 0.6\n")
    if source.startswith("sweep"):
        spec = {"preset": str(preset), "out": str(tmp / "s"), "seeds": [0], "base": {},
                "grid": [{"epochs": 1}]}
        spec["base" if source == "sweep [base]" else "grid"] = (
            values if source == "sweep [base]" else [values])
        return expand(spec)[0].config
    return command_config("run", str(preset), {} if source == "preset" else values)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(drawn=two_targets())
def test_two_pruning_targets_in_one_place_are_refused(tmp_path, drawn):
    values, source = drawn
    with pytest.raises(ValueError) as err:
        _configure(tmp_path, values, source)
    message = str(err.value)
    assert "two pruning targets" in message and "\n" not in message
    assert all(f"--{name.replace('_', '-')}" in message for name in values)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(TARGETS)), data=st.data())
def test_a_target_given_over_a_presets_target_replaces_it(tmp_path, name, data):
    value = data.draw(TARGETS[name])
    for below in sorted(TARGETS):
        preset = tmp_path / "p.toml"
        preset.write_text(f"{below} = {data.draw(TARGETS[below])}\n")
        assert command_config("run", str(preset), {name: value}).prune_rule().as_dict() == {
            name: value}


def test_two_targets_on_the_command_line_write_nothing(tmp_path, capsys):
    for pair in (["--ratio", "0.3", "--threshold", "0.1"],
                 ["--threshold", "0.1", "--target-flops", "0.5"],
                 ["--ratio", "0.5", "--target-params", "0.4"]):
        assert main(["run", *pair, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "two pruning targets" in err
        assert not (tmp_path / "o").exists()


def test_a_grid_points_target_replaces_the_bases(tmp_path):
    spec = {"preset": "demo", "out": str(tmp_path / "s"), "seeds": [0],
            "base": {"threshold": 0.01},
            "grid": [{"target_flops": 0.4, "penalty": "l1"}, {"penalty": "l1", "lam": 1e-4}]}
    rules = sorted(str(run.config.prune_rule().as_dict()) for run in expand(spec))
    assert rules == ["{'target_flops': 0.4}", "{'threshold': 0.01}"]
