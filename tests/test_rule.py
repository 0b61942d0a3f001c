"""The prune rule as one value (ncslim.prune.rule.PruneRule): built once from a config, read by
the cut, the dry run, the controller's aim, passes, baselines and the Lightning callback."""

from __future__ import annotations

import pytest
import torch
from conftest import spread_bn

import ncslim
from ncslim.config import load_config
from ncslim.prune import prune_model, prune_to_budget
from ncslim.prune.rule import KINDS, PruneRule


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return spread_bn(ncslim.build_model("vgg", num_classes=10, in_channels=1, depth=11,
                                        width=0.0625))


@pytest.mark.parametrize("given, kind, value", [
    ({}, "ratio", 0.5),
    ({"ratio": 0.7}, "ratio", 0.7),
    ({"threshold": 0.01}, "threshold", 0.01),
    ({"target_flops": 0.4}, "target_flops", 0.4),
    ({"target_params": 0.3}, "target_params", 0.3),  # the default ratio gives way
])
def test_a_config_states_one_rule(given, kind, value):
    rule = load_config(None, given).prune_rule()
    assert (rule.kind, rule.value) == (kind, value)
    assert rule.as_dict() == {kind: value}
    assert rule.label() == f"{kind.replace('_', '-')} {value:g}"
    assert rule.budget == ((kind.removeprefix("target_"), value) if "target" in kind else None)


def test_the_config_hands_its_options_and_compensation_to_the_rule():
    cfg = load_config(None, {"target_flops": 0.4, "min_channels": 3, "round_to": 2,
                             "max_layer_ratio": 0.5, "lam": "auto", "penalty": "l1"})
    rule = cfg.prune_rule()
    assert rule.options() == {"min_channels": 3, "round_to": 2, "max_layer_ratio": 0.5,
                              "ranking": "layer"}  # auto: layer for a FLOPs budget
    assert rule.compensate and rule.flag == "--target-flops"
    assert rule.with_ratio(0.3).as_dict() == {"ratio": 0.3}
    assert rule.with_ratio(0.3).applied_ranking == "global"


@pytest.mark.parametrize("kind, value, allowed", [
    ("ratio", 1.0, r"in \[0, 1\)"), ("ratio", -0.1, r"in \[0, 1\)"),
    ("threshold", float("nan"), "a finite number >= 0"),
    ("target_flops", 0.0, r"in \(0, 1\]"), ("target_params", 1.5, r"in \(0, 1\]"),
    ("ratio", True, r"in \[0, 1\)"),
])
def test_a_value_out_of_range_is_named(kind, value, allowed):
    with pytest.raises(ValueError, match=f"{kind} must be {allowed}, got"):
        PruneRule(kind, value)


def test_an_unknown_kind_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="a prune rule is one of " + ", ".join(KINDS)):
        PruneRule("share", 0.5)
    with pytest.raises(ValueError, match="min_channels must be an int >= 1"):
        PruneRule("ratio", 0.5, min_channels=0)
    with pytest.raises(ValueError, match="ranking"):
        PruneRule("ratio", 0.5, ranking="sideways")


def test_the_cut_is_prune_model_or_the_budget_search(model):
    ratio = PruneRule("ratio", 0.5, min_channels=2)
    small, report = ratio.cut(model)
    _, direct = prune_model(model, ratio=0.5, min_channels=2)
    assert [la.indices for la in report.layers] == [la.indices for la in direct.layers]
    budget = PruneRule("target_params", 0.5, ranking="global")
    _, searched = budget.cut(model)
    _, direct = prune_to_budget(model, 0.5, "params", ranking="global")
    assert searched.params_after == direct.params_after <= 0.5 * direct.params_before
    assert budget.cut(model, compensate=True)[1].compensated
    assert not budget.cut(model)[1].compensated


def test_a_target_out_of_reach_names_the_closest_value(model):
    with pytest.raises(ValueError, match=r"--ratio 0.99 cannot be reached: with each layer held "
                                         r"by --min-channels 2, at most [\d.]+% .* use --ratio"):
        PruneRule("ratio", 0.99).check_reachable(model)
    with pytest.raises(ValueError, match=r"--target-flops 0.001 cannot be reached: .* "
                                         r"--round-to 4, the network keeps at least"):
        PruneRule("target_flops", 0.001, round_to=4).check_reachable(model)
    PruneRule("ratio", 0.5).check_reachable(model)
    PruneRule("threshold", 10.0).check_reachable(model)  # names no target
