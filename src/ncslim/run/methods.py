"""The sparsity method a configuration asks for (``ncslim.sparsity`` defines the protocol).

    method = make_method(cfg, model, n_train=20000, steps=8 * 312)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import AUTO, Config
from ..models import TracedNet
from ..models.scales import find_scales
from ..sparsity import SparsityMethod
from ..sparsity.controller import LambdaController
from ..sparsity.penalties import make_penalty
from ..sparsity.regularizer import SparsityRegularizer
from ..sparsity.vcp import VariationalScales
from .steps import lr_at

if TYPE_CHECKING:
    from ..prune import PruneReport


def make_method(cfg: Config, model: nn.Module, n_train: int, steps: int,
                sparsity: bool = True) -> SparsityMethod:
    """``sparsity=False`` (fine-tuning) or ``--penalty none``: no sparsity; ``vcp``: the
    Bayesian baseline; else the penalty, with ``--lam auto`` under the lambda controller.
    ``steps`` is the number of training steps of the stage: with ``cfg.epochs`` they give the
    controller the learning rate of every step (``cfg.schedule``)."""
    if not sparsity or cfg.penalty == "none":
        return SparsityMethod(model)
    if cfg.penalty == "vcp":
        kl_weight = 1.0 / n_train if cfg.vcp_kl_weight is None else cfg.vcp_kl_weight
        return VariationalScales(model, kl_weight, cfg.vcp_sigma_init, seed=cfg.seed)
    penalty = make_penalty(cfg.penalty, cfg.start_lam(), **cfg.penalty_params())
    regularizer = SparsityRegularizer(model, penalty, cfg.mode, decay_gammas=cfg.decay_gammas)
    if cfg.lam != AUTO:
        return regularizer
    weights = cost_weights(cfg, model)
    rule = cfg.prune_rule()
    flat = None if weights is None else torch.cat(
        [torch.full_like(gamma, weights[name], dtype=torch.float32)
         for name, gamma in zip(regularizer.names, regularizer.gammas)])
    per_epoch = max(steps // max(cfg.epochs, 1), 1)
    lrs = [lr_at(cfg, epoch, cfg.epochs) for epoch in range(max(cfg.epochs, 1))]
    return LambdaController(regularizer, target_of(cfg, weights), total_steps=steps,
                            weights=flat, min_channels=rule.min_channels,
                            max_layer_ratio=rule.max_layer_ratio, ranking=rule.applied_ranking,
                            schedule=lambda step: lrs[min(step // per_epoch, len(lrs) - 1)],
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


def cost_weights(cfg: Config, model: nn.Module) -> dict[str, float] | None:
    """With ``cost_weighted``: each BN layer's cost of one channel in the budget's measure,
    relative to the mean channel (:mod:`ncslim.prune.costs`); else None."""
    rule = cfg.prune_rule()
    if not cfg.cost_weighted or rule.budget is None:
        return None
    from ..prune.costs import budget_weights

    return budget_weights(model, rule.measure, min_channels=rule.min_channels,
                          max_layer_ratio=rule.max_layer_ratio)


def target_of(cfg: Config, weights: dict[str, float] | None = None,
              ) -> float | Callable[[Any], float]:
    """The share of channels the config's pruning rule removes: its ratio, or for a FLOPs or
    parameter budget a function of the model (what pruning it now would remove, ranking
    ``|gamma| / weight`` with ``weights``)."""
    search = budget_search(cfg, weights)
    if search is None:
        rule = cfg.prune_rule()
        return float(rule.value if rule.kind == "ratio" else 0.0)
    return lambda model: search(model).removed_fraction


def removal_of(cfg: Config, weights: dict[str, float] | None = None,
               ) -> Callable[[Any], torch.Tensor | None] | None:
    """For a FLOPs or parameter budget: a function of the model giving the channels pruning to
    the budget removes now, as one mask in the order of its BatchNorms (the set the controller
    drives to zero); None for a ratio (the controller's own aim is then the cut's)."""
    search = budget_search(cfg, weights)
    if search is None:
        return None
    return lambda model: removed_mask(model, search(model))


def budget_search(cfg: Config, weights: dict[str, float] | None = None,
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
