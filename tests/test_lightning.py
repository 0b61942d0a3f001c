"""SlimmingCallback: ncslim's sparsity training and pruning inside a Lightning fit, on CPU."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

import ncslim  # noqa: E402
import ncslim.lightning  # noqa: E402
from ncslim.lightning import SlimmingCallback  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),  # Lightning's loader advice
              pytest.mark.filterwarnings("ignore:.*treespec"),  # Lightning on this torch
              pytest.mark.filterwarnings("ignore:.*torch.jit.load. is deprecated")]
DOC = Path(__file__).resolve().parent.parent / "docs" / "lightning.md"


class TinyCNN(nn.Module):
    """conv-BN-ReLU twice, a classifier: every channel group has its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
        for module in self.modules():  # spread, small gammas, as part-way through training
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.01, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 0.2, zero_loss: bool = False, momentum: float = 0.9) -> None:
        super().__init__()
        self.net = TinyCNN()
        self.lr, self.zero_loss, self.momentum = lr, zero_loss, momentum
        self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        return 0.0 * out.float().sum() if self.zero_loss else F.cross_entropy(out.float(), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def images(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return x, y


def loader(n: int = 256) -> DataLoader:
    return DataLoader(TensorDataset(*images(n)), batch_size=8)  # no shuffle: resumes repeat


def trainer(epochs: int, callbacks: list, **options) -> L.Trainer:
    settings = {"accelerator": "cpu", "max_epochs": epochs, "logger": False,
                "enable_progress_bar": False, "enable_checkpointing": False,
                "enable_model_summary": False, "callbacks": callbacks}
    return L.Trainer(**{**settings, **options})


def gammas(module: nn.Module) -> torch.Tensor:
    return torch.cat([g.detach().flatten() for g in ncslim.sparsity.regularizer.find_scales(module)
                      .values()])


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on a busy 2-core machine make these fits ten times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_proximal_penalty_zeroes_gammas_and_logs(tmp_path):
    torch.manual_seed(0)
    plain = Classifier()
    trainer(2, []).fit(plain, loader(64))
    torch.manual_seed(0)
    module = Classifier()
    slim = SlimmingCallback("l1", lam=0.05, mode="proximal")
    fit = trainer(2, [slim], logger=L.loggers.CSVLogger(tmp_path, name="run"))
    fit.fit(module, loader(64))
    slimmed, free = gammas(module), gammas(plain)
    assert int((slimmed == 0).sum()) >= 4 and int((free == 0).sum()) == 0
    assert float(slimmed.abs().sum()) < 0.5 * float(free.abs().sum())
    assert slim.pruned is None and slim.report is None  # no pruning rule given
    assert float(fit.callback_metrics["slim/lam"]) == pytest.approx(0.05)  # logged as float32
    assert float(fit.callback_metrics["slim/gamma_zero"]) == pytest.approx(
        float((slimmed == 0).float().mean()))
    lines = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [float(r["slim/lam"]) for r in rows if r["slim/lam"]] == pytest.approx([0.05] * 2)


@pytest.mark.parametrize("precision, accumulate", [("16-mixed", 1), ("32-true", 2)])
def test_subgradient_acts_on_unscaled_gradients_once_per_step(precision, accumulate):
    # With a loss of zero the only force on a gamma is the penalty: lr * lam * sign(gamma) per
    # optimizer step. A penalty added before AMP's unscale_ would be 65536 times too weak; one
    # added per backward under accumulation, `accumulate` times too strong.
    torch.manual_seed(0)
    module = Classifier(lr=0.1, zero_loss=True, momentum=0.0)
    before = gammas(module).clone()
    plugins = []
    if precision == "16-mixed":  # Lightning swaps 16-mixed for bf16 on CPU unless told so
        plugins = [L.plugins.MixedPrecision("16-mixed", "cpu")]
    slim = SlimmingCallback("l1", lam=1e-3, mode="subgradient")
    fit = trainer(1, [slim], plugins=plugins, accumulate_grad_batches=accumulate,
                  **({} if plugins else {"precision": precision}))
    fit.fit(module, loader(64))
    steps = 8 // accumulate
    assert fit.global_step == steps
    torch.testing.assert_close(gammas(module), before - steps * 0.1 * 1e-3 * before.sign(),
                               rtol=0, atol=1e-7)


class Scheduled(Classifier):
    def configure_optimizers(self) -> dict:
        opt = super().configure_optimizers()
        lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": lr, "interval": "step"}}


def test_proximal_step_uses_the_lr_of_its_step():
    # a per-step scheduler has moved the lr by on_train_batch_end; the prox must use the old one
    torch.manual_seed(0)
    module = Scheduled(lr=0.1, zero_loss=True, momentum=0.0)
    before = gammas(module).clone()
    trainer(1, [SlimmingCallback("l1", lam=1e-3, mode="proximal")]).fit(module, loader(64))
    shrink = 1e-3 * sum(0.1 / (1 + step) for step in range(8))
    expected = before.sign() * (before.abs() - shrink).clamp(min=0)
    torch.testing.assert_close(gammas(module), expected, rtol=0, atol=1e-7)


def test_lam_auto_reaches_target_and_pruned_model_equals_trained():
    torch.manual_seed(0)
    module = Classifier()
    slim = SlimmingCallback("l1", lam="auto", ratio=0.5, mode="proximal")
    fit = trainer(12, [slim])
    fit.fit(module, loader())
    metrics = {k: float(v) for k, v in fit.callback_metrics.items()}
    assert metrics["slim/target_share"] == 0.5 and metrics["slim/share_near_zero"] >= 0.5
    assert metrics["slim/lam"] > ncslim.sparsity.controller.START_LAM  # lambda rose to get there
    small, report = slim.pruned, slim.report
    assert report.removed_fraction == pytest.approx(0.5)
    assert report.params_after == ncslim.count_params(small) < report.params_before
    assert report.threshold == 0  # the removed channels are exact zeros...
    module.eval()
    small.eval()
    x = images(32)[0]
    with torch.no_grad():  # ...so the smaller network computes what the trained one does
        torch.testing.assert_close(small(x), module.net(x), rtol=0, atol=1e-5)
    assert module.net.body[1].weight.numel() == 8  # the trained module is left whole


def test_max_layer_ratio_caps_every_layer_in_the_controller_and_the_pruning():
    torch.manual_seed(0)
    module = Classifier()
    slim = SlimmingCallback("l1", lam="auto", ratio=0.6, mode="proximal", max_layer_ratio=0.5)
    trainer(2, [slim]).fit(module, loader(64))
    widths = [m.num_features for m in slim.pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    assert widths == [4, 8]  # half of 8 and of 16: the cap holds, so 50 % go, not 60 %
    assert slim.report.max_layer_ratio == 0.5 and slim.method.removable == 0.5  # aimed within


def test_the_layer_ranking_reaches_the_controller_and_the_cut():
    torch.manual_seed(0)
    module = Classifier()
    slim = SlimmingCallback("l1", lam="auto", ratio=0.5, mode="proximal", ranking="layer")
    trainer(2, [slim]).fit(module, loader(64))
    assert slim.method.ranking == "layer" and slim.report.ranking == "layer"
    # auto (the default): by layer for a FLOPs budget, else globally, as ncslim run ranks
    assert SlimmingCallback("l1", lam="auto", target_flops=0.5).ranking == "layer"
    assert SlimmingCallback("l1", lam="auto", ratio=0.5).ranking == "global"
    assert slim.report.removed_fraction == pytest.approx(0.5)
    module.eval()
    small = slim.pruned.eval()
    x = images(32)[0]
    with torch.no_grad():  # aimed where this cut removes: exact zeros, the same network
        torch.testing.assert_close(small(x), module.net(x), rtol=0, atol=1e-5)


class ResidualCNN(nn.Module):
    """A stem and two residual blocks adding into one stream: the stream's channel is shared
    by three BatchNorms, and the cut removes it only where all three let it go."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)) for _ in range(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.01, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = (x + block(x)).relu()
        return self.head(x)


@pytest.mark.parametrize("ranking", ["global", "layer"])
def test_on_coupled_channels_the_callback_aims_at_the_groups_the_cut_removes(ranking):
    torch.manual_seed(0)
    module = Classifier()
    module.net = ResidualCNN()
    slim = SlimmingCallback("l1", lam="auto", ratio=0.5, mode="proximal", ranking=ranking)
    trainer(2, [slim]).fit(module, loader(64))
    assert slim.method.aim.unit_of is not None  # the stream's BNs share one unit each
    module.eval()
    small = slim.pruned.eval()
    x = images(32)[0]
    with torch.no_grad():  # every group the cut removed was zero in all its BNs
        torch.testing.assert_close(small(x), module.net(x), rtol=1e-4, atol=1e-5)


def test_budgets_prune_to_them_and_save(tmp_path):
    torch.manual_seed(0)
    module = Classifier()
    slim = SlimmingCallback("tl1", lam="auto", target_flops=0.5, mode="proximal", a=1.0,
                            network="net", save_to=tmp_path / "slim")
    fit = trainer(1, [slim])
    fit.fit(module, loader(64))
    assert 0 < float(fit.callback_metrics["slim/target_share"]) < 1  # from the budget
    report = slim.report
    assert report.flops_after <= 0.5 * report.flops_before
    saved = json.loads((tmp_path / "slim" / "prune.json").read_text())
    assert saved["flops_after"] == report.flops_after
    scripted = torch.jit.load(str(tmp_path / "slim" / "pruned.ts"))
    x = images(4)[0]
    slim.pruned.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), slim.pruned(x))
    torch.manual_seed(0)
    params = SlimmingCallback("l1", lam=1e-3, target_params=0.4)
    trainer(1, [params]).fit(Classifier(), loader(64))
    assert params.report.params_after <= 0.4 * params.report.params_before


def test_resumed_fit_continues_exactly(tmp_path):
    def run(ckpt_path=None, checkpoints=None):
        torch.manual_seed(1 if ckpt_path else 0)  # a resumed module's weights come from the file
        module = Classifier()
        slim = SlimmingCallback("l1", lam="auto", ratio=0.5, mode="proximal")
        callbacks = [slim] + ([checkpoints] if checkpoints else [])
        trainer(2, callbacks, enable_checkpointing=bool(checkpoints)).fit(
            module, loader(), ckpt_path=ckpt_path)
        return module, slim

    every_epoch = L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1,
                                              filename="{epoch}")
    whole, whole_slim = run(checkpoints=every_epoch)
    halfway = torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)
    state = halfway["callbacks"]["SlimmingCallback"]["method"]
    assert state["steps"] == 32 and state["frozen"] and state["mass"] == 32  # the finish began
    resumed, resumed_slim = run(ckpt_path=tmp_path / "epoch=0.ckpt")
    assert resumed_slim.method.steps == whole_slim.method.steps == 64
    assert resumed_slim.method.lam == whole_slim.method.lam
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_with_other_settings_is_refused(tmp_path):
    torch.manual_seed(0)
    fit = trainer(1, [SlimmingCallback("l1", lam=1e-3)])
    fit.fit(Classifier(), loader(16))
    fit.save_checkpoint(tmp_path / "one.ckpt")
    other = SlimmingCallback("l1", lam=2e-3)
    with pytest.raises(ValueError, match=r"trained by SlimmingCallback with .*'lam': 0\.001.*"
                                         r"resume with the same settings"):
        trainer(2, [other]).fit(Classifier(), loader(16), ckpt_path=tmp_path / "one.ckpt")


@pytest.mark.parametrize("kwargs, message", [
    ({"lam": "sometimes"}, "lam must be a number >= 0 or 'auto'"),
    ({"lam": -1.0}, "lam must be a finite number >= 0"),
    ({"mode": "prox"}, "mode must be one of subgradient, proximal"),
    ({"ratio": 0.5, "threshold": 0.0}, "give one pruning rule, not ratio and threshold"),
    ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"),
    ({"target_flops": 0.0}, r"target_flops must be in \(0, 1\]"),
    ({"lam": "auto"}, "lam='auto' adapts lambda to a pruning target"),
    ({"lam": "auto", "threshold": 0.0}, "lam='auto' adapts lambda to a pruning target"),
    ({"min_channels": 0}, "min_channels must be an int >= 1"),
    ({"penalty": "l3"}, "unknown penalty 'l3'"),
    ({"penalty": "l1", "a": 1.0}, "l1: unknown parameter"),
    ({"network": ""}, "network must be a submodule's name"),
    ({"ratio": 0.5, "example_inputs": [1, 2]}, "example_inputs must be a tensor batch"),
    ({"save_to": "out"}, "save_to is about the pruning at the end of the fit"),
    ({"ratio": 0.5, "max_layer_ratio": 0.0}, r"max_layer_ratio must be in \(0, 1\]"),
    ({"ratio": 0.5, "max_layer_ratio": True}, r"max_layer_ratio must be in \(0, 1\]"),
    ({"max_layer_ratio": 0.5}, "max_layer_ratio caps the pruning at the end of the fit"),
    ({"ratio": 0.5, "ranking": "mean"}, r"ranking \(--ranking\) must be one of auto, global"),
])
def test_bad_arguments_are_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        SlimmingCallback(**kwargs)
    assert "\n" not in str(err.value)


class NoExample(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = None


class FrozenBN(Classifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.body[0].parameters(), lr=0.1)


@pytest.mark.parametrize("module, kwargs, message", [
    (Classifier, {"network": "backbone"}, "network='backbone' is not a submodule of "
                                          "Classifier; its submodules are: net"),
    (NoExample, {"ratio": 0.5}, "pruning NoExample traces it on a batch: pass "
                                r"SlimmingCallback\(example_inputs=...\)"),
    (Classifier, {"ratio": 0.5, "compensate": True}, "compensate=True works for ncslim "
                                                     "architectures only"),
    (FrozenBN, {}, "does not train the weights of 2 of the 2 BatchNorm layers"),
])
def test_a_fit_that_cannot_work_stops_before_its_first_step(module, kwargs, message):
    model = module()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        trainer(1, [SlimmingCallback(**kwargs)]).fit(model, loader(16))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_without_lightning_the_error_names_the_extra(monkeypatch):
    monkeypatch.setattr(ncslim.lightning.callback, "Callback", object)
    with pytest.raises(ImportError, match=re.escape("pip install 'ncslim[lightning]'")):
        SlimmingCallback()


def test_docs_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    torch.manual_seed(0)
    scope = {"MyModule": Classifier, "train_loader": loader(64)}
    exec(block.replace("max_epochs=30", "max_epochs=2"), scope)
    report = scope["report"]
    assert report.removed_fraction == pytest.approx(0.5)
    assert scope["small"](images(2)[0]).shape == (2, 4)
    assert (tmp_path / "slim" / "prune.json").exists()
