"""Pre-activation bottleneck ResNet for 32x32 inputs (ResNet-164 by default), as in the network
slimming reference: depth 9n+2, stages of widths 16/32/64 with expansion 4, blocks
BN -> ReLU -> conv1x1 -> BN -> ReLU -> conv3x3 (stride) -> BN -> ReLU -> conv1x1 plus the identity
(or a strided conv1x1 when the shape changes).

The first BN of a block reads the residual stream, so it is pruned by channel selection; the two
inner BNs prune their producer conv's filters.

    >>> from ncslim.models import build_model
    >>> build_model("resnet", depth=164).channels["blocks"]
    [18, 18, 18]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import (
    PruneSlot,
    SlimmableNet,
    check_counts,
    check_width,
    downsampled,
    init_weights,
    register_model,
    scaled,
)
from .preact import PreActUnit, check_select, select_after

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(
        self,
        stream: int,
        planes: int,
        mid: list[int],
        stride: int,
        select: list[int] | None,
        bias: bool,
    ) -> None:
        super().__init__()
        out = planes * EXPANSION
        self.unit = PreActUnit(stream, select)
        self.conv1 = nn.Conv2d(self.unit.width, mid[0], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid[0])
        self.conv2 = nn.Conv2d(mid[0], mid[1], 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid[1])
        self.conv3 = nn.Conv2d(mid[1], out, 1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Conv2d(stream, out, 1, stride=stride, bias=False)
            if stride != 1 or stream != out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn2(self.conv1(self.unit(x))))
        out = self.conv3(self.relu(self.bn3(self.conv2(out))))
        return out + (x if self.downsample is None else self.downsample(x))


def _default_channels(width: float, depth: int | None) -> dict[str, Any]:
    check_width(width)
    depth = 164 if depth is None else depth
    if depth < 11 or (depth - 2) % 9:
        raise ValueError(f"resnet depth must be 9n+2 with n >= 1 (e.g. 164), got {depth}")
    n = (depth - 2) // 9
    planes = [scaled(c, width) for c in (16, 32, 64)]
    mid = [[p, p] for p in planes for _ in range(n)]
    return {"stem": scaled(16, width), "planes": planes, "blocks": [n, n, n], "mid": mid,
            "select": {}, "stream_bias": False}


def _check_channels(channels: Any) -> dict[str, Any]:
    keys = {"stem", "planes", "blocks", "mid", "select", "stream_bias"}
    if not isinstance(channels, dict) or set(channels) != keys:
        raise ValueError(f"resnet channels must be a dict with keys {sorted(keys)}")
    counts = [channels["stem"], *channels["planes"], *channels["blocks"]]
    counts += [c for pair in channels["mid"] for c in pair]
    if (len(channels["planes"]) != 3 or len(channels["blocks"]) != 3
            or not all(isinstance(c, int) and c >= 1 for c in counts)
            or len(channels["mid"]) != sum(channels["blocks"])
            or any(len(pair) != 2 for pair in channels["mid"])):
        raise ValueError("resnet channels: stem, 3 planes, 3 block counts and one [c1, c2] pair "
                         "per block, all ints >= 1")
    check_counts("resnet", counts, 3 * sum(channels["blocks"]))
    return channels


@register_model
class ResNet(SlimmableNet):
    arch = "resnet"
    default_channels = staticmethod(_default_channels)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        depth: int | None = None,
        channels: dict[str, Any] | None = None,
        input_size: int = 32,
    ) -> None:
        if channels is None:
            channels = self.default_channels(width, depth)
        super().__init__(num_classes, in_channels, _check_channels(channels), input_size)
        spec = self.channels
        select, bias = spec["select"], spec["stream_bias"]
        mid = iter(spec["mid"])
        stream = spec["stem"]
        self.conv1 = nn.Conv2d(in_channels, stream, 3, padding=1, bias=False)
        for s, (planes, n) in enumerate(zip(spec["planes"], spec["blocks"]), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if s > 1 and i == 0 else 1
                blocks.append(Bottleneck(stream, planes, next(mid), stride,
                                         select.get(f"layer{s}.{i}.unit.bn"), bias))
                stream = planes * EXPANSION
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.head = PreActUnit(stream, select.get("head.bn"))
        self.pool = nn.AvgPool2d(downsampled("resnet", input_size, 2, ceil=True))
        self.fc = nn.Linear(self.head.width, num_classes)
        check_select(self, select)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.pool(self.head(x)).flatten(1))

    def _block_names(self) -> list[str]:
        return [name for name, m in self.named_modules() if isinstance(m, Bottleneck)]

    def prune_slots(self) -> list[PruneSlot]:
        slots = []
        for b in self._block_names():
            slots += [
                PruneSlot(f"{b}.unit.bn", None, (f"{b}.conv1",), fold=f"{b}.bn2"),
                PruneSlot(f"{b}.bn2", f"{b}.conv1", (f"{b}.conv2",), fold=f"{b}.bn3"),
                PruneSlot(f"{b}.bn3", f"{b}.conv2", (f"{b}.conv3",)),
            ]
        slots.append(PruneSlot("head.bn", None, ("fc",)))
        return slots

    def channels_after(self, keep: dict[str, list[int]], stream_bias: bool) -> dict[str, Any]:
        mid = [[len(keep[f"{b}.bn2"]), len(keep[f"{b}.bn3"])] for b in self._block_names()]
        return {**self.channels, "mid": mid, "select": select_after(self, keep),
                "stream_bias": stream_bias or self.channels["stream_bias"]}
