"""Fine-tuning by knowledge distillation (``--distill``) and its schedule (``--finetune-schedule``):
the loss against hand and brute-force computations, the teacher left alone, and both commands
end to end on tiny Fashion-MNIST-shaped data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_distributed import TINY as DDP_TINY
from test_distributed import max_difference, ncslim_run, needs_fashion
from test_report import write_fashion
from test_sparsity import tiny_data

from ncslim.cli import main
from ncslim.config import command_config, load_config
from ncslim.models import build_model
from ncslim.models.files import load_model, save_model
from ncslim.report import collect
from ncslim.run import pipeline
from ncslim.run.distill import Distillation, kd_loss
from ncslim.run.sweep import expand
from ncslim.run.train import Trainer

TINY = ["--dataset", "fashion-mnist", "--batch-size", "32", "--device", "cpu"]
ARCH = ["--arch", "vgg", "--depth", "11", "--width", "0.0625"]


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_kd_loss_against_a_hand_computation():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
    labels, temperature, weight = [1, 2], 2.0, 0.7
    ce = sum(-math.log(_softmax(s)[y]) for s, y in zip(student, labels)) / 2
    kl = 0.0
    for s, t in zip(student, teacher):
        p_s = _softmax([v / temperature for v in s])
        p_t = _softmax([v / temperature for v in t])
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)) / 2
    expected = (1 - weight) * ce + weight * temperature ** 2 * kl
    loss = kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels),
                   temperature, weight)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected, rel=1e-6)


def _brute_force(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float,
                 weight: float) -> torch.Tensor:
    """The loss written out with exp and log, no library loss."""
    def softmax(v: torch.Tensor) -> torch.Tensor:
        return torch.exp(v) / torch.exp(v).sum(1, keepdim=True)

    p_s, p_t = softmax(s / temperature), softmax(t / temperature)
    kl = (p_t * (torch.log(p_t) - torch.log(p_s))).sum(1).mean()
    ce = -torch.log(softmax(s)[torch.arange(len(y)), y]).mean()
    return (1 - weight) * ce + weight * temperature ** 2 * kl


@pytest.mark.parametrize("temperature, weight", [(4.0, 0.9), (1.0, 0.5), (2.5, 1.0)])
def test_kd_gradient_matches_autograd_of_the_brute_force_formula(temperature, weight):
    gen = torch.Generator().manual_seed(0)
    s = (3 * torch.randn(6, 10, generator=gen)).requires_grad_()
    s_brute = s.detach().clone().requires_grad_()
    t, y = 3 * torch.randn(6, 10, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    kd_loss(s, t, y, temperature, weight).backward()
    _brute_force(s_brute, t, y, temperature, weight).backward()
    torch.testing.assert_close(s.grad, s_brute.grad, rtol=1e-5, atol=1e-7)
    # and the closed form: (1-A)(softmax(s) - onehot)/B + A T (softmax(s/T) - softmax(t/T))/B
    closed = ((1 - weight) * (s.softmax(1) - F.one_hot(y, 10)) + weight * temperature * (
        (s / temperature).softmax(1) - (t / temperature).softmax(1))) / 6
    torch.testing.assert_close(s.grad, closed.detach(), rtol=1e-5, atol=1e-7)


def test_weight_zero_is_plain_cross_entropy_exactly():
    gen = torch.Generator().manual_seed(1)
    logits, t = torch.randn(16, 10, generator=gen), torch.randn(16, 10, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    kd, ce = kd_loss(a, t, y, 4.0, 0.0), F.cross_entropy(b, y)
    kd.backward()
    ce.backward()
    assert torch.equal(kd, ce) and torch.equal(a.grad, b.grad)


def _finetuned(tmp_path: Path, name: str, teacher: torch.nn.Module | None,
               **settings) -> tuple[torch.nn.Module, list[dict]]:
    """A tiny model fine-tuned by pipeline.finetune; the model and its metrics lines."""
    data = tiny_data()
    cfg = load_config(None, {"batch_size": 32, "epochs": 2, "device": "cpu",
                             "out": str(tmp_path / name), **settings})
    model = pipeline.new_model(cfg, data)
    model, _ = pipeline.finetune(model, data, cfg, tmp_path / name, teacher=teacher)
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return model, [json.loads(line) for line in lines]


def test_distillation_at_weight_zero_trains_exactly_as_cross_entropy(tmp_path):
    teacher = build_model("vgg", 10, 3, 0.0625, 11)
    plain, _ = _finetuned(tmp_path, "plain", None, arch="vgg", depth=11, width=0.0625)
    zero, _ = _finetuned(tmp_path, "zero", teacher, arch="vgg", depth=11, width=0.0625,
                         distill=True, distill_weight=0.0)
    soft, _ = _finetuned(tmp_path, "soft", teacher, arch="vgg", depth=11, width=0.0625,
                         distill=True)
    for a, b in zip(plain.state_dict().values(), zero.state_dict().values()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(plain.state_dict().values(),
                                                      soft.state_dict().values()))


def test_the_teacher_is_left_alone_and_its_copy_never_learns(tmp_path, spread):
    data = tiny_data()
    cfg = load_config(None, {"batch_size": 32, "epochs": 1, "device": "cpu",
                             "channels_last": True})
    teacher = spread(build_model("vgg", 10, 3, 0.0625, 11)).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    criterion = Distillation(teacher, channels_last=True)
    student = build_model("vgg", 10, 3, 0.0625, 11)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    Trainer(student, data, cfg, tmp_path / "ft", 1, criterion=criterion).fit()
    assert teacher.training  # the caller's model: not even its mode changed
    copy = criterion.teacher
    assert not copy.training and not any(m.training for m in copy.modules())
    assert all(not p.requires_grad and p.grad is None for p in copy.parameters())
    assert copy.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for model in (teacher, copy):  # weights, BN running statistics and batch counts
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key
    assert not torch.equal(student.state_dict()["features.0.weight"], start["features.0.weight"])


def test_the_fine_tuning_schedule_sets_the_lr_of_each_epoch(tmp_path):
    def lrs(name: str, **settings) -> list[float]:
        return [r["lr"] for r in _finetuned(tmp_path, name, None, arch="vgg", depth=11,
                                            width=0.0625, epochs=1, finetune_epochs=4,
                                            finetune_lr=0.05, **settings)[1]]

    assert lrs("default") == pytest.approx([0.05, 0.05, 0.005, 0.0005])  # --schedule's: step
    assert lrs("constant", finetune_schedule="constant") == [0.05] * 4
    cosine = [0.5 * 0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs("cosine", finetune_schedule="cosine") == pytest.approx(cosine)
    assert lrs("follows", schedule="cosine") == pytest.approx(cosine)
    assert lrs("own", schedule="cosine", finetune_schedule="step") == pytest.approx(
        [0.05, 0.05, 0.005, 0.0005])


def test_finetune_commands_own_lr_and_schedule_win_over_a_presets_second_stage(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('finetune_schedule = "constant"\nfinetune_lr = 0.01\n')
    stage = pipeline.finetune_stage(command_config("finetune", str(preset),
                                                   {"schedule": "cosine", "lr": 0.2}))
    assert (stage.schedule, stage.lr) == ("cosine", 0.2)
    stage = pipeline.finetune_stage(command_config("finetune", str(preset), {}))
    assert (stage.schedule, stage.lr) == ("constant", 0.01)  # unless given: the preset's
    stage = pipeline.finetune_stage(command_config("run", str(preset), {"schedule": "cosine"}))
    assert (stage.schedule, stage.lr) == ("constant", 0.01)  # run: --schedule is stage one's


def _run(tmp_path: Path, out: Path, *extra: str) -> int:
    return main(["run", *TINY, *ARCH, "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                 "--finetune-epochs", "2", "--finetune-lr", "0.05", "--out", str(out), *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).state_dict()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_distills_records_it_and_finetune_teacher_does_the_same(tmp_path, monkeypatch,
                                                                       capsys):
    write_fashion(tmp_path / "data" / "fashion-mnist", monkeypatch)
    plain, kd = tmp_path / "plain", tmp_path / "kd"
    assert _run(tmp_path, plain) == 0
    assert _run(tmp_path, kd, "--distill", "--finetune-schedule", "constant") == 0
    recorded = json.loads((kd / "results.json").read_text())["finetune"]
    assert recorded == {"lr": 0.05, "schedule": "constant", "epochs": 2,
                        "distill": {"temperature": 4.0, "weight": 0.9}}
    assert json.loads((plain / "results.json").read_text())["finetune"] == {
        "lr": 0.05, "schedule": "step", "epochs": 2, "distill": None}
    assert _lines(kd / "train" / "metrics.jsonl")[0]["train_loss"] == _lines(
        plain / "train" / "metrics.jsonl")[0]["train_loss"]  # the same sparsity training
    assert [r["lr"] for r in _lines(kd / "finetune" / "metrics.jsonl")] == [0.05, 0.05]
    settings = {row["run"]: row["setting"] for row in collect(tmp_path)}  # ncslim report
    assert settings == {"plain": "tl1(a=1) subgradient", "kd": "tl1(a=1) subgradient distilled"}
    # the finetune command, given run's teacher and settings, fine-tunes exactly as run did
    ft = tmp_path / "ft"
    assert main(["finetune", *TINY, "--data-dir", str(tmp_path / "data"), "--checkpoint",
                 str(kd / "pruned.pt"), "--distill", "--teacher", str(kd / "train" / "model.pt"),
                 "--epochs", "2", "--lr", "0.05", "--schedule", "constant",
                 "--out", str(ft)]) == 0
    for key, value in _weights(kd / "final.pt").items():
        assert torch.equal(value, _weights(ft / "model.pt")[key]), key
    config = json.loads((ft / "config.json").read_text())["config"]
    assert config["distill"] and config["teacher"] == str(kd / "train" / "model.pt")
    capsys.readouterr()
    assert _run(tmp_path, kd, "--distill", "--distill-weight", "0.5", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--distill-weight 0.5 (the run has 0.9)" in err
    assert _run(tmp_path, kd, "--distill", "--resume") == 2  # and without its schedule
    assert "--finetune-schedule None (the run has constant)" in capsys.readouterr().err


def test_a_resumed_distilled_fine_tuning_repeats_bit_for_bit(tmp_path, monkeypatch):
    write_fashion(tmp_path / "data" / "fashion-mnist", monkeypatch)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert _run(tmp_path, straight, "--distill") == 0
    original = Trainer._run_epoch

    def interrupted(self: Trainer, epoch: int) -> None:
        if self.dir.name == "finetune" and epoch == 1:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(Trainer, "_run_epoch", interrupted)
    assert _run(tmp_path, cut, "--distill") == 130
    assert len(_lines(cut / "finetune" / "metrics.jsonl")) == 1
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    assert _run(tmp_path, cut, "--distill", "--resume") == 0
    for key, value in _weights(straight / "final.pt").items():
        assert torch.equal(value, _weights(cut / "final.pt")[key]), key
    assert _lines(cut / "finetune" / "metrics.jsonl")[1]["train_loss"] == _lines(
        straight / "finetune" / "metrics.jsonl")[1]["train_loss"]


@needs_fashion
def test_two_processes_distil_their_own_slices_as_one_process(tmp_path):
    args = ["run", *DDP_TINY, "--epochs", "1", "--finetune-epochs", "1", "--sync-bn",
            "--distill"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    done = ncslim_run(*args, "--out", str(two))
    assert done.returncode == 0, done.stderr[-3000:]
    assert max_difference(_weights(one / "final.pt"), _weights(two / "final.pt")) < 1e-4
    (a,), (b,) = (_lines(run / "finetune" / "metrics.jsonl") for run in (one, two))
    assert a["images"] == b["images"] == 192
    assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)


@pytest.mark.parametrize("flags, message", [
    (["--distill"], "--distill needs --teacher MODEL, the model to distil from, e.g. "),
    (["--teacher", "full.pt"], "--teacher is the model that --distill distils from; add "
                               "--distill"),
])
def test_finetune_distill_and_teacher_need_each_other(tmp_path, capsys, flags, message):
    save_model(build_model("vgg", 10, 1, 0.0625, 11), tmp_path / "pruned.pt")
    out = tmp_path / "ft"
    assert main(["finetune", *TINY, "--checkpoint", str(tmp_path / "pruned.pt"), *flags,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ncslim finetune: error: {message}")
    assert not out.exists()


def test_distillation_settings_are_sweepable_and_named():
    spec = {"preset": "demo", "seeds": [0], "base": {"epochs": 1},
            "grid": [{"penalty": "l1", "distill": [False, True], "distill_weight": 0.5}]}
    runs = expand(spec)
    assert [run.name for run in runs] == ["l1_distill_distill_weight0.5_s0",
                                          "l1_no-distill_distill_weight0.5_s0"]
    assert [(run.config.distill, run.config.distill_weight) for run in runs] == [
        (True, 0.5), (False, 0.5)]
