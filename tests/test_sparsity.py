"""One protocol for every sparsity method: the loop calls the same hooks whatever the method, a new
method needs no edit of the trainer, and the lambda controller is one more method."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ncslim
from ncslim.config import load_config
from ncslim.data import DATASETS, ImageData
from ncslim.run import train
from ncslim.run.methods import make_method
from ncslim.run.prunerule import report_removed
from ncslim.run.train import Trainer
from ncslim.sparsity import SparsityMethod
from ncslim.sparsity.controller import LAM_RANGE, START_LAM, LambdaController
from ncslim.sparsity.penalties import PENALTIES
from ncslim.sparsity.regularizer import MODES, SparsityRegularizer


def test_the_hot_loop_knows_no_method_and_no_mode():
    source = inspect.getsource(train.Trainer.train_epoch)
    tree = ast.parse(source.lstrip())
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name)}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    assert "isinstance" not in calls
    assert not strings & {*MODES, "vcp", "none", *PENALTIES}
    assert "VariationalScales" not in inspect.getsource(train)


def tiny_data(n: int = 64) -> ImageData:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageData(images, labels, images[:32], labels[:32], DATASETS["cifar10"])


class CountingMethod(SparsityMethod):
    """A new method written outside the package: an L2 pull on the BN scales, counting hooks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.calls = {"loss_term": 0, "after_backward": 0, "after_step": 0, "begin_epoch": 0,
                      "end_epoch": 0, "finish": 0}
        self.gammas = list(ncslim.sparsity.regularizer.find_scales(model).values())

    def loss_term(self) -> torch.Tensor:
        self.calls["loss_term"] += 1
        return 1e-3 * sum(g.square().sum() for g in self.gammas)

    def after_backward(self) -> None:
        self.calls["after_backward"] += 1
        assert all(g.grad is not None for g in self.gammas)

    def after_step(self, lr: float) -> None:
        self.calls["after_step"] += 1

    def begin_epoch(self, seed: int, epoch: int) -> None:
        self.calls["begin_epoch"] += 1

    def end_epoch(self) -> dict[str, float]:
        self.calls["end_epoch"] += 1
        return {"lam": 1e-3, "l2": 1.0}

    def finish(self) -> None:
        self.calls["finish"] += 1

    def state_dict(self) -> dict:
        return {"calls": dict(self.calls)}

    def load_state_dict(self, state: dict) -> None:
        self.calls.update(state["calls"])


