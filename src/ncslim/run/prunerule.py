"""The pruning rule a configuration states, the one rule of run, prune, its dry run and sweeps.

    small, report = prune(model, cfg)      # by --ratio, --threshold, --target-flops/-params
                                           # (--cost-weighted), or VCP's own rule
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch
from torch import nn

from ..config import Config
from ..models import SlimmableNet
from ..prune import MEASURES, PruneReport, prune_model, prune_to_budget
from ..prune.costs import cost_weighted_scores
from ..prune.rule import ALMOST_ALL, PruneRule
from ..sparsity.registry import method_spec
from .methods import cost_weights

log = logging.getLogger("ncslim")

NEAR_ZERO = 1e-2  # |gamma| at or below it is near zero: the controller's band for gamma0 = 0.5
SHORTFALL = "--lam auto:"  # how a warning that the controller fell short of its target starts


def prune(model: nn.Module, cfg: Config) -> tuple[SlimmableNet, PruneReport]:
    """Prune by the config's rule, the one rule of run, prune, its dry run and sweeps.

    The method's own rule where it has one (VCP's); else the config's :class:`PruneRule`
    (``threshold``, ``target_flops``, ``target_params`` or ``ratio``, each with
    ``min_channels``, ``max_layer_ratio``, ``round_to``, ``ranking`` and ``compensate``).
    """
    rule, method = cfg.prune_rule(), method_spec(cfg.penalty)
    if method.pruning_scores is not None:  # its own rule: a channel goes where its score <= 1
        own = replace(rule, kind="threshold", value=1.0)
        return own.cut(model, scores=method.pruning_scores(model, cfg),
                       ranking=rule.applied_ranking)
    if rule.budget is not None:
        log.info("searching the prune ratio that keeps %g of the %s (counts them at each step)",
                 rule.value, MEASURES[rule.measure][0])
        weights = cost_weights(cfg, model)
        if weights is not None:  # ranked already
            return rule.cut(model, scores=cost_weighted_scores(model, weights,
                                                               rule.applied_ranking),
                            ranked=True)
        return rule.cut(model)
    log.info("pruning by %s (and counting parameters and FLOPs)", rule.label())
    return rule.cut(model)


def check_reachable(model: nn.Module, cfg: Config) -> None:
    """Refuse, before training, a pruning target the network cannot reach with the layers'
    floors (``min_channels``, ``max_layer_ratio``, ``round_to``): one line naming the closest
    target it can reach. A method's own rule and ``--threshold`` name no target."""
    if not method_spec(cfg.penalty).own_rule:
        cfg.prune_rule().check_reachable(model)


def check_reachable_in_passes(model: nn.Module, cfg: Config) -> None:
    """With ``--passes N`` and ``--pass-target each``, every pass keeps its ``--target-flops`` or
    ``--target-params`` share of the model it starts with, so the final model keeps the share to
    the N-th power, and a pass that cannot reach its share fails, mid run. Refuse that before
    training: a share whose N-th power lies below the floor that N prunings at ratio ~1 reach,
    naming a share that works, and ``--pass-target total`` (which :func:`check_reachable`
    passed). (A ``--ratio`` a pass cannot reach prunes what it can, with a warning.)"""
    rule = cfg.prune_rule()
    if cfg.passes == 1 or cfg.pass_target != "each" or method_spec(cfg.penalty).own_rule or \
            rule.budget is None:
        return
    options, n, reports, start = rule.options(), cfg.passes, [], model
    for _ in range(n):
        model, report = prune_model(model, ratio=ALMOST_ALL, **options)
        reports.append(report)
    first, last = reports[0], reports[-1]
    what, flag, value = MEASURES[rule.measure][0], rule.flag, rule.value
    floor = (last.flops_after / first.flops_before if rule.measure == "flops"
             else last.params_after / first.params_before)
    if floor > value ** n * (1 + 1e-9):
        least = _least_share(start, rule, n, floor ** (1.0 / n))
        raise ValueError(f"{flag} {value:g} in each of {n} passes (--pass-target each) leaves the "
                         f"final model {value ** n:.2%} of its {what}, but {rule.floor_hint()}, "
                         f"it keeps at least {floor:.2%}; use {flag} {least:g} or more, or "
                         f"--pass-target total to aim the final model at {flag} {value:g}")


