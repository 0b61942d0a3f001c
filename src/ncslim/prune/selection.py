"""The channel-selection rule of network slimming, shared by every pruning path.

Which channels stay is decided here, once, from per-channel scores (|gamma| unless other scores
are given): rank the scores of all prunable layers together and remove the lowest ``ratio`` of
them, or remove every channel scoring <= ``threshold``; then no layer keeps fewer than
``min_channels`` channels, none loses more than ``max_layer_ratio`` of its channels (network
slimming's per-pass cap), and kept counts are rounded up to multiples of ``round_to``. The
floor's default is 2 (:data:`DEFAULT_MIN_CHANNELS`): a layer of one ReLU channel dies when that
channel's shift turns negative, and the whole network with it (docs/lambda-controller.md).

How a ratio ranks the channels of different layers against each other is the ``ranking``
(:data:`RANKINGS`): ``global`` compares the raw scores, as network slimming does; ``layer``
divides each layer's scores by their mean first, as Torch-Pruning's BN-scale pruner does, so a
layer of small gammas is not emptied before others are touched. ``auto`` (the default) is
``layer`` for a FLOPs budget and ``global`` otherwise, the winner of each where both were
measured (docs/lambda-controller.md, "Where the channels go"). A threshold compares raw scores
whatever the ranking.

:mod:`ncslim.prune.cut` (our own families) and :mod:`ncslim.prune.generic` (any CNN, through
Torch-Pruning) both apply it; this module depends on neither, nor on anything above them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def _raw(scores: torch.Tensor, layer_of: torch.Tensor | None,
         sizes: torch.Tensor) -> torch.Tensor:
    return scores


def _layer_mean(scores: torch.Tensor, layer_of: torch.Tensor | None,
                sizes: torch.Tensor) -> torch.Tensor:
    if layer_of is None:
        layer_of = torch.repeat_interleave(torch.arange(sizes.numel(), device=scores.device),
                                           sizes)
    sums = torch.zeros(sizes.numel(), device=scores.device, dtype=scores.dtype)
    means = sums.index_add_(0, layer_of, scores) / sizes.clamp(min=1).to(scores)
    return scores / means.clamp(min=1e-12)[layer_of]


# how layers' scores are made comparable before the global ranking: each takes the scores of
# all layers as one vector, the layer of each score (None: it builds the index if it needs
# one), and the layers' sizes (one vectorised pass, shared by the cut and the controller's aim)
RANKINGS = {"global": _raw, "layer": _layer_mean}
AUTO_RANKING = {"flops": "layer"}  # per budget measure; any other target: global
DEFAULT_RANKING = "auto"
DEFAULT_MIN_CHANNELS = 2  # one channel left in a layer can die, and the network with it


def resolve_ranking(ranking: str, measure: str | None = None) -> str:
    """The ranking that applies: ``ranking``, or for ``auto`` the one measured best for a
    budget of ``measure`` ("flops", "params"; None: a ratio)."""
    check_ranking(ranking)
    return AUTO_RANKING.get(measure or "", "global") if ranking == "auto" else ranking


def rank_scores(scores: torch.Tensor, sizes: Sequence[int] | torch.Tensor, ranking: str,
                layer_of: torch.Tensor | None = None) -> torch.Tensor:
    """``scores`` (the layers' of ``sizes``, one after the other) as ``ranking`` compares them;
    ``layer_of`` (each score's layer) may be given to save building it."""
    return RANKINGS[ranking](scores, layer_of, torch.as_tensor(sizes, device=scores.device))


@dataclass
class Selection:
    """The outcome of the rule over several layers (or coupled groups of channels)."""

    keep: list[torch.Tensor]  # per layer: sorted indices of the channels that stay
    threshold: float  # the score threshold the rule amounts to
    floored: list[bool]  # per layer: whether the min_channels floor applied
    capped: list[bool]  # per layer: whether the max_layer_ratio cap applied


def check_ranking(ranking: str, allow_auto: bool = True) -> None:
    names = ("auto", *RANKINGS) if allow_auto else tuple(RANKINGS)
    if ranking not in names:
        raise ValueError(f"ranking (--ranking) must be one of {', '.join(names)}, got "
                         f"{ranking!r}")


def check_rule(ratio: float | None, threshold: float | None, min_channels: int,
               round_to: int, max_layer_ratio: float | None = None,
               ranking: str = "global") -> None:
    """Raise ValueError unless exactly one of ratio / threshold is given and all are in range
    (``ranking``: one of :data:`RANKINGS`, resolved)."""
    check_ranking(ranking, allow_auto=False)
    if (ratio is None) == (threshold is None):
        raise ValueError("prune_model: give exactly one of ratio or threshold")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    if threshold is not None and not (threshold >= 0.0 and math.isfinite(threshold)):
        raise ValueError(f"prune threshold must be a finite number >= 0, got {threshold}")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be an int >= 1, got {min_channels}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an int >= 1, got {round_to}")
    if max_layer_ratio is not None and not (
            isinstance(max_layer_ratio, (int, float)) and 0.0 < max_layer_ratio <= 1.0):
        raise ValueError(f"max_layer_ratio (--max-layer-ratio) must be in (0, 1], got "
                         f"{max_layer_ratio}")


def channel_scores(modules: Mapping[str, nn.Module], bn: str,
                   scores: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """The ranking scores of one BN's channels: ``scores[bn]`` if given, else |gamma|."""
    weight = modules[bn].weight.detach()
    if scores is None:
        return weight.abs().float()
    if bn not in scores or scores[bn].numel() != weight.numel():
        raise ValueError(f"scores must hold {weight.numel()} values for BN {bn}, got "
                         f"{'none' if bn not in scores else scores[bn].numel()}")
    return scores[bn].detach().to(weight.device).float().flatten()


def global_keep(scores: torch.Tensor, ratio: float | None, threshold: float | None,
                ranked: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Mask over all prunable channels, and the score threshold it amounts to (the highest
    score removed); a ratio removes the lowest of ``ranked`` (default: ``scores``)."""
    if threshold is not None:
        return scores > threshold, threshold
    removed = int(ratio * scores.numel())
    keep = torch.ones_like(scores, dtype=torch.bool)
    if removed == 0:
        return keep, 0.0
    order = torch.argsort(scores if ranked is None else ranked, stable=True)
    keep[order[:removed]] = False
    return keep, float(scores[order[:removed]].max())


def capped_keep(total: int, max_layer_ratio: float | None) -> int:
    """The fewest channels a layer of ``total`` may keep when it loses at most
    ``max_layer_ratio`` of them (0 without a cap)."""
    if max_layer_ratio is None:
        return 0
    # the epsilon keeps 0.29 * 100 from flooring to 28
    return total - min(total, int(max_layer_ratio * total + 1e-9))


def layer_floor(total: int, min_channels: int, max_layer_ratio: float | None = None) -> int:
    """The fewest channels one layer of ``total`` keeps: the floor and the cap together."""
    return max(min(min_channels, total), capped_keep(total, max_layer_ratio))


def layer_keep(scores: torch.Tensor, mask: torch.Tensor, min_channels: int,
               round_to: int, max_layer_ratio: float | None = None,
               ) -> tuple[torch.Tensor, bool, bool]:
    """Indices kept in one layer after the floor, the cap and the rounding; whether the floor
    applied, and whether the cap did."""
    total = scores.numel()
    count = int(mask.sum())
    floored = count < min(min_channels, total)
    capped = count < capped_keep(total, max_layer_ratio)
    target = max(count, layer_floor(total, min_channels, max_layer_ratio))
    target = min(total, -(-target // round_to) * round_to)
    if target == count:
        return mask.nonzero().flatten(), floored, capped
    # Kept channels first, then the strongest of the removed ones.
    ranked = torch.where(mask, torch.full_like(scores, math.inf), scores)
    return ranked.topk(target).indices.sort().values, floored, capped


def select_channels(layer_scores: Sequence[torch.Tensor], ratio: float | None,
                    threshold: float | None, min_channels: int, round_to: int,
                    max_layer_ratio: float | None = None,
                    ranking: str = "global") -> Selection:
    """The rule over all layers: one global ranking (of the scores made comparable by
    ``ranking``), then each layer's floor, cap and rounding. A capped layer keeps its strongest
    channels; the channels it keeps are not taken from other layers instead (as with the
    floor), so fewer than ``ratio`` may go."""
    check_rule(ratio, threshold, min_channels, round_to, max_layer_ratio, ranking)
    flat = torch.cat(list(layer_scores))
    ranked = rank_scores(flat, [s.numel() for s in layer_scores], ranking)
    mask, cut = global_keep(flat, ratio, threshold, ranked)
    keep, floored, capped = [], [], []
    for scores, layer_mask in zip(layer_scores, mask.split([s.numel() for s in layer_scores])):
        kept, hit_floor, hit_cap = layer_keep(scores, layer_mask, min_channels, round_to,
                                              max_layer_ratio)
        keep.append(kept)
        floored.append(hit_floor)
        capped.append(hit_cap)
    return Selection(keep, cut, floored, capped)
