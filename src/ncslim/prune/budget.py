"""Pruning to a budget: the smallest global ratio whose FLOPs or parameters fall to a given
fraction of the original, found by bisection over :func:`~ncslim.prune.cut.prune_model`."""

from __future__ import annotations

from typing import Any

from torch import nn

from .cut import prune_model
from .report import PruneReport
from .selection import DEFAULT_RANKING, resolve_ranking

MEASURES = {"flops": ("FLOPs", "--target-flops"), "params": ("parameters", "--target-params")}


def sizes(report: PruneReport, measure: str) -> tuple[int, int]:
    """``measure`` (FLOPs or parameters) of the pruned model and of the original."""
    if measure == "flops":
        return report.flops_after, report.flops_before
    return report.params_after, report.params_before


def _fits(report: PruneReport, measure: str, fraction: float) -> bool:
    after, before = sizes(report, measure)
    return after <= fraction * before


def prune_to_budget(model: nn.Module, fraction: float, measure: str = "flops",
                    iterations: int = 14, **options: Any) -> tuple[nn.Module, PruneReport]:
    """Prune the smallest global ratio whose ``measure`` falls to ``fraction`` x the original.

    ``measure`` is ``"flops"`` or ``"params"``; both fall as the ratio grows, so the ratio is
    found by bisection. ``options`` go to :func:`prune_model` (``min_channels``, ``round_to``,
    ``max_layer_ratio``, ``ranking`` (``auto``: the one for ``measure``), ``compensate``,
    ``scores``, and for other models ``example_inputs`` and ``ignored_layers``).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    options["ranking"] = resolve_ranking(options.get("ranking", DEFAULT_RANKING), measure)
    what, flag = MEASURES[measure]
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ValueError(f"{flag} (the fraction of {what} kept) must be in (0, 1], "
                         f"got {fraction}")
    low, high = 0.0, 1.0 - 1e-9
    best = prune_model(model, ratio=low, **options)
    if _fits(best[1], measure, fraction):
        return best
    best = prune_model(model, ratio=high, **options)
    if not _fits(best[1], measure, fraction):
        after, before = sizes(best[1], measure)
        raise ValueError(f"{what} cannot fall to {fraction:.1%} of the original ({flag}) even "
                         f"at ratio ~1 (reached {after / before:.1%}); lower "
                         f"--min-channels or --round-to"
                         + (", or raise --max-layer-ratio" if options.get("max_layer_ratio")
                            is not None else ""))
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        candidate = prune_model(model, ratio=middle, **options)
        if _fits(candidate[1], measure, fraction):
            high, best = middle, candidate
        else:
            low = middle
    return best


def prune_to_flops(model: nn.Module, target: float, iterations: int = 14,
                   **options: Any) -> tuple[nn.Module, PruneReport]:
    """Prune the smallest global ratio whose FLOPs fall to ``target`` x the original or below
    (:func:`prune_to_budget` with ``measure="flops"``)."""
    return prune_to_budget(model, target, "flops", iterations, **options)
