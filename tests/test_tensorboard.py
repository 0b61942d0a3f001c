"""--tensorboard: the event files, read back with TensorBoard's reader, agree with metrics.jsonl."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ncslim
from ncslim.cli import main
from ncslim.config import load_config
from ncslim.data import catalog
from ncslim.report.tensorboard_log import HISTOGRAM, HISTOGRAM_ALL, scalars
from ncslim.run import pipeline
from ncslim.run.train import Trainer
from ncslim.util import distributed

ARCH = ["--arch", "vgg", "--depth", "11", "--width", "0.0625"]
TRAIN = ["--batch-size", "32", "--device", "cpu", "--seed", "0"]
SPARSITY_TAGS = {"sparsity/lam", "sparsity/gamma_below_1e-3", "sparsity/gamma_below_1e-2",
                 "sparsity/gamma_zero", "sparsity/penalty"}
STANDARD_TAGS = {"loss/train", "loss/test", "accuracy/train", "accuracy/test", "optim/lr",
                 "speed/epoch_seconds", "speed/images_per_s"}


@pytest.fixture
def fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Flags of a generated Fashion-MNIST: 64 training and 32 test images of noise."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sums = {}
    for split, n in (("train", 64), ("t10k", 32)):
        arrays = {f"{split}-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28)),
                  f"{split}-labels-idx1-ubyte": rng.integers(0, 10, n)}
        for stem, array in arrays.items():
            raw = (bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
                   + array.astype(np.uint8).tobytes())
            (folder / stem).write_bytes(raw)
            sums[f"{stem}.gz"] = hashlib.md5(raw).hexdigest()
    monkeypatch.setitem(catalog.MD5, "fashion-mnist", sums)
    return ["--dataset", "fashion-mnist", "--data-dir", str(folder)]


def _events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        SCALARS,
        EventAccumulator,
    )

    assert logdir.is_dir(), logdir
    events = EventAccumulator(str(logdir), size_guidance={SCALARS: 0, HISTOGRAMS: 0})
    events.Reload()
    return events


def _metrics(stage: Path) -> list[dict]:
    return [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]


def _check_stage(logdir: Path, lines: list[dict], model: torch.nn.Module) -> None:
    """Every scalar of every metrics line at its epoch, once; a |gamma| histogram per BN layer
    per epoch, the last one of the stage's final model."""
    events = _events(logdir)
    epochs = [line["epoch"] for line in lines]
    tags = set(events.Tags()["scalars"])
    for line in lines:
        assert set(scalars(line)) == tags
    for tag in tags:
        read = events.Scalars(tag)
        assert [e.step for e in read] == epochs, tag
        for event, line in zip(read, lines):
            assert event.value == pytest.approx(scalars(line)[tag], rel=1e-6, abs=1e-12), tag
    bns = {name: m.weight.detach().abs() for name, m in model.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d)}
    assert sorted(events.Tags()["histograms"]) == sorted(
        [f"{HISTOGRAM}/{name}" for name in bns] + [HISTOGRAM_ALL])
    for name, gammas in bns.items():
        read = events.Histograms(f"{HISTOGRAM}/{name}")
        assert [e.step for e in read] == epochs
        assert all(e.histogram_value.num == gammas.numel() for e in read)
        last = read[-1].histogram_value
        assert last.min == pytest.approx(gammas.min().item(), rel=1e-6)
        assert last.max == pytest.approx(gammas.max().item(), rel=1e-6)
        assert last.sum == pytest.approx(gammas.sum().item(), rel=1e-5)
    total = sum(g.numel() for g in bns.values())
    assert [e.histogram_value.num for e in events.Histograms(HISTOGRAM_ALL)] == [total] * len(lines)


