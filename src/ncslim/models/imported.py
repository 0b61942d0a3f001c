"""Your own CNN as an ncslim model: ``--model package.module:function``.

The function builds the full network, called as ``function(num_classes=N, in_channels=C)``; it
may be any CNN whose channels Torch-Pruning's dependency graph can follow (projection shortcuts,
depthwise convolutions, concatenations, ...). Pruning goes through that graph
(:mod:`ncslim.prune.generic`) instead of a family's pruning slots.

The spec is data, as for every family: the builder's import path and, per pruning, the number
of output channels each pruned layer kept::

    {"builder": "mymodels:small_cnn", "pruned": [[["conv1", 12], ["block.conv", 20]]]}

A model file holds that spec and the weights; loading it imports ``mymodels`` (never code from
the file), builds the full network, shrinks the named layers (and every layer coupled to them)
to the recorded counts, then loads the weights.

Importing a module runs its code, so ncslim imports a builder's module only with your consent,
in the spirit of ``trust_remote_code``:

- ``--model mymodels:small_cnn`` that you give to ``run`` or ``train`` (or write in your own
  preset or sweep file) is that consent for ``mymodels``: you named the code to run. A run that
  reads back its own files (``--resume`` of several passes) consents for its own ``--model``.
- A model file names a builder too, but a file may come from anyone. ``prune``, ``finetune``,
  ``info`` and ``export`` import it only with ``--trust-model-code mymodels``
  (``ncslim.load_model(path, trust_code="mymodels")``), which names the module or a package
  holding it. Without it they stop, before importing anything, with one line that names the
  module the file would import.
- Where from: ``sys.path`` as Python set it up (installed packages, ``PYTHONPATH``; ``python -m``
  puts the current folder first). Only after consent, and only for a module found nowhere
  there, the current folder is searched too, for that import alone (the console script does not
  put it on ``sys.path``; ``python -m`` would). The folder a model file lies in is never
  searched. Modules of Python's standard library are refused, even with consent.

The user's code fails in one line (a ValueError): an import or a build that raises or exits
(``SystemExit``; anything but Ctrl-C), and a network whose output for one zero image is not
``num_classes`` scores (checked on the meta device when the file's shapes are checked).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from ..util.escape import first_line, shown
from .base import MAX_DEPTH, MAX_LAYER_CHANNELS, TracedNet, register_model

BUILDER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
MAX_PRUNINGS = 100  # passes of pruning one spec may record
_SHAPE = "package.module:function (e.g. mymodels:small_cnn)"


def check_builder_path(path: Any) -> str:
    """``path`` if it has the form ``package.module:function``, else a ValueError."""
    if not isinstance(path, str) or len(path) > 200 or not BUILDER.fullmatch(path):
        raise ValueError(f"--model must be {_SHAPE}, got {shown(repr(path))}")
    return path


def _not_stdlib(path: str) -> str:
    """The module of builder ``path``, refused if it is part of Python's standard library."""
    module_name = path.split(":")[0]
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise ValueError(f"--model {path}: {module_name} is part of Python's standard library, "
                         f"not a model; name your own function ({_SHAPE})")
    return module_name


def trusted_modules(trust: str | Iterable[str] | None) -> tuple[str, ...]:
    """The module names of a ``trust_code`` / ``--trust-model-code`` consent, checked."""
    names = () if trust is None else (trust,) if isinstance(trust, str) else tuple(trust)
    for name in names:
        if not isinstance(name, str) or len(name) > 200 or not MODULE.fullmatch(name):
            raise ValueError(f"--trust-model-code must name a module or package, e.g. "
                             f"mymodels, got {shown(repr(name))}")
    return names


def require_consent(builder: Any, trust: str | Iterable[str] | None, source: str) -> None:
    """Refuse a model file (``source``) whose ``builder`` names a module that ``trust`` does not
    name (itself or a package above it); nothing is imported either way."""
    names = trusted_modules(trust)
    try:
        module_name = _not_stdlib(check_builder_path(builder))
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    if not any(module_name == name or module_name.startswith(name + ".") for name in names):
        raise ValueError(f"{source} would import the module {module_name} to build its network "
                         f"({builder}); ncslim runs no code a file names without your consent: "
                         f"if you trust {module_name}, pass --trust-model-code {module_name}")


def resolve_builder(path: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names, imported from ``sys.path`` (and from
    the current directory, searched last, as ``python -m`` would). Call it only with the
    user's consent for the module (see the module's docstring)."""
    module_name = _not_stdlib(check_builder_path(path))
    attr = path.split(":")[1]
    try:
        module = _import(module_name)
    except ImportError as err:
        raise ValueError(f"--model {path}: cannot import {module_name} ({shown(err)}); run from "
                         f"the folder that holds it or add that folder to PYTHONPATH") from None
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001  the user's module failed (or exited) importing
        raise ValueError(f"--model {path}: importing {module_name} failed: "
                         f"{_failure(err)}") from None
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
    # the console script does not search it, python -m would: for this import alone, so that no
    # later import (an optional dependency's, say) can pick up a file lying in this folder
    sys.path.append(here)
    try:
        return importlib.import_module(module_name)
    finally:
        if here in sys.path:
            sys.path.remove(here)


def build_user_net(path: str, num_classes: int, in_channels: int) -> nn.Module:
    """``function(num_classes=..., in_channels=...)`` for the builder at ``path``, checked to be
    a module with BatchNorm scaling factors to prune by."""
    builder = resolve_builder(path)
    try:
        net = builder(num_classes=num_classes, in_channels=in_channels)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001  the user's code: its failure, in one line
        raise ValueError(f"--model {path}: building it with num_classes={num_classes}, "
                         f"in_channels={in_channels} failed: {_failure(err)}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"--model {path} returned a {type(net).__name__}, not a torch.nn.Module")
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
               for m in net.modules()):
        raise ValueError(f"--model {path}: the network has no BatchNorm with scaling factors; "
                         f"network slimming prunes channels by them")
    return net


def check_outputs(net: nn.Module, path: str, num_classes: int,
                  shape: tuple[int, int, int]) -> None:
    """One zero image of ``shape`` through ``net`` (in eval mode, without gradients, on the
    device of its parameters: meta for a skeleton) must give ``num_classes`` scores."""
    reference = next(net.parameters())
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, *shape, device=reference.device, dtype=reference.dtype))
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001  the user's forward, in one line
        raise ValueError(f"--model {path}: a forward pass of one {shape[1]}x{shape[2]} image "
                         f"failed: {_failure(err)}") from None
    finally:
        for module, training in modes:
            module.training = training
    got = (f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}")
    if not torch.is_tensor(out) or tuple(out.shape) != (1, num_classes):
        raise ValueError(f"--model {path}: for one image the network gives {got}, not "
                         f"{num_classes} scores (one per class); its last layer must have "
                         f"num_classes outputs")


def _failure(err: BaseException) -> str:
    """``Type: first line`` of an error the user's code raised, printable; an exit says so."""
    if isinstance(err, SystemExit):
        return f"it exited (SystemExit {shown(repr(err.code))})"
    return f"{type(err).__name__}: {first_line(err, 200) if str(err).strip() else '(no message)'}"


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
        check_outputs(self.net, spec["builder"], num_classes, self.input_shape())
        if spec["pruned"]:
            from .graph import shrink_layers  # the graph is Torch-Pruning's, an extra

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
