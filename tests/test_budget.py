"""The budget holds in every run (issue 24): every penalty runs from the command line, a target
the network cannot reach is refused before anything is written, ``--init`` slims a model you
already trained, and a ``--lam auto`` run ends with the channels the cut removes at exactly zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import ncslim
from ncslim.cli import main
from ncslim.config import field_choices, load_config
from ncslim.run.prunerule import SHORTFALL, prune, report_removed, shortfall_warnings

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed")
ARCH = ["--arch", "vgg", "--depth", "11", "--width", "0.0625"]
TRAIN = ["--dataset", "fashion-mnist", *ARCH, "--limit-train", "256", "--limit-test", "96",
         "--batch-size", "32", "--epochs", "2", "--device", "cpu", "--lr", "0.02"]
TINY = [*TRAIN, "--finetune-epochs", "1"]


@needs_fashion
@pytest.mark.parametrize("penalty", field_choices("penalty"))
def test_every_penalty_the_help_lists_runs_from_the_command_line(tmp_path, penalty):
    # the demo preset's TL1 parameter (a = 1) belongs to TL1: SCAD (a > 2) takes its own
    assert main(["run", *TINY, "--penalty", penalty, "--out", str(tmp_path / "r")]) == 0
    record = json.loads((tmp_path / "r" / "results.json").read_text())
    assert record["config"]["penalty"] == penalty


def test_a_presets_penalty_parameters_belong_to_its_penalty():
    assert load_config("demo", {"penalty": "scad"}).penalty_params() == {"a": 3.7}
    assert load_config("demo", {}).penalty_params() == {"a": 1.0}  # the demo's TL1
    assert load_config("demo", {"penalty": "scad", "a": 3.0}).penalty_params() == {"a": 3.0}


@needs_fashion
@pytest.mark.parametrize("flags, message", [
    (["--ratio", "0.99", "--min-channels", "2"], "--ratio 0.99 cannot be reached: with each "
     "layer held by --min-channels 2, at most"),
    (["--target-flops", "0.001"], "--target-flops 0.001 cannot be reached"),
    (["--target-params", "0.01", "--round-to", "4"], "--round-to 4, the network keeps at least"),
])
def test_an_unreachable_target_is_refused_before_anything_is_written(tmp_path, capsys, flags,
                                                                      message):
    out = tmp_path / "r"
    assert main(["run", *TINY, "--lam", "auto", "--penalty", "l1", *flags,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    flag, value = err.split("; use ")[1].split()[:2]  # the advice can be taken as it is
    fixed = list(flags)
    fixed[fixed.index(flag) + 1] = value
    assert main(["run", *TINY, "--lam", "auto", "--penalty", "l1", *fixed, "--epochs", "1",
                 "--out", str(out)]) == 0


def _sparse_vgg() -> nn.Module:
    torch.manual_seed(0)
    model = ncslim.build_model("vgg", num_classes=10, in_channels=1, depth=11, width=0.0625)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.05, 1.0)
    return model


def test_the_warning_tells_a_shortfall_from_a_mismatch():
    cfg = load_config("demo", {"lam": "auto", "ratio": 0.5})
    model = _sparse_vgg()
    gammas = torch.cat([m.weight.detach().abs() for m in model.modules()
                        if isinstance(m, nn.BatchNorm2d)])
    _, report = prune(model, cfg)
    removed = report_removed(report, gammas.numel())
    assert int(removed.sum()) == round(0.5 * gammas.numel())
    # nothing near zero: a shortfall
    (warning,) = shortfall_warnings(gammas, cfg, report, 0.85, 0.10)
    assert warning.startswith(f"{SHORTFALL} shortfall") and f"cut {int(removed.sum())} live" in \
        warning
    # as many near zero as the cut removed, but other channels: a mismatch
    others = gammas.clone()
    others[~removed] = 0.0
    (warning,) = shortfall_warnings(others, cfg, report, 0.85, 0.10)
    assert warning.startswith(f"{SHORTFALL} mismatch")
    # exactly the removed ones at zero: no warning, whatever the accuracy did
    exact = gammas.clone()
    exact[removed] = 0.0
    assert shortfall_warnings(exact, cfg, report, 0.85, 0.10) == []
    assert shortfall_warnings(gammas, cfg, report, 0.85, 0.848) == []  # no drop to speak of
    assert shortfall_warnings(gammas, load_config("demo", {}), report, 0.85, 0.1) == []


@needs_fashion
def test_init_slims_a_model_you_already_trained(tmp_path, capsys):
    plain = tmp_path / "plain"
    assert main(["train", *TRAIN, "--penalty", "none", "--out", str(plain)]) == 0
    trained = ncslim.load_model(plain / "model.pt")
    out = tmp_path / "slim"
    assert main(["run", *TINY, "--init", str(plain / "model.pt"), "--lam", "auto",
                 "--penalty", "l1", "--mode", "proximal", "--ratio", "0.5", "--lr", "0.01",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["init"] == str(plain / "model.pt")
    assert results["accuracy"]["pruned"] == results["accuracy"]["sparse"]  # exact zeros cut
    assert not [w for w in results["warnings"] if w.startswith(SHORTFALL)]
    # the stage started from those weights: an epoch at lr 0.01 moves the convolutions little
    start = trained.state_dict()["features.0.weight"]
    after = ncslim.load_model(out / "train" / "model.pt").state_dict()["features.0.weight"]
    fresh = ncslim.build_model("vgg", num_classes=10, in_channels=1, depth=11, width=0.0625)
    assert (after - start).norm() < 0.5 * (fresh.state_dict()["features.0.weight"] - start).norm()


@needs_fashion
@pytest.mark.parametrize("make, message", [
    (lambda p: ncslim.save_model(ncslim.build_model("vgg", num_classes=10, in_channels=1,
                                                    depth=11, width=0.125), p),
     "features.0.weight has shape (8, 1, 3, 3), the network says (4, 1, 3, 3)"),
    (lambda p: torch.save({"features.0.weight": torch.zeros(4, 1, 3, 3)}, p),
     "not an ncslim model file"),
    (lambda p: p.write_bytes(b"not a model"), "not a readable ncslim file"),
])
def test_an_init_file_that_does_not_fit_is_one_line(tmp_path, capsys, make, message):
    path = tmp_path / "m.pt"
    make(path)
    out = tmp_path / "r"
    assert main(["run", *TINY, "--init", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


OWN_NET = """
from torch import nn