def test_run_logs_both_stages_as_metrics_jsonl_has_them(tmp_path, fashion, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setattr("ncslim.models.measure._time_one", lambda model, x: 1e-3)  # no real timing
    out = tmp_path / "run"
    assert main(["run", *fashion, *ARCH, *TRAIN, "--epochs", "2", "--finetune-epochs", "1",
                 "--lam", "auto", "--ratio", "0.5", "--tensorboard", "--out", str(out)]) == 0
    train, finetune = _metrics(out / "train"), _metrics(out / "finetune")
    assert [line["epoch"] for line in train] == [1, 2]
    _check_stage(out / "tensorboard" / "train", train, ncslim.load_model(out / "train/model.pt"))
    _check_stage(out / "tensorboard" / "finetune", finetune, ncslim.load_model(out / "final.pt"))
    tags = set(_events(out / "tensorboard" / "train").Tags()["scalars"])
    # the controller's own numbers come along with lam
    assert STANDARD_TAGS | SPARSITY_TAGS | {"sparsity/target_distance"} <= tags
    lam = _events(out / "tensorboard" / "train").Scalars("sparsity/lam")
    assert [e.value for e in lam] == pytest.approx([line["lam"] for line in train], rel=1e-6)
    assert {"loss/train", "accuracy/test", "optim/lr", "sparsity/lam"} <= set(
        _events(out / "tensorboard" / "finetune").Tags()["scalars"])


def test_a_resumed_stage_shows_each_epoch_once(tmp_path, fashion, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "train"
    argv = ["train", *fashion, *ARCH, *TRAIN, "--epochs", "3", "--penalty", "l1", "--lam",
            "1e-3", "--tensorboard", "--out", str(out)]
    original = Trainer._save

    def killed_before_saving_epoch_2(self, record):
        if record["epoch"] == 2:  # TensorBoard has epoch 2; metrics.jsonl and last.pt do not
            raise KeyboardInterrupt
        original(self, record)

    monkeypatch.setattr(Trainer, "_save", killed_before_saving_epoch_2)
    assert main(argv) == 130
    logdir = out / "tensorboard" / "train"
    assert [e.step for e in _events(logdir).Scalars("loss/train")] == [1, 2]
    assert [line["epoch"] for line in _metrics(out)] == [1]
    # event files sort by the second they were opened in, then by a per-process counter
    # compared as text; a user resumes seconds later, this test might not
    crashed = int(time.time())
    while int(time.time()) == crashed:
        time.sleep(0.05)
    monkeypatch.setattr(Trainer, "_save", original)
    assert main([*argv, "--resume"]) == 0
    lines = _metrics(out)
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # the same logdir, continued
    _check_stage(logdir, lines, ncslim.load_model(out / "model.pt"))  # epoch 2 once, as resumed


@pytest.mark.parametrize("command", ["train", "run", "finetune"])
def test_missing_tensorboard_is_one_line_before_anything_runs(tmp_path, fashion, monkeypatch,
                                                              capsys, command):
    for module in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    argv = [command, *fashion, *TRAIN, "--epochs", "1", "--tensorboard"]
    if command == "finetune":
        model = tmp_path / "model.pt"
        ncslim.save_model(ncslim.build_model("vgg", 10, 1, width=0.0625, depth=11), model)
        argv += ["--checkpoint", str(model)]
    else:
        argv += ARCH
    loaded = []
    monkeypatch.setattr(pipeline, "load_dataset", lambda *a, **k: loaded.append(1))
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"ncslim {command}: error: --tensorboard needs the tensorboard package: "
                   f"pip install 'ncslim[tensorboard]'\n")
    assert not loaded and not out.exists()


def test_only_the_process_that_writes_files_logs(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    cfg = load_config(None, {"tensorboard": True, "out": str(tmp_path / "run")})
    [board] = pipeline.observers(cfg, "finetune")
    assert board.logdir == tmp_path / "run" / "tensorboard" / "finetune"
    assert pipeline.observers(load_config(None, {"out": str(tmp_path)}), "train") == []
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert pipeline.observers(cfg, "train") == []
