"""The pre-activation unit shared by DenseNet and ResNet: channel selection -> BN -> ReLU.

Its BN reads a stream that other layers also read (a concatenation or a residual sum). Pruning
keeps the stream whole and narrows only this unit: the selection gathers the surviving channels
first, so the BN holds just those (per-channel BN commutes with the gather, in training and in
evaluation alike) and the consumer conv reads fewer input channels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ChannelSelect


class PreActUnit(nn.Module):
    def __init__(self, stream: int, select: list[int] | None = None) -> None:
        super().__init__()
        if select is not None:
            if not isinstance(select, list) or not select or any(
                not isinstance(i, int) or not 0 <= i < stream for i in select
            ) or select != sorted(set(select)):
                raise ValueError(
                    f"a channel selection must be a non-empty sorted list of distinct channel "
                    f"indices in [0, {stream}), got {select!r}"
                )
            if len(select) == stream:
                select = None
        self.stream = stream
        self.width = stream if select is None else len(select)
        self.select = ChannelSelect(select)
        self.bn = nn.BatchNorm2d(self.width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.select(x)))


def _units(model: nn.Module) -> dict[str, PreActUnit]:
    return {f"{name}.bn": m for name, m in model.named_modules() if isinstance(m, PreActUnit)}


def check_select(model: nn.Module, select: dict[str, Any]) -> None:
    """Every key of a spec's ``select`` must name the BN of one of the model's units."""
    if not isinstance(select, dict):
        raise ValueError(f"channels['select'] must be a dict of BN name -> indices, got {select!r}")
    unknown = sorted(set(select) - set(_units(model)))
    if unknown:
        raise ValueError(f"channels['select'] names layers this architecture lacks: {unknown}")


def select_after(model: nn.Module, keep: dict[str, list[int]]) -> dict[str, list[int]]:
    """The ``select`` spec once each unit's BN keeps ``keep[bn]`` (indices into its channels)."""
    select = {}
    for bn, unit in _units(model).items():
        current = unit.select.index
        chosen = keep.get(bn, list(range(unit.width)))
        stream = chosen if current is None else [int(current[i]) for i in chosen]
        if len(stream) < unit.stream:
            select[bn] = stream
    return select