def small_cnn(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


def test_init_takes_a_plain_state_dict_for_your_own_network(tmp_path, monkeypatch):
    from ncslim.run.warmstart import init_weights

    (tmp_path / "budgetnets.py").write_text(OWN_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = ncslim.build_model("imported", 10, 3,
                               channels={"builder": "budgetnets:small_cnn"}, input_size=32)
    own = {k.removeprefix("net."): torch.randn_like(v) if v.is_floating_point() else v
           for k, v in model.state_dict().items()}
    path = tmp_path / "own.pt"
    torch.save(own, path)
    init_weights(model, str(path))
    assert all(torch.equal(model.state_dict()["net." + k], v) for k, v in own.items())
    torch.save({**own, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"unexpected \['net.extra.weight'\] tensors \(against "
                                         r"the network\)"):
        init_weights(model, str(path))


RESIDUAL_NET = """
from torch import nn

class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.BatchNorm2d(width))

    def forward(self, x):
        return (x + self.body(x)).relu()

def residual(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         Block(8), Block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
"""


@pytest.mark.parametrize("mode, ranking", [("proximal", "global"), ("subgradient", "global"),
                                           ("proximal", "layer")])
def test_on_coupled_channels_the_controller_zeroes_whole_groups_the_cut_removes(
        tmp_path, monkeypatch, mode, ranking):
    from ncslim.run.methods import make_method

    (tmp_path / "budgetres.py").write_text(RESIDUAL_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    model = ncslim.build_model("imported", 10, 3, channels={"builder": "budgetres:residual"},
                               input_size=16)
    cfg = load_config(None, {"lam": "auto", "penalty": "l1", "mode": mode, "ratio": 0.5,
                             "epochs": 1, "model": "budgetres:residual", "ranking": ranking})
    method = make_method(cfg, model, n_train=320, steps=20)
    assert method.aim.unit_of is not None  # the stream's three BNs share one group channel each
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        method.after_backward()
        opt.step()
        method.after_step(0.1)
    model.eval()
    small, report = ncslim.prune_model(model, ratio=0.5, example_inputs=x[:1], ranking=ranking)
    assert report.removed_fraction == pytest.approx(0.5, abs=0.05)
    # every channel the cut removed was zero in all the BNs of its group: the pruned network
    # computes what the trained one does
    torch.testing.assert_close(small.eval()(x), model(x), rtol=1e-4, atol=1e-5)
