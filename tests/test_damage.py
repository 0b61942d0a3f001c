"""Damaged run state is one line: every part of last.pt, metrics.jsonl and config.json that a
crash, an edit or a disk fault can spoil gives exit 2, one line naming the file, no traceback,
and leaves the run's files as they were."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ncslim.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION.is_dir(),
                                reason="Debian's dataset-fashion-mnist is not installed")
TINY = ["--dataset", "fashion-mnist", "--arch", "vgg", "--depth", "11", "--width", "0.0625",
        "--limit-train", "96", "--limit-test", "64", "--batch-size", "32", "--epochs", "1",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "t"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def _checkpoint(change: Callable[[dict], None]) -> Callable[[Path], str]:
    def damage(run: Path) -> str:
        state = torch.load(run / "last.pt", weights_only=True)
        change(state)
        torch.save(state, run / "last.pt")
        return "last.pt"
    return damage


def _text(name: str, text: str | bytes) -> Callable[[Path], str]:
    def damage(run: Path) -> str:
        path = run / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return name
    return damage


def _first_metrics_line(text: str) -> Callable[[Path], str]:
    def damage(run: Path) -> str:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        (run / "metrics.jsonl").write_text("\n".join([text, *lines[1:]]) + "\n")
        return "metrics.jsonl"
    return damage


def _set(*keys: str, value: object) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        for key in keys[:-1]:
            state = state[key]
        state[keys[-1]] = value
    return change


def _drop(*keys: str) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        for key in keys[:-1]:
            state = state[key]
        del state[keys[-1]]
    return change


def _momentum(value: torch.Tensor) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        state["optimizer"]["state"][0]["momentum_buffer"] = value
    return change


DAMAGES = {
    "optimizer without state": _checkpoint(_drop("optimizer", "state")),
    "optimizer a list": _checkpoint(_set("optimizer", value=[1, 2])),
    "momentum of another shape": _checkpoint(_momentum(torch.zeros(3))),
    "param groups emptied": _checkpoint(_set("optimizer", "param_groups", value=[])),
    "scaler a string": _checkpoint(_set("scaler", value="x")),
    "epoch a string": _checkpoint(_set("epoch", value="1")),
    "epoch past the stage": _checkpoint(_set("epoch", value=99)),
    "epoch negative": _checkpoint(_set("epoch", value=-1)),
    "best_acc a string": _checkpoint(_set("best_acc", value="high")),
    "weight of another shape": _checkpoint(_set("model", "state_dict", "features.0.weight",
                                                value=torch.zeros(1))),
    "weight missing": _checkpoint(_drop("model", "state_dict", "features.0.weight")),
    "weight NaN": _checkpoint(_set("model", "state_dict", "features.1.weight",
                                   value=torch.full((4,), float("nan")))),
    "state_dict a list": _checkpoint(_set("model", "state_dict", value=[])),
    "model a number": _checkpoint(_set("model", value=5)),
    "method a list": _checkpoint(_set("method", value=[1])),
    "no format": _checkpoint(_drop("format")),
    "last.pt truncated": lambda run: (run / "last.pt").write_bytes(
        (run / "last.pt").read_bytes()[:200]) and "last.pt",
    "last.pt empty": _text("last.pt", b""),
    "metrics line not JSON": _first_metrics_line("{not json"),
    "metrics line a list": _first_metrics_line("[1, 2]"),
    "metrics line without epoch": _first_metrics_line('{"test_acc": 0.5}'),
    "metrics epoch a string": _first_metrics_line('{"epoch": "1"}'),
    "metrics binary": _text("metrics.jsonl", b"\xff\xfe\x00garbage\n"),
    "metrics emptied": _text("metrics.jsonl", ""),
    "config a list": _text("config.json", "[]"),
    "config binary": _text("config.json", b"\xff\xfe"),
    "config without command": _text("config.json", '{"config": {}}'),
    "config settings a string": _text("config.json", '{"command": "train", "config": "x"}'),
    "config cut short": lambda run: (run / "config.json").write_text(
        (run / "config.json").read_text()[:40]) and "config.json",
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_run_state_is_one_line_and_nothing_changes(finished, tmp_path, capsys, damage):
    run = tmp_path / "t"
    shutil.copytree(finished, run)
    name = damage(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{run / name}" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    json.dumps(err)  # printable