def _least_share(model: nn.Module, rule: PruneRule, passes: int, start: float) -> float:
    """The least per-pass budget share, from ``start`` up in 3 % steps, that ``passes``
    prunings of ``model`` each reach, with a step to spare: discrete channels make a pass keep
    less than its share, which leaves the next pass less to take its share of."""
    share = math.ceil(start * 1000) / 1000
    for _ in range(60):
        try:
            for trial in (share, share * 1.03):
                small = model
                for _ in range(passes):
                    small = prune_to_budget(small, min(trial, 1.0), rule.measure,
                                            **rule.options())[0]
            return share
        except ValueError:
            share = math.ceil(share * 1.03 * 1000) / 1000
    return share


def prune_dry_run(model: SlimmableNet, cfg: Config, ratios: list[float] | None = None,
                  ) -> list[tuple[str, tuple[SlimmableNet, PruneReport]]]:
    """Each pruning of a dry run, labelled: at each of ``ratios``, or by the config's own rule
    when ``ratios`` is None (and always with VCP, whose rule has no ratio). Nothing is written.

    Every one goes through :func:`prune`, so ``min_channels``, ``max_layer_ratio``,
    ``round_to`` and ``compensate`` apply; the labels read "ratio 0.3", "threshold 0.01",
    "target-flops 0.4", "target-params 0.3" or "VCP rule".
    """
    method = method_spec(cfg.penalty)
    if method.own_rule:
        return [(method.rule_label, prune(model, cfg))]
    if ratios is None:
        pruned = prune(model, cfg)  # first: it names a missing rule better than the label
        return [(cfg.prune_rule().label(), pruned)]
    no_rule = {"threshold": None, "target_flops": None, "target_params": None}
    return [(f"ratio {r:g}", prune(model, replace(cfg, ratio=r, **no_rule))) for r in ratios]


def shortfall_warnings(gammas: torch.Tensor, cfg: Config, report: PruneReport,
                       sparse_acc: float, pruned_acc: float) -> list[str]:
    """With ``--lam auto``: a warning when pruning cut channels still alive (|gamma| above the
    near-zero band) and that cost accuracy (half a point or more). ``gammas``: the trained
    model's |gamma|, all BN layers in one vector (:func:`find_scales` order). It tells a
    *shortfall* (fewer channels near zero than pruning removed) from a *mismatch* (enough near
    zero, but the cut chose others: coupled channels scored otherwise than the controller's aim).
    """
    if cfg.lam != "auto" or sparse_acc - pruned_acc < 0.005:
        return []
    removed = report_removed(report, gammas.numel())
    near = int((gammas <= NEAR_ZERO).sum())
    gone = sum(layer.total - layer.kept for layer in report.layers)
    if removed is not None:
        live_cut = int((removed.to(gammas.device) & (gammas > NEAR_ZERO)).sum())
    else:  # the report's groups are not the BN channels: count what cannot be near zero
        live_cut = max(gone - near, 0)
    if live_cut == 0:
        return []
    drop = f"the test accuracy fell from {sparse_acc:.2%} to {pruned_acc:.2%} before fine-tuning"
    if near < gone:
        return [f"{SHORTFALL} shortfall: sparsity training ended with "
                f"{near / gammas.numel():.1%} of the channels near zero (|gamma| <= "
                f"{NEAR_ZERO:g}), short of the {report.removed_fraction:.1%} pruning removed: it "
                f"cut {live_cut} live channels, and {drop} (docs/lambda-controller.md, 'When it "
                f"falls short')"]
    return [f"{SHORTFALL} mismatch: sparsity training brought {near / gammas.numel():.1%} of "
            f"the channels near zero (|gamma| <= {NEAR_ZERO:g}), enough for the "
            f"{report.removed_fraction:.1%} pruning removed, but pruning ranked other channels "
            f"lower: it cut {live_cut} live channels, and {drop} (docs/lambda-controller.md)"]


def report_removed(report: PruneReport, channels: int) -> torch.Tensor | None:
    """The channels a pruning removed, one bool per BN channel in the report's layer order, when
    its layers are the BN layers (every ``--arch`` family); else None."""
    if sum(layer.total for layer in report.layers) != channels:
        return None
    return report.removed()