def test_a_new_method_runs_in_the_trainer_without_editing_it(tmp_path):
    cfg = load_config(None, {"dataset": "cifar10", "batch_size": 16, "epochs": 2,
                             "device": "cpu", "out": str(tmp_path)})
    model = ncslim.build_model("vgg", depth=11, width=0.0625)
    method = CountingMethod(model)
    result = Trainer(model, tiny_data(), cfg, tmp_path / "stage", 2, method).fit()
    steps = 2 * (64 // 16)
    assert method.calls == {"loss_term": steps, "after_backward": steps, "after_step": steps,
                            "begin_epoch": 2, "end_epoch": 2, "finish": 1}
    assert [r["l2"] for r in result.history] == [1.0, 1.0]
    state = ncslim.run.train.load_checkpoint(tmp_path / "stage" / "last.pt")
    assert state["method"]["calls"]["after_step"] == steps  # its state is in last.pt


@pytest.mark.parametrize("penalty", sorted(PENALTIES))
@pytest.mark.parametrize("mode", MODES)
def test_lam_auto_works_for_every_penalty_and_mode(tmp_path, penalty, mode):
    cfg = load_config(None, {"dataset": "cifar10", "batch_size": 8, "epochs": 1, "lam": "auto",
                             "penalty": penalty, "mode": mode, "ratio": 0.5, "device": "cpu",
                             "out": str(tmp_path)})
    model = ncslim.build_model("vgg", depth=11, width=0.0625)
    method = make_method(cfg, model, n_train=64, steps=8)
    assert isinstance(method, LambdaController)
    # lambda starts where the schedule's ramp (lr 0.1) just brings a median gamma to zero
    median = float(method.reg.scales().abs().median())
    assert method.lam == pytest.approx(min(method.start_lam(median, cfg.momentum), LAM_RANGE[1]))
    method.every = 2  # a short schedule: updates every other step, frozen at step 3, zero at 4
    result = Trainer(model, tiny_data(), cfg, tmp_path / "stage", 1, method).fit()
    record = result.history[-1]
    assert method.frozen and record["target_share"] == 0.5
    mask = method.reg.mask
    assert int(mask.sum()) == 0.5 * mask.numel()
    assert (method.reg.scales()[mask] == 0).all()  # the channels the cut removes: exactly zero
    assert (method._flat_betas()[mask] == 0).all()  # and so are their shifts
    assert record["share_near_zero"] >= 0.5
    assert math.isclose(record["target_distance"], 0.5 - record["share_near_zero"])


@pytest.mark.parametrize("arch, kwargs", [("vgg", {"depth": 11, "width": 0.0625}),
                                          ("densenet", {"depth": 10, "width": 0.34}),
                                          ("resnet", {"depth": 11, "width": 0.25})])
def test_lam_auto_aims_at_a_flops_target_on_every_family(tmp_path, arch, kwargs):
    cfg = load_config(None, {"dataset": "cifar10", "batch_size": 8, "epochs": 1, "lam": "auto",
                             "penalty": "mcp", "mode": "proximal", "target_flops": 0.6,
                             "device": "cpu", "out": str(tmp_path)})
    model = ncslim.build_model(arch, **kwargs)
    method = make_method(cfg, model, n_train=64, steps=8)
    method.every = 2
    result = Trainer(model, tiny_data(), cfg, tmp_path / "stage", 1, method).fit()
    assert 0 < result.history[-1]["target_share"] < 1 and method.frozen
    assert int(method.reg.mask.sum()) == round(method.target_share * method.reg.mask.numel())
    # the frozen set was the budget search's own: the cut now removes exact zeros only
    pruned = ncslim.prune.prune_to_budget(model, 0.6, measure="flops")[1]
    assert pruned.flops_after <= 0.6 * pruned.flops_before
    gammas = method.reg.scales()
    removed = report_removed(pruned, gammas.numel())
    assert removed.any() and (gammas[removed] == 0).all()


def _proximal_l1(target: float, gammas: torch.Tensor, steps: int,
                 lams: list[float] | None = None, total: int | None = None,
                 **options) -> LambdaController:
    """A controller over gammas that only the prox moves (no data), `steps` steps at lr 0.1."""
    layer = nn.BatchNorm2d(gammas.numel())
    with torch.no_grad():
        layer.weight.copy_(gammas)
        layer.bias.fill_(0.3)
    reg = SparsityRegularizer(nn.Sequential(layer), ncslim.make_penalty("l1", lam=START_LAM),
                              mode="proximal")
    controller = LambdaController(reg, target=target, total_steps=total or steps, **options)
    for _ in range(steps):
        controller.after_step(0.1)
        if lams is not None:
            lams.append(controller.lam)
    return controller


def test_the_controller_brings_the_target_share_near_zero_and_no_more():
    gammas = torch.linspace(0.05, 1.0, 200)
    lams: list[float] = []
    # the penalty alone (no finishing phase), lambda started from the schedule
    alone = _proximal_l1(0.3, gammas, steps=600, lams=lams, finish=None,
                         schedule=lambda step: 0.1)
    assert alone.share_near_zero() == pytest.approx(0.3)
    assert torch.equal(alone.reg.scales()[60:], gammas[60:])
    assert max(lams) > 10 * START_LAM  # it had to raise lambda to get there
    lams.clear()
    # no schedule: lambda starts at START_LAM, too low for 600 steps; the finish brings the
    # frozen set to exactly zero
    controller = _proximal_l1(0.3, gammas, steps=600)
    assert controller.frozen and controller.share_near_zero() == pytest.approx(0.3)
    assert (controller.reg.scales()[:60] == 0).all()
    after = controller.reg.scales()
    assert (after[:60] <= controller.zero).all()  # the 30 % that pruning removes: near zero
    assert torch.equal(after[60:], gammas[60:])  # the rest: never touched by the penalty
    betas = controller.betas[0].detach()
    assert (betas[:60] == 0).all()  # an aimed channel ends sending nothing, not relu(beta)
    assert (betas[60:] == 0.3).all()


def _subgradient_run(penalty: str, floor: bool, steps: int = 600) -> LambdaController:
    """Subgradient steps of the penalty alone (no data) under the controller's select phase
    (no finish: what the penalty's steps achieve), SGD with momentum."""
    layer = nn.BatchNorm2d(200)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.05, 1.0, 200))
    reg = SparsityRegularizer(nn.Sequential(layer), ncslim.make_penalty(penalty, lam=START_LAM))
    controller = LambdaController(reg, target=0.3, total_steps=steps, finish=None)
    if not floor:
        reg.grad_floor = 0.0
    opt = torch.optim.SGD(controller.param_groups(0.0), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        controller.after_backward()
        opt.step()
        controller.after_step(0.1)
    return controller


def test_lp_subgradient_settles_at_the_target_only_with_the_bounded_step():
    gammas = torch.linspace(0.05, 1.0, 200)
    settled = _subgradient_run("lp", floor=True)
    assert settled.reg.grad_floor == settled.zero > 0
    assert settled.share_near_zero() == pytest.approx(0.3)
    assert torch.equal(settled.reg.scales()[60:], gammas[60:])
    swinging = _subgradient_run("lp", floor=False)  # the exact, unbounded derivative
    assert swinging.share_near_zero() < 0.1
    assert swinging.reg.scales().abs().max() > 1.0  # thrown across zero, ever wider
    # every penalty's subgradient is bounded near zero under the controller
    assert _subgradient_run("l1", floor=True, steps=1).reg.grad_floor > 0.0


def test_the_aim_never_takes_a_layers_last_channels_as_pruning_keeps_them():
    weak, strong = nn.BatchNorm2d(4), nn.BatchNorm2d(12)
    with torch.no_grad():
        weak.weight.copy_(torch.tensor([0.01, 0.02, 0.03, 0.04]))
        strong.weight.copy_(torch.linspace(0.1, 1.0, 12))
    reg = SparsityRegularizer(nn.Sequential(weak, strong), ncslim.make_penalty("l1", lam=1e-3))
    for min_channels, aimed_in_weak in ((1, 3), (2, 2)):
        controller = LambdaController(reg, target=0.25, total_steps=10,
                                      min_channels=min_channels)
        mask = controller.reg.mask
        assert int(mask.sum()) == 4 and int(mask[:4].sum()) == aimed_in_weak
        assert not mask[3]  # the weak layer's strongest channel stays, as pruning leaves it


def test_a_controllers_state_restores_it_exactly():
    gammas = torch.linspace(0.05, 1.0, 50)
    first = _proximal_l1(0.5, gammas, steps=35, total=200)  # a measurement pending at step 30
    state = first.state_dict()
    assert state["pending"] is not None and state["steps"] == 35
    second = _proximal_l1(0.5, gammas, steps=0, total=200)
    second.load_state_dict(state)
    assert (second.lam, second.steps, float(second.pending), second.mass) == (
        first.lam, first.steps, float(first.pending), first.mass)
    with pytest.raises(ValueError, match="not trained with --lam auto"):
        second.load_state_dict({})
    # in the finishing phase: the frozen set and how far it has shrunk
    finishing = _proximal_l1(0.5, gammas, steps=80, total=200)
    assert finishing.frozen and 0 < finishing.left < 1
    resumed = _proximal_l1(0.5, gammas, steps=0, total=200)
    resumed.load_state_dict(finishing.state_dict())
    for _ in range(120):
        finishing.after_step(0.1)
        resumed.after_step(0.1)
    assert resumed.frozen and resumed.left == finishing.left == 0.0
    assert torch.equal(resumed.reg.mask, finishing.reg.mask)
    assert (finishing.reg.scales()[finishing.reg.mask] == 0).all()


def test_the_controller_in_your_own_loop_on_another_cnn():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    reg = SparsityRegularizer(model, ncslim.make_penalty("tl1", lam=START_LAM, a=1.0))
    method = LambdaController(reg, target=0.5, total_steps=40, every=2)
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(40):
        opt.zero_grad(set_to_none=True)
        (F.cross_entropy(model(x), y) + method.loss_term()).backward()
        method.after_backward()
        opt.step()
        method.after_step(0.1)
    assert method.lam > START_LAM and method.steps == 40


def test_lam_auto_needs_a_penalty_and_a_target(tmp_path):
    for bad in ({"penalty": "none"}, {"penalty": "vcp"}, {"threshold": 0.01}):
        with pytest.raises(ValueError, match="--lam auto adapts a penalty"):
            load_config(None, {"lam": "auto", "penalty": "l1", **bad})
    assert load_config(None, {"lam": "auto", "target_params": 0.3}).lam == "auto"
    assert Path(ncslim.sparsity.controller.__file__).name == "controller.py"


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_lam_auto_from_the_command_line_with_amp(tmp_path, capsys):
    import json

    from ncslim.cli import main

    out = tmp_path / "t"
    assert main(["train", "--dataset", "fashion-mnist", "--arch", "vgg", "--depth", "11",
                 "--width", "0.0625", "--limit-train", "320", "--limit-test", "96",
                 "--batch-size", "16", "--epochs", "2", "--device", "cpu", "--amp",
                 "--lam", "auto", "--target-params", "0.5", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all({"lam", "target_share", "share_near_zero", "target_distance"} <= set(r)
               for r in lines)
    assert 0 < lines[-1]["target_share"] < 1  # the share that keeps 50 % of the parameters
    assert lines[-1]["lam"] > START_LAM
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["lam"] == "auto" and config["target_params"] == 0.5
