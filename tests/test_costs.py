"""MorphNet's weighting (--cost-weighted): what removing a channel saves, and a budget that
removes costly channels first, the same ones in the controller's aim and in the pruning."""

from __future__ import annotations

import pytest
import torch
from conftest import spread_bn
from test_sparsity import tiny_data

import ncslim
from ncslim.config import load_config
from ncslim.prune.costs import budget_weights, channel_costs, cost_weighted_scores
from ncslim.run.methods import make_method
from ncslim.run.prunerule import prune
from ncslim.run.train import Trainer
from ncslim.sparsity.controller import LambdaController


def test_a_channels_cost_is_its_filter_its_bn_and_its_slice_of_the_next_conv():
    model = ncslim.build_model("vgg", depth=11, width=0.125)  # convs without bias
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    costs = channel_costs(model, "params")
    names = list(costs)
    for i in (1, 3):
        inside, after = convs[i].in_channels, convs[i + 1].out_channels
        assert costs[names[i]] == 9 * inside + 2 + 9 * after
    flops = channel_costs(model, "flops")
    assert flops[names[0]] > flops[names[-1]] > 0  # large maps early, small maps late
    with pytest.raises(ValueError, match="measure must be one of"):
        channel_costs(model, "latency")


def test_a_cost_weighted_budget_removes_costly_channels_first():
    model = spread_bn(ncslim.build_model("vgg", depth=11, width=0.125))
    with torch.no_grad():
        layers = list(ncslim.sparsity.regularizer.find_scales(model).values())
        for depth, gamma in enumerate(layers):  # nearly equal, the cheap late layers weakest
            gamma.fill_(0.5 + 0.01 * (len(layers) - depth))
    base = {"arch": "vgg", "depth": 11, "width": 0.125, "target_flops": 0.5}
    plain = prune(model, load_config(None, base))[1]
    weighted = prune(model, load_config(None, {**base, "cost_weighted": True}))[1]
    assert weighted.flops_after <= 0.5 * weighted.flops_before
    assert weighted.removed_fraction < plain.removed_fraction  # fewer channels for the budget
    weights = budget_weights(model, "flops")
    scores = cost_weighted_scores(model, weights)
    first = min(weights, key=weights.get)
    assert scores[first].min() == max(s.max() for s in scores.values())


def test_cost_weighting_needs_a_budget():
    for rule in ({"ratio": 0.5}, {"threshold": 0.01}, {"penalty": "vcp", "target_flops": 0.5}):
        with pytest.raises(ValueError, match="--cost-weighted weighs channels"):
            load_config(None, {"cost_weighted": True, **rule})
    cfg = load_config(None, {"cost_weighted": True, "target_params": 0.4})
    assert cfg.prune_rule().budget == ("params", 0.4)


def test_the_controller_aims_where_the_weighted_pruning_cuts(tmp_path):
    cfg = load_config(None, {"dataset": "cifar10", "batch_size": 8, "epochs": 1, "lam": "auto",
                             "penalty": "l1", "mode": "proximal", "target_flops": 0.6,
                             "cost_weighted": True, "device": "cpu", "out": str(tmp_path)})
    model = ncslim.build_model("vgg", depth=11, width=0.0625)
    method = make_method(cfg, model, n_train=64, steps=8)
    assert isinstance(method, LambdaController) and method.aim.inverse_weights is not None
    method.every, method.ramp = 2, 0.01
    Trainer(model, tiny_data(), cfg, tmp_path / "stage", 1, method).fit()
    method.begin_epoch(cfg.seed, 1)
    pruned = prune(model, cfg)[1]
    assert method.target_share == pytest.approx(pruned.removed_fraction)
    assert pruned.flops_after <= 0.6 * pruned.flops_before
    layers = {layer.name: layer for layer in pruned.layers}
    removed = []
    for name, size in zip(method.reg.names, method.reg.sizes):
        gone = torch.ones(size, dtype=torch.bool)
        gone[torch.tensor(layers[name].indices, dtype=torch.long)] = False
        removed.append(gone)
    assert torch.equal(method.reg.mask, torch.cat(removed))  # aimed = removed by the pruning


def test_costs_of_another_cnn_through_the_generic_pruner():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10))
    example = torch.randn(1, 3, 16, 16)
    params = channel_costs(model, "params", example_inputs=example)
    # its filter and bias, its BN, its slice of the layer that reads it
    assert params == {"1": 27 + 1 + 2 + 9 * 16, "5": 9 * 8 + 1 + 2 + 10}
    weights = budget_weights(model, "params", example_inputs=example)
    assert sum(weights[n] * size for n, size in (("1", 8), ("5", 16))) == pytest.approx(24)
