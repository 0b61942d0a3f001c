"""The Torch-Pruning baseline in ncslim's harness: its regularizer is Torch-Pruning's, its pruned
VGG is Torch-Pruning's, its compression is the one asked for, and its run reads as its own method.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import spread_bn
from test_report import write_fashion

from ncslim import build_model, count_flops, count_params, make_penalty
from ncslim.cli import main
from ncslim.config import Config, load_config
from ncslim.report import collect
from ncslim.run.pipeline import load_data, sparsity_stage
from ncslim.sparsity.regularizer import SparsityRegularizer

tp = pytest.importorskip("torch_pruning")
from ncslim.run.baselines import (  # noqa: E402  (needs torch_pruning)
    TorchPruningBNScale,
    baseline_config,
    prune_tp,
    run_tp_baseline,
    train_baseline,
)
from ncslim.run.tp_pruner import bnscale_pruner, match_compression, rebuild_vgg  # noqa: E402

REG = 1e-3


def tiny_vgg(depth: int = 11, width: float = 0.125) -> torch.nn.Module:
    """Distinct gammas and betas, running statistics measured on random images (so that the
    output depends on the input)."""
    torch.manual_seed(0)
    model = spread_bn(build_model("vgg", num_classes=10, width=width, depth=depth))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    return model


def backward(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    F.cross_entropy(model(x), y).backward()


def test_the_regularizer_is_torch_prunings_own_and_ncslims_l1_subgradient():
    model = tiny_vgg()
    with torch.no_grad():
        model.features[1].weight[:2] = 0.0  # sign(0) = 0: no push on an exact zero
    before = copy.deepcopy(model.state_dict())
    ours, theirs, plain, l1 = (model, *(copy.deepcopy(model) for _ in range(3)))
    method = TorchPruningBNScale(ours, reg=REG)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())  # tracing: eval
    own = tp.pruner.BNScalePruner(theirs.eval(), torch.zeros(1, 3, 32, 32),
                                  tp.importance.BNScaleImportance(), reg=REG,
                                  ignored_layers=[theirs.classifier])
    theirs.train()
    regularizer = SparsityRegularizer(l1, make_penalty("l1", REG), "subgradient")
    for net in (ours, theirs, plain, l1):
        backward(net)
    method.after_backward()
    own.regularize(theirs)
    regularizer.after_backward()
    for (name, p), q, r, s in zip(ours.named_parameters(), theirs.parameters(),
                                  plain.parameters(), l1.parameters()):
        assert torch.equal(p.grad, q.grad), name
        torch.testing.assert_close(p.grad, s.grad, rtol=0, atol=1e-9)
        if name.startswith("features.") and p.dim() == 1 and name.endswith("weight"):  # a BN
            torch.testing.assert_close(p.grad - r.grad, REG * torch.sign(p.detach()))
        else:
            assert torch.equal(p.grad, r.grad), name
    assert method.end_epoch()["lam"] == REG
    assert method.end_epoch()["penalty"] == pytest.approx(
        REG * sum(float(m.weight.detach().abs().sum()) for m in ours.modules()
                  if isinstance(m, torch.nn.BatchNorm2d)))


def test_the_rebuilt_vgg_computes_what_torch_prunings_pruned_module_computes():
    model = tiny_vgg(depth=19, width=0.0625).eval()
    small = copy.deepcopy(model)
    bnscale_pruner(small, ratio=0.5).step()
    rebuilt = rebuild_vgg(small, model)
    widths = [c for c in rebuilt.channels if c != "M"]
    full = [c for c in model.channels if c != "M"]
    assert sum(widths) < sum(full) and widths != [round(c / 2) for c in full]  # global, uneven
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = small(x)
        assert float(out.std(0).min()) > 1e-3 * float(out.abs().max())  # depends on x
        torch.testing.assert_close(rebuilt(x), out, rtol=1e-5, atol=1e-6)
    assert count_params(rebuilt) == count_params(small)
    pool = next(i for i, m in enumerate(small.features) if isinstance(m, torch.nn.MaxPool2d))
    small.features[pool] = torch.nn.AvgPool2d(2)  # not a width: the rebuilt spec cannot hold it
    with pytest.raises(RuntimeError, match="does not compute"):
        rebuild_vgg(small, model)


@pytest.mark.parametrize("measure, fraction", [("params", 0.4), ("flops", 0.5)])
def test_the_compression_search_reaches_the_target_and_no_further(measure, fraction):
    model = tiny_vgg()
    match = match_compression(model, measure, fraction)
    shape = model.input_shape()
    size = count_params if measure == "params" else (lambda m: count_flops(m, shape))
    assert match.reached == size(match.small) / size(model)
    assert fraction - 0.05 < match.reached <= fraction
    total = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    one_fewer = copy.deepcopy(model)  # one channel less removed no longer fits
    bnscale_pruner(one_fewer, ratio=(match.removed - 1.5) / total).step()
    assert size(one_fewer) > fraction * size(model)


def test_a_channel_ratio_prunes_that_share_and_the_report_tells_what_went():
    model = tiny_vgg()
    small, report = prune_tp(model, Config(ratio=0.5, depth=11, width=0.125))
    total = sum(layer.total for layer in report.layers)
    assert sum(layer.kept for layer in report.layers) == total - total // 2
    assert report.ratio == 0.5 and report.params_after == count_params(small)
    assert [layer.kept for layer in report.layers] == [c for c in small.channels if c != "M"]
    removed = torch.cat([model.get_submodule(layer.name).weight.detach().abs()[
        sorted(set(range(layer.total)) - set(layer.indices))] for layer in report.layers])
    assert report.threshold == float(removed.max())
    assert small.pruned_from["channels"] == total


@pytest.mark.parametrize("changes, message", [
    ({"arch": "resnet", "depth": 11}, "runs on VGG"),
    ({"threshold": 0.01}, "not --threshold"),
    ({"min_channels": 3}, "--min-channels"),
])
def test_what_the_baseline_cannot_run_is_refused_in_one_line(changes, message):
    with pytest.raises(ValueError, match=message) as err:
        baseline_config(Config(**changes), REG)
    assert "\n" not in str(err.value)


def tiny_config(tmp_path, monkeypatch, **changes) -> Config:
    write_fashion(tmp_path / "data" / "fashion-mnist", monkeypatch)
    return load_config("demo", {"dataset": "fashion-mnist", "data_dir": str(tmp_path / "data"),
                                "depth": 11, "width": 0.0625, "batch_size": 32, "epochs": 1,
                                "finetune_epochs": 1, "device": "cpu", **changes})


def test_the_harness_is_ncslims_a_reg_of_0_trains_as_no_penalty_bit_for_bit(tmp_path,
                                                                             monkeypatch):
    cfg = tiny_config(tmp_path, monkeypatch, penalty="none")
    data = load_data(cfg, torch.device("cpu"))
    ours, _ = sparsity_stage(cfg, data, tmp_path / "ncslim")
    theirs, _ = train_baseline(baseline_config(cfg, 0.0), data, tmp_path / "tp", 0.0)
    pushed, _ = train_baseline(baseline_config(cfg, 0.1), data, tmp_path / "tp-0.1", 0.1)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key
    gammas = [k for k, v in ours.state_dict().items() if k.endswith(".weight") and v.dim() == 1]
    assert all(not torch.equal(ours.state_dict()[k], pushed.state_dict()[k]) for k in gammas)


def test_a_tiny_run_writes_results_that_report_labels_as_the_baseline(tmp_path, monkeypatch,
                                                                       capsys):
    run = tmp_path / "runs" / "tp"
    cfg = tiny_config(tmp_path, monkeypatch, target_params=0.5, out=str(run))
    results = run_tp_baseline(cfg, reg=REG)
    written = json.loads((run / "results.json").read_text())
    assert written["baseline"]["key"] == "tp-bnscale" and written["baseline"]["reg"] == REG
    assert written["baseline"]["target"] == {"measure": "params", "kept": 0.5}
    assert written["config"]["penalty"] == "none" and written["config"]["lam"] == REG
    assert written["params"]["removed"] >= 0.5 and results["params"] == written["params"]
    trained = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text()
               .splitlines()]
    assert trained[0]["lam"] == REG and trained[0]["penalty"] > 0
    assert all((run / name).is_file() for name in ("pruned.pt", "final.pt", "summary.txt"))
    (row,) = collect(tmp_path / "runs")
    assert row["setting"] == "tp-bnscale(reg=0.001)" and row["penalty"] == "tp-bnscale"
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    table = (tmp_path / "report" / "summary.md").read_text()
    assert "| tp-bnscale(reg=0.001) | 0.001 | params <= 0.5 | 1 |" in table


def test_a_target_the_peer_cannot_reach_is_noted_and_the_others_still_run(tmp_path, monkeypatch,
                                                                          capsys):
    import tp_baseline

    from ncslim.run.baselines import TargetUnreachable

    monkeypatch.setattr(tp_baseline, "cached_data", lambda cfg, cache: None)
    monkeypatch.setattr(tp_baseline, "train_baseline", lambda *args, **kwargs: (None, 0.9))
    pruned = []

    def prune_and_finetune(model, acc, data, target, out, reg, resume):
        if target.ratio == 0.85:
            raise TargetUnreachable("Torch-Pruning cannot bring the channels to 15.0% of the "
                                    "original at any ratio (reached 22.1% at best); ask for less")
        out.mkdir(parents=True)
        (out / "results.json").write_text("{}")
        pruned.append(target.ratio)

    monkeypatch.setattr(tp_baseline, "prune_and_finetune_baseline", prune_and_finetune)
    targets = [("ratio", 0.5), ("ratio", 0.85), ("ratio", 0.7)]
    tp_baseline.run_one("demo", {}, REG, 0, targets, tmp_path, {})
    assert pruned == [0.5, 0.7]  # the unreachable target did not stop the one after it
    run = tmp_path / "tp-bnscale_reg0.001_s0"
    assert "reached 22.1% at best" in (run / "ratio-0.85" / "unreachable.txt").read_text()
    assert "ratio-0.85: Torch-Pruning cannot" in capsys.readouterr().err
    tp_baseline.run_one("demo", {}, REG, 0, targets, tmp_path, {})  # a rerun: nothing left
    assert pruned == [0.5, 0.7] and "done, skipped" in capsys.readouterr().err
