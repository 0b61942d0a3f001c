"""Where the channels go (issue 24, part 3): the two rankings of the pruning rule, ``global``
(raw |gamma| over the network) and ``layer`` (each |gamma| over its layer's mean, as
Torch-Pruning's BN-scale pruner), applied alike by the cut, the budget search and the lambda
controller's aim."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import spread_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sparsity import tiny_data
from torch import nn

import ncslim
from ncslim.cli import main
from ncslim.config import field_choices, load_config
from ncslim.models.scales import find_scales
from ncslim.prune.costs import cost_weighted_scores
from ncslim.prune.selection import RANKINGS, select_channels
from ncslim.run.methods import make_method
from ncslim.run.prunerule import report_removed
from ncslim.run.train import Trainer
from ncslim.sparsity.controller import START_LAM, LambdaController
from ncslim.sparsity.regularizer import SparsityRegularizer


def test_the_rankings_are_the_registrys_and_the_flag_offers_them():
    assert set(RANKINGS) == {"global", "layer"}
    assert field_choices("ranking") == ("auto", *RANKINGS)
    assert load_config(None, {}).ranking == "auto"


def _brute_force(layers: list[list[float]], ratio: float, min_channels: int,
                 ranking: str) -> list[list[int]]:
    """The rule written out by hand: order every channel by its (normalised) score, remove the
    lowest ``ratio`` of them, then give each layer back its strongest up to the floor."""
    flat = []
    for layer, scores in enumerate(layers):
        mean = sum(scores) / len(scores)
        for index, score in enumerate(scores):
            ranked = score if ranking == "global" else score / max(mean, 1e-12)
            flat.append((ranked, len(flat), layer, index))
    removed = {(layer, index) for _, _, layer, index in sorted(flat)[:int(ratio * len(flat))]}
    kept = []
    for layer, scores in enumerate(layers):
        stays = [i for i in range(len(scores)) if (layer, i) not in removed]
        floor = min(min_channels, len(scores))
        if len(stays) < floor:
            stays = sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:floor])
        kept.append(stays)
    return kept


@settings(max_examples=60, deadline=None)
@given(layers=st.lists(st.lists(st.integers(1, 10_000), min_size=1, max_size=9), min_size=1,
                       max_size=5),
       ratio=st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95]), min_channels=st.integers(1, 3),
       ranking=st.sampled_from(sorted(RANKINGS)))
def test_each_ranking_keeps_what_the_rule_written_out_keeps(layers, ratio, min_channels, ranking):
    # distinct scores (no ties), powers of two apart within a layer's mean
    seen: set[int] = set()
    distinct = [[v for v in layer if not (v in seen or seen.add(v))] for layer in layers]
    distinct = [[v / 1024 for v in layer] for layer in distinct if layer]
    if not distinct:
        return
    chosen = select_channels([torch.tensor(s, dtype=torch.float64) for s in distinct], ratio,
                             None, min_channels, 1, ranking=ranking)
    ranked_scores = {s / (sum(layer) / len(layer)) for layer in distinct for s in layer}
    if ranking == "layer" and len(ranked_scores) < sum(map(len, distinct)):
        return  # two channels tie after normalising: either may go
    assert [k.tolist() for k in chosen.keep] == _brute_force(distinct, ratio, min_channels,
                                                             ranking)


def test_a_layer_of_small_gammas_is_not_emptied_first_by_the_layer_ranking():
    small, large = torch.linspace(0.01, 0.02, 8), torch.linspace(0.5, 1.0, 8)
    by_value = select_channels([small, large], 0.5, None, 1, 1, ranking="global")
    by_layer = select_channels([small, large], 0.5, None, 1, 1, ranking="layer")
    assert [k.numel() for k in by_value.keep] == [1, 8]  # the floor holds the small layer
    assert [k.numel() for k in by_layer.keep] == [4, 4]  # each loses its own weakest half
    assert by_layer.threshold == pytest.approx(0.75 - 1e-9, abs=0.2)  # the largest |gamma| cut
    # a threshold compares raw scores whatever the ranking
    assert [k.numel() for k in select_channels([small, large], None, 0.1, 1, 1,
                                               ranking="layer").keep] == [1, 8]


def test_a_ranking_the_registry_does_not_hold_is_refused():
    with pytest.raises(ValueError, match=r"ranking \(--ranking\) must be one of global, layer"):
        select_channels([torch.ones(4)], 0.5, None, 1, 1, ranking="mean")


def test_cost_weighting_weighs_the_layer_normalised_gammas():
    model = spread_bn(ncslim.build_model("vgg", num_classes=10, depth=11, width=0.0625))
    weights = {name: 1.0 + i for i, name in enumerate(find_scales(model))}
    scores = cost_weighted_scores(model, weights, "layer")
    for i, (name, gamma) in enumerate(find_scales(model).items()):
        expected = gamma.detach().abs() / gamma.detach().abs().mean() / (1.0 + i)
        torch.testing.assert_close(scores[name], expected)


def _two_layer_controller(ranking: str) -> LambdaController:
    weak, strong = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
    with torch.no_grad():
        weak.weight.copy_(torch.linspace(0.01, 0.02, 8))
        strong.weight.copy_(torch.linspace(0.5, 1.0, 8))
    reg = SparsityRegularizer(nn.Sequential(weak, strong), ncslim.make_penalty("l1", lam=1e-3))
    return LambdaController(reg, target=0.25, total_steps=10, ranking=ranking)


@pytest.mark.parametrize("ranking", sorted(RANKINGS))
def test_the_controller_aims_at_what_the_cut_with_its_ranking_removes(ranking):
    controller = _two_layer_controller(ranking)
    chosen = select_channels([g.detach().abs() for g in controller.reg.gammas], 0.25, None, 1,
                             1, ranking=ranking)
    removed = torch.ones(16, dtype=torch.bool)
    removed[chosen.keep[0]] = False
    removed[8 + chosen.keep[1]] = False
    assert torch.equal(controller.reg.mask, removed)
    assert int(removed[:8].sum()) == (4 if ranking == "global" else 2)


@pytest.mark.parametrize("rule", [{"ratio": 0.6}, {"target_flops": 0.5}])
def test_lam_auto_under_the_layer_ranking_ends_with_the_cuts_channels_at_zero(tmp_path, rule):
    cfg = load_config(None, {"dataset": "cifar10", "batch_size": 8, "epochs": 1, "lam": "auto",
                             "penalty": "l1", "mode": "proximal", "ranking": "layer",
                             "device": "cpu", "out": str(tmp_path), **rule})
    model = spread_bn(ncslim.build_model("vgg", depth=11, width=0.0625))
    method = make_method(cfg, model, n_train=64, steps=8)
    assert method.ranking == "layer"
    method.begin_epoch(0, 0)
    # the global ranking aims at other channels of these gammas: the test sees which one is used
    by_value = make_method(replace(cfg, ranking="global"), model, n_train=64, steps=8)
    by_value.begin_epoch(0, 0)  # a budget's share is measured at the start of each epoch
    assert not torch.equal(by_value.reg.mask, method.reg.mask)
    method.every = 2
    Trainer(model, tiny_data(), cfg, tmp_path / "stage", 1, method).fit()
    gammas = method.reg.scales()
    report = ncslim.run.prunerule.prune(model, cfg)[1]
    assert report.ranking == "layer"
    removed = report_removed(report, gammas.numel())
    assert removed.any() and (gammas[removed] == 0).all()


def test_prune_takes_the_ranking_from_the_command_line(tmp_path, capsys):
    model = spread_bn(ncslim.build_model("vgg", num_classes=10, in_channels=1, depth=11,
                                         width=0.0625))
    ncslim.save_model(model, tmp_path / "m.pt")
    kept = {}
    for ranking in RANKINGS:
        out = tmp_path / ranking
        assert main(["prune", "--checkpoint", str(tmp_path / "m.pt"), "--ratio", "0.7",
                     "--ranking", ranking, "--out", str(out), "--device", "cpu"]) == 0
        record = json.loads((out / "prune.json").read_text())
        assert record["ranking"] == ranking
        kept[ranking] = [layer["kept"] for layer in record["layers"]]
    assert kept["global"] != kept["layer"]


def test_the_controller_on_one_layer_ignores_the_ranking_but_checks_it():
    layer = nn.BatchNorm2d(6)
    reg = SparsityRegularizer(nn.Sequential(layer), ncslim.make_penalty("l1", lam=START_LAM))
    with pytest.raises(ValueError, match="--ranking"):
        LambdaController(reg, target=0.5, total_steps=10, ranking="by-size")


@pytest.mark.parametrize("rule, applied", [({"ratio": 0.7}, "global"),
                                           ({"target_flops": 0.15}, "layer"),
                                           ({"target_params": 0.1}, "global")])
def test_auto_ranks_a_flops_budget_by_layer_and_anything_else_globally(rule, applied):
    cfg = load_config(None, rule)
    assert cfg.ranking == "auto" and cfg.prune_rule().applied_ranking == applied
    model = spread_bn(ncslim.build_model("vgg", num_classes=10, depth=11, width=0.0625))
    assert ncslim.run.prunerule.prune(model, cfg)[1].ranking == applied
    if "target_flops" in rule:  # the library's budget search resolves it the same way
        assert ncslim.prune.prune_to_budget(model, 0.15, "flops")[1].ranking == "layer"
        assert ncslim.prune_model(model, ratio=0.5)[1].ranking == "global"


@pytest.mark.parametrize("rule", [{"ratio": 0.7}, {"target_flops": 0.3}])
def test_a_run_from_before_the_ranking_resumes_only_with_the_global_one(tmp_path, rule):
    from ncslim.run.rundir import write_config

    cfg = load_config(None, {**rule, "out": str(tmp_path)})
    record = {"command": "run", "config": {k: v for k, v in cfg.to_dict().items()
                                           if k != "ranking"}}
    (tmp_path / "config.json").write_text(json.dumps(record))
    write_config(replace(cfg, ranking="global"), tmp_path, "run")  # agrees: nothing raised
    if "ratio" in rule:
        write_config(cfg, tmp_path, "run")  # auto ranks a ratio globally: the same run
    with pytest.raises(ValueError, match=r"--ranking layer \(the run has global\)"):
        write_config(replace(cfg, ranking="auto" if "target_flops" in rule else "layer"),
                     tmp_path, "run")
