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

from .config import Config
from .methods import cost_weights
from .models import SlimmableNet
from .models.scales import find_scales
from .prune import MEASURES, PruneReport, prune_model, prune_to_budget
from .prune.costs import cost_weighted_scores
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
    options = {**cfg.selection_options(), "compensate": cfg.compensates()}
    if cfg.penalty == "vcp":  # VCP's own rule: |mu| <= vcp_mu and sigma <= vcp_sigma
        return prune_model(model, threshold=1.0, scores=vcp_rule_scores(model, cfg), **options)
    rule = cfg.prune_rule()
    budget = cfg.budget()
    if budget is not None:
        measure, fraction = budget
        log.info("searching the prune ratio that keeps %g of the %s (counts them at each step)",
                 fraction, MEASURES[measure][0])
        weights = cost_weights(cfg, model)
        if weights is not None:  # ranked already
            options.update(scores=cost_weighted_scores(model, weights, options["ranking"]),
                           ranking="global")
        return prune_to_budget(model, fraction, measure, **options)
    log.info("pruning by %s (and counting parameters and FLOPs)",
             ", ".join(f"{k} {v:g}" for k, v in rule.items() if v is not None))
    return prune_model(model, **rule, **options)


def check_reachable(model: nn.Module, cfg: Config) -> None:
    """Refuse, before training, a pruning target the network cannot reach with the layers'
    floors (``min_channels``, ``max_layer_ratio``, ``round_to``): one line naming the closest
    target it can reach. VCP and ``--threshold`` name no target."""
    if cfg.penalty == "vcp" or cfg.threshold is not None:
        return
    options = cfg.selection_options()
    floors = _floor_hint(cfg)
    report = prune_model(model, ratio=1.0 - 1e-9, **options)[1]  # all but what the rule keeps
    budget = cfg.budget()
    if budget is None:
        most, channels = report.removed_fraction, sum(la.total for la in report.layers)
        if cfg.ratio is not None and cfg.ratio > most + 1e-9:
            raise ValueError(f"--ratio {cfg.ratio:g} cannot be reached: {floors}, at most "
                             f"{most:.1%} of the {channels:,} channels can go; use --ratio "
                             f"{math.floor(most * 1000) / 1000:g} or less")
        return
    measure, fraction = budget
    after, before = ((report.flops_after, report.flops_before) if measure == "flops"
                     else (report.params_after, report.params_before))
    if after > fraction * before:
        what, flag = MEASURES[measure]
        least = math.ceil(after / before * 1000) / 1000
        raise ValueError(f"{flag} {fraction:g} cannot be reached: {floors}, the network keeps "
                         f"at least {after / before:.1%} of its {what}; use {flag} {least:g} or "
                         f"more")


def check_reachable_in_passes(model: nn.Module, cfg: Config) -> None:
    """With ``--passes N`` and ``--pass-target each``, every pass keeps its ``--target-flops`` or
    ``--target-params`` share of the model it starts with, so the final model keeps the share to
    the N-th power, and a pass that cannot reach its share fails, mid run. Refuse that before
    training: a share whose N-th power lies below the floor that N prunings at ratio ~1 reach,
    naming a share that works, and ``--pass-target total`` (which :func:`check_reachable`
    passed). (A ``--ratio`` a pass cannot reach prunes what it can, with a warning.)"""
    budget = cfg.budget()
    if cfg.passes == 1 or cfg.pass_target != "each" or cfg.penalty == "vcp" or \
            cfg.threshold is not None or budget is None:
        return
    options, n, reports, start = cfg.selection_options(), cfg.passes, [], model
    for _ in range(n):
        model, report = prune_model(model, ratio=1.0 - 1e-9, **options)
        reports.append(report)
    first, last = reports[0], reports[-1]
    (what, flag), value = MEASURES[budget[0]], budget[1]
    floor = (last.flops_after / first.flops_before if budget[0] == "flops"
             else last.params_after / first.params_before)
    if floor > value ** n * (1 + 1e-9):
        least = _least_share(start, cfg, floor ** (1.0 / n))
        raise ValueError(f"{flag} {value:g} in each of {n} passes (--pass-target each) leaves the "
                         f"final model {value ** n:.2%} of its {what}, but {_floor_hint(cfg)}, "
                         f"it keeps at least {floor:.2%}; use {flag} {least:g} or more, or "
                         f"--pass-target total to aim the final model at {flag} {value:g}")


def _least_share(model: nn.Module, cfg: Config, start: float) -> float:
    """The least per-pass budget share, from ``start`` up in 3 % steps, that ``cfg.passes``
    prunings of ``model`` each reach, with a step to spare: discrete channels make a pass keep
    less than its share, which leaves the next pass less to take its share of."""
    measure, options = cfg.budget()[0], cfg.selection_options()  # type: ignore[index]
    share = math.ceil(start * 1000) / 1000
    for _ in range(60):
        try:
            for trial in (share, share * 1.03):
                small = model
                for _ in range(cfg.passes):
                    small = prune_to_budget(small, min(trial, 1.0), measure, **options)[0]
            return share
        except ValueError:
            share = math.ceil(share * 1.03 * 1000) / 1000
    return share


def _floor_hint(cfg: Config) -> str:
    """What holds channels in every layer, as flags: "each layer keeps --min-channels 1"."""
    held = [f"--min-channels {cfg.min_channels}"]
    if cfg.max_layer_ratio is not None:
        held.append(f"--max-layer-ratio {cfg.max_layer_ratio:g}")
    if cfg.round_to > 1:
        held.append(f"--round-to {cfg.round_to}")
    return "with each layer held by " + " and ".join(held)


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
