"""VGG for 32x32 inputs, as in the network slimming reference: conv3x3 -> BN -> ReLU, max-pools,
then a 2x2 average pool and one linear layer.

    >>> from ncslim.models import build_model
    >>> build_model("vgg", num_classes=10, depth=19).channels[:3]
    [64, 64, 'M']
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

POOL = "M"
VGG_CHANNELS: dict[int, list[int | str]] = {
    11: [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512],
    13: [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512],
    16: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512],
    19: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
         512, 512, 512, 512],
}


def _check_channels(channels: Any) -> list[int | str]:
    if not isinstance(channels, list) or not channels:
        raise ValueError(f"vgg channels must be a non-empty list of ints and 'M', got {channels!r}")
    for entry in channels:
        if entry != POOL and not (isinstance(entry, int) and entry >= 1):
            raise ValueError(f"vgg channels: each entry must be an int >= 1 or 'M', got {entry!r}")
    check_counts("vgg", [c for c in channels if c != POOL], len(channels))
    if channels[-1] == POOL or channels.count(POOL) != 4:
        raise ValueError("vgg channels: exactly 4 'M' pools, and the spec must end with a conv")
    return list(channels)


@register_model
class VGG(SlimmableNet):
    arch = "vgg"

    @staticmethod
    def default_channels(width: float, depth: int | None) -> list[int | str]:
        check_width(width)
        depth = 19 if depth is None else depth
        if depth not in VGG_CHANNELS:
            raise ValueError(f"vgg depth must be one of {sorted(VGG_CHANNELS)}, got {depth}")
        return [c if c == POOL else scaled(c, width) for c in VGG_CHANNELS[depth]]

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        depth: int | None = None,
        channels: list[int | str] | None = None,
        input_size: int = 32,
    ) -> None:
        if channels is None:
            channels = self.default_channels(width, depth)
        super().__init__(num_classes, in_channels, _check_channels(channels), input_size)
        layers: list[nn.Module] = []
        previous = in_channels
        for entry in self.channels:
            if entry == POOL:
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(previous, entry, 3, padding=1, bias=False),
                       nn.BatchNorm2d(entry), nn.ReLU(inplace=True)]
            previous = entry
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(downsampled("vgg", input_size, self.channels.count(POOL)))
        self.classifier = nn.Linear(previous, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def _conv_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]

    def prune_slots(self) -> list[PruneSlot]:
        convs = self._conv_indices()
        slots = []
        for k, i in enumerate(convs):
            last = k + 1 == len(convs)
            consumer = "classifier" if last else f"features.{convs[k + 1]}"
            fold = None if last else f"features.{convs[k + 1] + 1}"
            slots.append(PruneSlot(f"features.{i + 1}", f"features.{i}", (consumer,), fold))
        return slots

    def channels_after(self, keep: dict[str, list[int]], stream_bias: bool) -> list[int | str]:
        counts = iter(len(keep[slot.bn]) for slot in self.prune_slots())
        return [entry if entry == POOL else next(counts) for entry in self.channels]
