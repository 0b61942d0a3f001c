"""The lambda controller's aim: which channels pruning to the target would remove now, chosen on
the device without a host sync, ranked and floored exactly as the cut ranks and floors them."""

from __future__ import annotations

import torch

from ..prune.selection import check_ranking, layer_floor, rank_scores


class ChannelAim:
    """The channels to aim the penalty at, from the |gamma| of a regularizer's BN layers.

    ``sizes``: the channels of each BN layer, in the regularizer's order. Each layer's floor
    (``min_channels``, and what the ``max_layer_ratio`` cap keeps) is never aimed at, whatever
    the target. ``ranking`` is the cut's own, resolved (``global`` or ``layer``). ``weights``
    (one per channel) make the aim rank ``|gamma| / weight``: MorphNet's cost weighting
    (:mod:`ncslim.prune.costs`), as pruning to the budget then does. ``units`` (from
    :func:`ncslim.prune.generic.channel_groups`: group sizes, and each BN channel's group
    channel, -1 for none) make the aim rank and mark coupled group channels, scored as the cut
    scores them: by the largest |gamma| of their members.
    """

    def __init__(self, sizes: list[int], min_channels: int, max_layer_ratio: float | None,
                 ranking: str, weights: torch.Tensor | None = None,
                 units: tuple[list[int], torch.Tensor] | None = None) -> None:
        check_ranking(ranking, allow_auto=False)
        self.ranking = ranking
        self.inverse_weights = None if weights is None else 1.0 / weights.clamp(min=1e-12)
        layers = sizes if units is None else units[0]
        counts = torch.tensor(layers)
        floors = torch.tensor([layer_floor(n, min_channels, max_layer_ratio) for n in layers])
        # each BN channel's group channel; the last index stands for "in no group"
        self.unit_of = None if units is None else torch.where(
            units[1] < 0, int(counts.sum()), units[1])
        self.removable = 1.0 - float(floors.sum()) / max(int(counts.sum()), 1)
        self.layer_of = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self.floor_of = torch.repeat_interleave(floors, counts)  # per unit: its layer's floor
        self.layer_start = counts.cumsum(0) - counts
        self.sizes = counts

    def mask(self, gammas: torch.Tensor, share: float) -> torch.Tensor:
        """One bool per BN channel: the ``share`` of units with the smallest ranked score
        outside each layer's floor, as channels."""
        with torch.no_grad():
            scales = self.scores(gammas)
            if self.layer_of.device != scales.device:
                for name in ("layer_of", "layer_start", "floor_of", "sizes"):
                    setattr(self, name, getattr(self, name).to(scales.device))
            scales = rank_scores(scales, self.sizes, self.ranking, self.layer_of)
            if self.inverse_weights is not None:
                if self.inverse_weights.device != scales.device:  # once, not at every aim
                    self.inverse_weights = self.inverse_weights.to(scales.device)
                scales = scales * self.inverse_weights
            scales = self._floor_kept(scales)
            count = round(share * scales.numel())
            aimed = (torch.zeros_like(scales, dtype=torch.bool) if count == 0
                     else scales <= torch.kthvalue(scales.float(), count).values)
            return self._channels(aimed)

    def scores(self, gammas: torch.Tensor) -> torch.Tensor:
        """|gamma| per unit the cut removes: per channel, or per coupled group channel the
        largest |gamma| of its members (as :mod:`ncslim.prune.generic` scores it)."""
        if self.unit_of is None:
            return gammas
        if self.unit_of.device != gammas.device:
            self.unit_of = self.unit_of.to(gammas.device)
        units = torch.zeros(self.layer_of.numel() + 1, device=gammas.device, dtype=gammas.dtype)
        units.scatter_reduce_(0, self.unit_of, gammas, "amax", include_self=False)
        return units[:-1]

    def _channels(self, units: torch.Tensor) -> torch.Tensor:
        """The BN channels of the marked units (a channel in no group: never marked)."""
        if self.unit_of is None:
            return units
        return torch.cat([units, units.new_zeros(1)])[self.unit_of]

    def _floor_kept(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` with each layer's floor of highest set to inf (sorts, no sync)."""
        falling = torch.argsort(scores, descending=True, stable=True)
        by_layer = falling[torch.argsort(self.layer_of[falling], stable=True)]
        rank = torch.empty_like(by_layer)
        rank[by_layer] = (torch.arange(by_layer.numel(), device=scores.device)
                          - self.layer_start[self.layer_of[by_layer]])
        return torch.where(rank < self.floor_of, torch.inf, scores.float())
