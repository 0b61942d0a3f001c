"""The penalties as sparsity methods (``--penalty l1`` ... ``scad``, under ``--lam auto`` the
lambda controller), and ``none``: each registered by name (:mod:`.registry`). What the
controller aims at comes from the config's prune rule: its ratio, or for a FLOPs or parameter
budget what pruning to it would remove now, ranked (and cost-weighted) as the cut ranks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..models import TracedNet
from ..models.scales import find_scales
from .controller import LambdaController
from .method import SparsityMethod
from .penalties import make_penalty
from .registry import MethodSpec, Stage, register_method, register_penalties
from .regularizer import SparsityRegularizer

if TYPE_CHECKING:
    from ..prune import PruneReport

AUTO = "auto"  # --lam auto (the config's own constant; this package sits below the config)


def build_penalized(stage: Stage) -> SparsityMethod:
    """The penalty of ``stage.cfg`` on the BN scales; with ``--lam auto`` under the lambda
    controller, aimed at the config's prune rule, with the stage's learning rates."""
    cfg, model, steps = stage.cfg, stage.model, stage.steps
    penalty = make_penalty(cfg.penalty, cfg.start_lam(), **cfg.penalty_params())
    regularizer = SparsityRegularizer(model, penalty, cfg.mode, decay_gammas=cfg.decay_gammas)
    if cfg.lam != AUTO:
        return regularizer
    weights = cost_weights(cfg, model)
    rule = cfg.prune_rule()
    flat = None if weights is None else torch.cat(
        [torch.full_like(gamma, weights[name], dtype=torch.float32)
         for name, gamma in zip(regularizer.names, regularizer.gammas)])
    return LambdaController(regularizer, target_of(cfg, weights), total_steps=steps,
                            weights=flat, min_channels=rule.min_channels,
                            max_layer_ratio=rule.max_layer_ratio, ranking=rule.applied_ranking,
                            schedule=stage.schedule,
                            momentum=cfg.momentum, removal=removal_of(cfg, weights),
                            units=None if weights is not None else coupled_units(
                                model, regularizer.names))


def coupled_units(model: nn.Module, bn_names: list[str]) -> tuple[list[int], torch.Tensor] | None:
    """For a network pruned through Torch-Pruning's graph (``--model``): its coupled groups, so
    that the controller aims at what the cut removes (:func:`ncslim.prune.generic.channel_groups`);
    None for the families, whose pruning slots cut BN channel by BN channel."""
    if not isinstance(model, TracedNet):
        return None
    from ..prune.generic import channel_groups

    reference = next(model.parameters())
    example = torch.zeros(1, *model.input_shape(), device=reference.device, dtype=reference.dtype)
    return channel_groups(model, example, bn_names)


def cost_weights(cfg: Any, model: nn.Module) -> dict[str, float] | None:
    """With ``cost_weighted``: each BN layer's cost of one channel in the budget's measure,
    relative to the mean channel (:mod:`ncslim.prune.costs`); else None."""
    rule = cfg.prune_rule()
    if not cfg.cost_weighted or rule.budget is None:
        return None
    from ..prune.costs import budget_weights

    return budget_weights(model, rule.measure, min_channels=rule.min_channels,
                          max_layer_ratio=rule.max_layer_ratio)


def target_of(cfg: Any, weights: dict[str, float] | None = None,
              ) -> float | Callable[[Any], float]:
    """The share of channels the config's pruning rule removes: its ratio, or for a FLOPs or
    parameter budget a function of the model (what pruning it now would remove, ranking
    ``|gamma| / weight`` with ``weights``)."""
    search = budget_search(cfg, weights)
    if search is None:
        rule = cfg.prune_rule()
        return float(rule.value if rule.kind == "ratio" else 0.0)
    return lambda model: search(model).removed_fraction


def removal_of(cfg: Any, weights: dict[str, float] | None = None,
               ) -> Callable[[Any], torch.Tensor | None] | None:
    """For a FLOPs or parameter budget: a function of the model giving the channels pruning to
    the budget removes now, as one mask in the order of its BatchNorms (the set the controller
    drives to zero); None for a ratio (the controller's own aim is then the cut's)."""
    search = budget_search(cfg, weights)
    if search is None:
        return None
    return lambda model: removed_mask(model, search(model))


def budget_search(cfg: Any, weights: dict[str, float] | None = None,
                  ) -> Callable[[Any], PruneReport] | None:
    """For a FLOPs or parameter budget: the report of pruning a model to it now (the config's
    floors, ``weights`` for cost weighting); None for a ratio."""
    rule = cfg.prune_rule()
    if rule.budget is None:
        return None

    def search(model: nn.Module) -> PruneReport:
        from ..prune.costs import cost_weighted_scores

        if weights is None:
            return rule.cut(model, compensate=False)[1]
        scores = cost_weighted_scores(model, weights, rule.applied_ranking)
        return rule.cut(model, scores=scores, ranked=True, compensate=False)[1]

    return search


def removed_mask(model: nn.Module, report: PruneReport) -> torch.Tensor | None:
    """One bool per BN channel of ``model`` (in :func:`find_scales` order): True where the
    pruning ``report`` describes removes it; None where its layers are not the model's BNs
    (coupled groups, named by their convolutions: the controller then freezes its own aim)."""
    if [layer.name for layer in report.layers] != list(find_scales(model)):
        return None
    return report.removed().to(next(iter(find_scales(model).values())).device)


register_method(MethodSpec("none", "no penalty: plain training (the cut then ranks |gamma| as it "
                                   "stands)", build=lambda stage: SparsityMethod(stage.model)))
register_penalties(MethodSpec("penalty", "a penalty on |gamma|", build=build_penalized,
                              takes_lambda=True))
