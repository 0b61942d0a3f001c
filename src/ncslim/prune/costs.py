"""What removing a channel saves: MorphNet's idea, for FLOPs and parameter budgets.

With ``cost_weighted`` a budget ranks channels by ``|gamma| / cost`` (cost relative to the mean)
instead of ``|gamma|``: of two equally weak channels, the one whose removal saves more goes first.
The lambda controller aims its penalty at the channels that ranking removes, and pruning applies
the same ranking, so both remove the same channels.

A layer's cost is what removing one of its channels saves from the full model (its filter in
the conv that writes it, its BN, its slice of the layers that read it), measured by pruning that
one channel: exact for any architecture the pruner handles, and fixed for the whole training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.scales import find_scales
from .budget import MEASURES
from .cut import prune_model
from .selection import rank_scores


def channel_costs(model: nn.Module, measure: str = "flops", **options: Any) -> dict[str, float]:
    """Per BN layer, keyed by its name: the FLOPs or parameters that removing one of its channels
    saves. ``options`` go to :func:`~ncslim.prune.cut.prune_model` (``min_channels``,
    ``max_layer_ratio``, and for other CNNs ``example_inputs`` and ``ignored_layers``); a layer
    it cannot prune costs 0."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    scales = find_scales(model)
    ones = {name: torch.ones_like(gamma, dtype=torch.float32) for name, gamma in scales.items()}
    costs = {}
    for name in scales:
        scores = dict(ones)
        scores[name] = ones[name].clone()
        scores[name][0] = 0.0  # this channel alone scores below the threshold
        report = prune_model(model, threshold=0.5, scores=scores, **options)[1]
        if measure == "flops":
            costs[name] = float(report.flops_before - report.flops_after)
        else:
            costs[name] = float(report.params_before - report.params_after)
    return costs


def relative_costs(costs: dict[str, float], sizes: dict[str, int]) -> dict[str, float]:
    """Each layer's cost over the mean cost of a channel (layers weighted by their channels)."""
    total = sum(sizes[name] for name in costs)
    mean = sum(costs[name] * sizes[name] for name in costs) / max(total, 1)
    if mean <= 0:
        raise ValueError("no channel of the model saves anything when removed: nothing to weigh")
    return {name: cost / mean for name, cost in costs.items()}


def budget_weights(model: nn.Module, measure: str, **options: Any) -> dict[str, float]:
    """Each BN layer's relative cost of one channel in ``measure`` (1 = the mean channel)."""
    sizes = {name: gamma.numel() for name, gamma in find_scales(model).items()}
    return relative_costs(channel_costs(model, measure, **options), sizes)


def cost_weighted_scores(model: nn.Module, weights: dict[str, float],
                         ranking: str = "global") -> dict[str, torch.Tensor]:
    """``|gamma| / weight`` per channel, keyed by BN name (a layer of weight 0: never first);
    with ``ranking = "layer"`` each |gamma| is first divided by its layer's mean. The scores are
    then ranked as they are (``ranking="global"``): ranking them by layer again would divide
    the weight out."""
    return {name: rank_scores(gamma.detach().abs().float(), [gamma.numel()], ranking)
            / max(weights[name], 1e-12) for name, gamma in find_scales(model).items()}
