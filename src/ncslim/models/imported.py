"""Your own CNN as an ncslim model: ``--model package.module:function``.

The function builds the full network, called as ``function(num_classes=N, in_channels=C)``; it
may be any CNN whose channels Torch-Pruning's dependency graph can follow (projection shortcuts,
depthwise convolutions, concatenations, ...). Pruning goes through that graph
(:mod:`ncslim.generic`) instead of a family's pruning slots.

The spec is data, as for every family: the builder's import path and, per pruning, the number
of output channels each pruned layer kept::

    {"builder": "mymodels:small_cnn", "pruned": [[["conv1", 12], ["block.conv", 20]]]}

A model file holds that spec and the weights; loading it imports ``mymodels`` from your Python
environment (never code from the file), builds the full network, shrinks the named layers (and
every layer coupled to them) to the recorded counts, then loads the weights. Builders from the
Python standard library are refused, so a crafted file cannot make ncslim call one of those;
load files naming your own modules only.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from .base import MAX_DEPTH, MAX_LAYER_CHANNELS, TracedNet, register_model

BUILDER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
MAX_PRUNINGS = 100  # passes of pruning one spec may record
_SHAPE = "package.module:function (e.g. mymodels:small_cnn)"


def check_builder_path(path: Any) -> str:
    """``path`` if it has the form ``package.module:function``, else a ValueError."""
    if not isinstance(path, str) or len(path) > 200 or not BUILDER.fullmatch(path):
        raise ValueError(f"--model must be {_SHAPE}, got {path!r}")
    return path


def resolve_builder(path: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names, imported from the environment (and from
    the current directory, searched last, as ``python -m`` would)."""
    module_name, attr = check_builder_path(path).split(":")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise ValueError(f"--model {path}: {module_name} is part of Python's standard library, "
                         f"not a model; name your own function ({_SHAPE})")
    try:
        module = _import(module_name)
    except ImportError as err:
        raise ValueError(f"--model {path}: cannot import {module_name} ({err}); run from the "
                         f"folder that holds it or add that folder to PYTHONPATH") from None
    except Exception as err:  # noqa: BLE001  the user's module failed while importing
        raise ValueError(f"--model {path}: importing {module_name} failed: "
                         f"{type(err).__name__}: {_first_line(err)}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--model {path}: {module_name} has no {attr}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--model {path}: {attr} is a {type(target).__name__}, not a function "
                         f"or class that builds a model")
    return target


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        if err.name != module_name.split(".")[0] or here in sys.path:
            raise
    sys.path.append(here)  # the console script does not search it; python -m would
    return importlib.import_module(module_name)


def build_user_net(path: str, num_classes: int, in_channels: int) -> nn.Module:
    """``function(num_classes=..., in_channels=...)`` for the builder at ``path``, checked to be
    a module with BatchNorm scaling factors to prune by."""
    builder = resolve_builder(path)
    try:
        net = builder(num_classes=num_classes, in_channels=in_channels)
    except Exception as err:  # noqa: BLE001  the user's code: its failure, in one line
        raise ValueError(f"--model {path}: building it with num_classes={num_classes}, "
                         f"in_channels={in_channels} failed: {type(err).__name__}: "
                         f"{_first_line(err)}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"--model {path} returned a {type(net).__name__}, not a torch.nn.Module")
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
               for m in net.modules()):
        raise ValueError(f"--model {path}: the network has no BatchNorm with scaling factors; "
                         f"network slimming prunes channels by them")
    return net


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def check_spec(channels: Any) -> dict[str, Any]:
    """The spec, checked: a builder path and at most :data:`MAX_PRUNINGS` prunings of
    ``[layer name, channels kept]`` pairs."""
    if not isinstance(channels, dict) or set(channels) - {"builder", "pruned"}:
        raise ValueError(f"imported channels must be {{'builder': ..., 'pruned': [...]}}, got "
                         f"{str(channels)[:80]}")
    path = check_builder_path(channels.get("builder"))
    pruned = channels.get("pruned", [])
    if not isinstance(pruned, list) or len(pruned) > MAX_PRUNINGS:
        raise ValueError(f"imported channels: 'pruned' must be a list of at most {MAX_PRUNINGS} "
                         f"prunings")
    for step in pruned:
        if not isinstance(step, list) or len(step) > MAX_DEPTH or not all(
                isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], int) and not isinstance(pair[1], bool)
                and 1 <= pair[1] <= MAX_LAYER_CHANNELS for pair in step):
            raise ValueError("imported channels: each pruning must be a list of "
                             "[layer name, channels kept] pairs")
    return {"builder": path, "pruned": [[[name, kept] for name, kept in step]
                                        for step in pruned]}


@register_model
class ImportedNet(TracedNet):
    """A network built by the user's function; ``net`` is that module, pruned as recorded."""

    arch = "imported"
    listed: ClassVar[bool] = False  # built from --model, not chosen by --arch

    @staticmethod
    def default_channels(width: float, depth: int | None) -> Any:
        raise ValueError(f"this family is built from --model {_SHAPE}, not from --arch")

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 depth: int | None = None, channels: dict[str, Any] | None = None,
                 input_size: int = 32) -> None:
        if channels is None:
            self.default_channels(width, depth)
        spec = check_spec(channels)
        super().__init__(num_classes, in_channels, spec, input_size)
        self.net = build_user_net(spec["builder"], num_classes, in_channels)
        if spec["pruned"]:
            from ..generic import shrink_layers  # the graph is Torch-Pruning's, an extra

            reference = next(self.net.parameters())
            example = torch.zeros(1, *self.input_shape(), device=reference.device,
                                  dtype=reference.dtype)
            for step in spec["pruned"]:
                shrink_layers(self.net, example, step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def title(self) -> str:
        return f"{self.channels['builder']} (--model)"

    def record_pruning(self, kept: list[tuple[str, int]]) -> None:
        """Add one pruning to the spec (names relative to ``net``), so that the model rebuilds
        as it is now."""
        step = [[name.removeprefix("net."), count] for name, count in kept]
        self.channels = {**self.channels, "pruned": [*self.channels["pruned"], step]}
