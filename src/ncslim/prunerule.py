"""The pruning rule a configuration states, the one rule of run, prune, its dry run and sweeps.

    small, report = prune(model, cfg)      # by --ratio, --threshold, --target-flops/-params
                                           # (--cost-weighted), or VCP's own rule
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import nn

from .config import Config
from .costs import cost_weighted_scores
from .methods import cost_weights
from .models import SlimmableNet
from .pruning import MEASURES, PruneReport, prune_model, prune_to_budget
from .regularizer import find_scales
from .vcp import vcp_scores

log = logging.getLogger("ncslim")

NEAR_ZERO = 1e-2  # |gamma| at or below it is near zero: the controller's band for gamma0 = 0.5
SHORTFALL = "--lam auto:"  # how a warning that the controller fell short of its target starts


def prune(model: nn.Module, cfg: Config) -> tuple[SlimmableNet, PruneReport]:
    """Prune by the config's rule, the one rule of run, prune, its dry run and sweeps.

    VCP's own rule with ``penalty = "vcp"``; else ``threshold``, ``target_flops``,
    ``target_params`` or ``ratio`` (:meth:`Config.prune_rule`), each with ``min_channels``,
    ``max_layer_ratio``, ``round_to`` and ``compensate``.
    """
    options = {"min_channels": cfg.min_channels, "round_to": cfg.round_to,
               "max_layer_ratio": cfg.max_layer_ratio, "compensate": cfg.compensates()}
    if cfg.penalty == "vcp":  # VCP's own rule: |mu| <= vcp_mu and sigma <= vcp_sigma
        return prune_model(model, threshold=1.0, scores=vcp_rule_scores(model, cfg), **options)
    rule = cfg.prune_rule()
    budget = cfg.budget()
    if budget is not None:
        measure, fraction = budget
        log.info("searching the prune ratio that keeps %g of the %s (counts them at each step)",
                 fraction, MEASURES[measure][0])
        weights = cost_weights(cfg, model)
        if weights is not None:
            options["scores"] = cost_weighted_scores(model, weights)
        return prune_to_budget(model, fraction, measure, **options)
    log.info("pruning by %s (and counting parameters and FLOPs)",
             ", ".join(f"{k} {v:g}" for k, v in rule.items() if v is not None))
    return prune_model(model, **rule, **options)


def vcp_rule_scores(model: nn.Module, cfg: Config) -> dict[str, torch.Tensor]:
    """Scores that ``threshold=1.0`` turns into VCP's pruning rule, from the model's sigmas."""
    sigmas = getattr(model, "vcp_sigma", None)
    if sigmas is None:
        raise ValueError("--penalty vcp prunes by VCP's rule, which needs the sigmas of a model "
                         "trained with --penalty vcp; this model has none (prune it with "
                         "another --penalty, or train it with vcp)")
    return vcp_scores(find_scales(model), sigmas, cfg.vcp_mu, cfg.vcp_sigma)


def prune_dry_run(model: SlimmableNet, cfg: Config, ratios: list[float] | None = None,
                  ) -> list[tuple[str, tuple[SlimmableNet, PruneReport]]]:
    """Each pruning of a dry run, labelled: at each of ``ratios``, or by the config's own rule
    when ``ratios`` is None (and always with VCP, whose rule has no ratio). Nothing is written.

    Every one goes through :func:`prune`, so ``min_channels``, ``max_layer_ratio``,
    ``round_to`` and ``compensate`` apply; the labels read "ratio 0.3", "threshold 0.01",
    "target-flops 0.4", "target-params 0.3" or "VCP rule".
    """
    if cfg.penalty == "vcp":
        return [("VCP rule", prune(model, cfg))]
    if ratios is None:
        ((key, value),) = cfg.prune_rule().items()
        pruned = prune(model, cfg)  # first: it names a missing rule better than the label
        return [(f"{key.replace('_', '-')} {value:g}", pruned)]
    no_rule = {"threshold": None, "target_flops": None, "target_params": None}
    return [(f"ratio {r:g}", prune(model, replace(cfg, ratio=r, **no_rule))) for r in ratios]


def shortfall_warnings(gammas: torch.Tensor, cfg: Config, report: PruneReport,
                       sparse_acc: float, pruned_acc: float) -> list[str]:
    """With ``--lam auto``: a warning when sparsity training ended short of what pruning then
    removed, so that pruning cut channels still alive and cost accuracy (1 point or more).
    ``gammas``: the trained model's |gamma|, all layers in one vector. Fine-tuning wins some of
    it back; more epochs did not help (docs/lambda-controller.md)."""
    if cfg.lam != "auto" or sparse_acc - pruned_acc < 0.01:
        return []
    kept = sum(layer.kept for layer in report.layers)
    live = int((gammas > NEAR_ZERO).sum())
    if live <= kept:
        return []
    return [f"{SHORTFALL} sparsity training ended with {1 - live / gammas.numel():.1%} of the "
            f"channels near zero (|gamma| <= {NEAR_ZERO:g}), short of the "
            f"{report.removed_fraction:.1%} pruning removed: it cut at least {live - kept} "
            f"live channels, and the test accuracy fell from {sparse_acc:.2%} to "
            f"{pruned_acc:.2%} before fine-tuning (MCP and SCAD by --mode proximal reached such "
            f"targets exactly where l1, lp and TL1 fell short: docs/lambda-controller.md)"]
