"""What one pruning did: the channels each layer kept, the sizes before and after, and the
record a pruned model inherits from its original."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import SlimmableNet
from ..models.measure import count_flops, count_params


@dataclass
class LayerReport:
    name: str
    kept: int
    total: int
    indices: list[int]  # the channels that stay, in the original layer's numbering


@dataclass
class PruneReport:
    """What a pruning did: the global threshold, channels kept per layer, size before and after."""

    threshold: float
    ratio: float | None
    removed_fraction: float
    layers: list[LayerReport]
    floored: list[str]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    compensated: bool
    capped: list[str] = field(default_factory=list)  # layers held by the max_layer_ratio cap
    max_layer_ratio: float | None = None
    ranking: str = "global"  # how a ratio ranked layers against each other

    def removed(self) -> torch.Tensor:
        """One bool per channel of the pruned layers, in the report's layer order: True where
        this pruning removed it."""
        parts = []
        for layer in self.layers:
            gone = torch.ones(layer.total, dtype=torch.bool)
            gone[torch.as_tensor(layer.indices, dtype=torch.long)] = False
            parts.append(gone)
        return torch.cat(parts)

    @property
    def params_removed(self) -> float:
        return 1.0 - self.params_after / self.params_before

    @property
    def flops_removed(self) -> float:
        return 1.0 - self.flops_after / self.flops_before

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.max_layer_ratio is None:  # no cap: the record of a pruning without one
            del out["capped"], out["max_layer_ratio"]
        if self.ratio is None:  # a threshold compares raw scores: no ranking
            del out["ranking"]
        out.update(params_removed=self.params_removed, flops_removed=self.flops_removed,
                   macs_before=self.flops_before // 2, macs_after=self.flops_after // 2)
        return out

    def __str__(self) -> str:
        lines = [f"{'layer':<28} {'kept':>6} / total"]
        lines += [f"{layer.name:<28} {layer.kept:>6} / {layer.total}" for layer in self.layers]
        ranked = f" ({self.ranking} ranking)" if self.ratio is not None else ""
        lines.append(f"threshold {self.threshold:.4g}{ranked}; "
                     f"channels removed {self.removed_fraction:.1%}")
        lines.append(f"params {self.params_before:,} -> {self.params_after:,} "
                     f"({self.params_removed:.1%} removed)")
        lines.append(f"FLOPs  {self.flops_before:,} -> {self.flops_after:,} "
                     f"({self.flops_removed:.1%} removed)")
        if self.floored:
            lines.append(f"kept at the min_channels floor: {', '.join(self.floored)}")
        if self.capped:
            lines.append(f"held at the max_layer_ratio cap ({self.max_layer_ratio:g} of a layer's "
                         f"channels at most): {', '.join(self.capped)}")
        if self.compensated:
            lines.append("compensated: the mean output of the removed channels is folded into "
                         "the layers that read them")
        return "\n".join(lines)


def pruning_report(model: nn.Module, small: nn.Module, shape: Sequence[int],
                   layers: list[LayerReport], cut: float, ratio: float | None, *,
                   held: dict[str, list[str]] | None = None,
                   max_layer_ratio: float | None = None,
                   compensated: bool = False, ranking: str = "global") -> PruneReport:
    """The report of one pruning: sizes counted on both models, channels from ``layers``;
    ``held``: the layers kept at the floor ("floored") and at the cap ("capped")."""
    held = held or {"floored": [], "capped": []}
    return PruneReport(
        threshold=cut, ratio=ratio, layers=layers, floored=held["floored"],
        capped=held["capped"], max_layer_ratio=max_layer_ratio, compensated=compensated,
        ranking=ranking,
        removed_fraction=1.0 - sum(la.kept for la in layers) / sum(la.total for la in layers),
        params_before=count_params(model), params_after=count_params(small),
        flops_before=count_flops(model, shape), flops_after=count_flops(small, shape),
    )


def inherit_record(small: SlimmableNet, model: SlimmableNet, report: PruneReport) -> None:
    """What a pruned model keeps of its original's record: the full size and the data."""
    small.pruned_from = model.pruned_from or {
        "params": report.params_before, "flops": report.flops_before,
        "channels": sum(layer.total for layer in report.layers)}
    small.trained_on = model.trained_on
