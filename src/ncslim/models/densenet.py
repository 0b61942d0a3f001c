"""DenseNet for 32x32 inputs (DenseNet-40 by default): three dense blocks of BN -> ReLU -> conv3x3
layers concatenated to their input, transitions BN -> ReLU -> conv1x1 -> 2x2 average pool, no
bottleneck and no compression, as in the network slimming reference.

Every BN reads the concatenated stream, so pruning never narrows the stream: a channel selection
in front of each BN keeps the surviving channels for that layer's conv only.

    >>> from ncslim.models import build_model
    >>> build_model("densenet", depth=40).channels["growth"]
    12
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import PruneSlot, SlimmableNet, check_width, init_weights, register_model, scaled
from .preact import PreActUnit, check_select, select_after


class DenseLayer(nn.Module):
    def __init__(self, stream: int, growth: int, select: list[int] | None, bias: bool) -> None:
        super().__init__()
        self.unit = PreActUnit(stream, select)
        self.conv = nn.Conv2d(self.unit.width, growth, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.unit(x))], 1)


class Transition(nn.Module):
    def __init__(self, stream: int, select: list[int] | None, bias: bool) -> None:
        super().__init__()
        self.unit = PreActUnit(stream, select)
        self.conv = nn.Conv2d(self.unit.width, stream, 1, bias=bias)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.unit(x)))


def _default_channels(width: float, depth: int | None) -> dict[str, Any]:
    check_width(width)
    depth = 40 if depth is None else depth
    if depth < 7 or (depth - 4) % 3:
        raise ValueError(f"densenet depth must be 3n+4 with n >= 1 (e.g. 40), got {depth}")
    growth = scaled(12, width)
    n = (depth - 4) // 3
    return {"stem": 2 * growth, "growth": growth, "layers": [n, n, n], "select": {},
            "stream_bias": False}


def _check_channels(channels: Any) -> dict[str, Any]:
    keys = {"stem", "growth", "layers", "select", "stream_bias"}
    if not isinstance(channels, dict) or set(channels) != keys:
        raise ValueError(f"densenet channels must be a dict with keys {sorted(keys)}")
    ints = [channels["stem"], channels["growth"], *channels["layers"]]
    if len(channels["layers"]) != 3 or not all(isinstance(c, int) and c >= 1 for c in ints):
        raise ValueError("densenet channels: stem, growth and 3 block lengths must be ints >= 1")
    return channels


@register_model
class DenseNet(SlimmableNet):
    arch = "densenet"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        depth: int | None = None,
        channels: dict[str, Any] | None = None,
    ) -> None:
        if channels is None:
            channels = _default_channels(width, depth)
        super().__init__(num_classes, in_channels, _check_channels(channels))
        spec = self.channels
        select, bias = spec["select"], spec["stream_bias"]
        stream = spec["stem"]
        self.conv1 = nn.Conv2d(in_channels, stream, 3, padding=1, bias=False)
        for b, n in enumerate(spec["layers"], start=1):
            layers = []
            for i in range(n):
                layers.append(DenseLayer(stream, spec["growth"],
                                         select.get(f"dense{b}.{i}.unit.bn"), bias))
                stream += spec["growth"]
            self.add_module(f"dense{b}", nn.Sequential(*layers))
            if b < 3:
                self.add_module(f"trans{b}", Transition(stream, select.get(f"trans{b}.unit.bn"),
                                                        bias))
        self.head = PreActUnit(stream, select.get("head.bn"))
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(self.head.width, num_classes)
        check_select(self, select)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.trans2(self.dense2(x))
        return self.fc(self.pool(self.head(self.dense3(x))).flatten(1))

    def prune_slots(self) -> list[PruneSlot]:
        slots = []
        for name, module in self.named_modules():
            if isinstance(module, (DenseLayer, Transition)):
                slots.append(PruneSlot(f"{name}.unit.bn", None, (f"{name}.conv",)))
        slots.append(PruneSlot("head.bn", None, ("fc",)))
        return slots

    def channels_after(self, keep: dict[str, list[int]], stream_bias: bool) -> dict[str, Any]:
        return {**self.channels, "select": select_after(self, keep),
                "stream_bias": stream_bias or self.channels["stream_bias"]}

