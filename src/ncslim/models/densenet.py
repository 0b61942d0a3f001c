"""DenseNet for 32x32 inputs (DenseNet-40 by default): three dense blocks of BN -> ReLU -> conv3x3
layers concatenated to their input, transitions BN -> ReLU -> conv1x1 -> 2x2 average pool, no
bottleneck and no compression, as in the network slimming reference.

Every BN reads the concatenated stream, so pruning does not narrow the stream: a channel selection
in front of each BN keeps the surviving channels for that layer's conv only. A stream channel that
no later selection reads at all is dead; :meth:`DenseNet.compact` removes it from the conv that
produces it (the spec's ``outputs``: conv name -> output channels, only for narrowed convs).

    >>> from ncslim.models import build_model
    >>> build_model("densenet", depth=40).channels["growth"]
    12
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


class DenseLayer(nn.Module):
    def __init__(self, stream: int, growth: int, select: list[int] | None, bias: bool) -> None:
        super().__init__()
        self.unit = PreActUnit(stream, select)
        self.conv = nn.Conv2d(self.unit.width, growth, 3, padding=1, bias=bias)
        self.out_width = stream + growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.unit(x))], 1)


class Transition(nn.Module):
    def __init__(self, stream: int, out: int, select: list[int] | None, bias: bool) -> None:
        super().__init__()
        self.unit = PreActUnit(stream, select)
        self.conv = nn.Conv2d(self.unit.width, out, 1, bias=bias)
        self.out_width = out
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
    if not isinstance(channels, dict) or not keys <= set(channels) <= keys | {"outputs"}:
        raise ValueError(f"densenet channels must be a dict with keys {sorted(keys)} "
                         f"(and optionally 'outputs')")
    ints = [channels["stem"], channels["growth"], *channels["layers"]]
    if len(channels["layers"]) != 3 or not all(isinstance(c, int) and c >= 1 for c in ints):
        raise ValueError("densenet channels: stem, growth and 3 block lengths must be ints >= 1")
    outputs = channels.get("outputs", {})
    if not isinstance(outputs, dict) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in outputs.values()):
        raise ValueError("densenet channels['outputs'] must map conv names to ints >= 1")
    layers = sum(channels["layers"])
    check_counts("densenet", [*ints, *outputs.values(),
                              channels["stem"] + layers * channels["growth"]], layers)
    return channels


@register_model
class DenseNet(SlimmableNet):
    arch = "densenet"
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
        outputs = spec.get("outputs", {})
        stream = outputs.get("conv1", spec["stem"])
        nominal = spec["stem"]  # the stream width before any dead channel was removed
        self.conv1 = nn.Conv2d(in_channels, stream, 3, padding=1, bias=False)
        for b, n in enumerate(spec["layers"], start=1):
            layers = []
            for i in range(n):
                layers.append(DenseLayer(stream, outputs.get(f"dense{b}.{i}.conv", spec["growth"]),
                                         select.get(f"dense{b}.{i}.unit.bn"), bias))
                stream = layers[-1].out_width
            nominal += n * spec["growth"]
            self.add_module(f"dense{b}", nn.Sequential(*layers))
            if b < 3:
                trans = Transition(stream, outputs.get(f"trans{b}.conv", nominal),
                                   select.get(f"trans{b}.unit.bn"), bias)
                self.add_module(f"trans{b}", trans)
                stream = trans.out_width
        self.head = PreActUnit(stream, select.get("head.bn"))
        self.pool = nn.AvgPool2d(downsampled("densenet", input_size, 2))
        self.fc = nn.Linear(self.head.width, num_classes)
        unknown = sorted(set(outputs) - {w for writers, _ in self._blocks() for w in writers})
        if unknown:
            raise ValueError(f"densenet channels['outputs'] names convs it lacks: {unknown}")
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

    def _blocks(self) -> list[tuple[list[str], list[tuple[str, PreActUnit]]]]:
        """Per dense block: the convs whose outputs make up its stream, in stream order, and the
        units that read that stream (each sees the prefix of it written so far)."""
        modules = dict(self.named_modules())
        blocks = []
        writer = "conv1"
        for b, n in enumerate(self.channels["layers"], start=1):
            writers = [writer] + [f"dense{b}.{i}.conv" for i in range(n)]
            readers = [(f"dense{b}.{i}", modules[f"dense{b}.{i}"].unit) for i in range(n)]
            last = f"trans{b}" if b < 3 else "head"
            readers.append((last, modules[last].unit if b < 3 else modules[last]))
            blocks.append((writers, readers))
            writer = f"trans{b}.conv"
        return blocks

    def compact(self) -> DenseNet:
        """The same function without the stream channels that no selection reads.

        Each such channel is removed from the conv that writes it (a conv keeps at least one),
        and every selection is renumbered; returns ``self`` when nothing is dead.
        """
        modules = dict(self.named_modules())
        keep_out: dict[str, torch.Tensor] = {}
        new_select: dict[str, list[int]] = {}
        for writers, readers in self._blocks():
            widths = [modules[w].out_channels for w in writers]
            read = torch.zeros(sum(widths), dtype=torch.bool)
            for _, unit in readers:
                read[: unit.stream] |= _reads(unit)
            starts = [sum(widths[:k]) for k in range(len(widths))]
            alive = read.clone()
            for w, start, width in zip(writers, starts, widths):
                piece = alive[start:start + width]
                if not piece.any():
                    piece[0] = True  # a conv keeps one channel
                if not piece.all():
                    keep_out[w] = piece.nonzero().flatten()
            new_index = alive.cumsum(0) - 1
            for name, unit in readers:
                if unit.select.index is not None:
                    new_select[f"{name}.bn" if name == "head" else f"{name}.unit.bn"] = (
                        new_index[unit.select.index.cpu()].tolist())
        if not keep_out:
            return self
        outputs = {**self.channels.get("outputs", {}),
                   **{w: int(idx.numel()) for w, idx in keep_out.items()}}
        spec = {**self.channels, "select": new_select, "outputs": outputs}
        small = DenseNet(self.num_classes, self.in_channels, channels=spec,
                         input_size=self.input_size)
        reference = next(self.parameters())
        small.to(device=reference.device, dtype=reference.dtype)
        state = self.state_dict()
        with torch.no_grad():
            for name, idx in keep_out.items():
                for key in ("weight", "bias"):
                    if f"{name}.{key}" in state:
                        state[f"{name}.{key}"] = state[f"{name}.{key}"].index_select(
                            0, idx.to(reference.device))
        small.load_state_dict(state)
        small.train(self.training)
        return small


def _reads(unit: PreActUnit) -> torch.Tensor:
    """Which channels of its stream a unit reads."""
    mask = torch.zeros(unit.stream, dtype=torch.bool)
    if unit.select.index is None:
        mask[:] = True
    else:
        mask[unit.select.index.cpu()] = True
    return mask

