"""A network's channel couplings as Torch-Pruning traces them (its dependency graph), and
the narrowing of an imported network to the widths a recorded pruning left: rebuilding a pruned
``--model`` network needs it before the weights load. Torch-Pruning is an extra
(``pip install 'ncslim[generic]'``). Imports :mod:`ncslim.util` only."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from ..util.escape import first_line


def torch_pruning() -> Any:
    """The Torch-Pruning module (an extra: ``pip install 'ncslim[generic]'``)."""
    if importlib.util.find_spec("torch_pruning") is None:
        raise ValueError("pruning a model that is not an ncslim architecture needs Torch-Pruning: "
                         "pip install 'ncslim[generic]'")
    import torch_pruning

    return torch_pruning


def trace(tp: Any, model: nn.Module, example_inputs: Any) -> Any:
    """Torch-Pruning's dependency graph of ``model``; a failure to trace is the model's."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                         verbose=False)
    except Exception as err:  # any failure to trace is the model's, reported in one line
        first = first_line(err)
        raise ValueError(f"Torch-Pruning cannot trace {type(model).__name__} on the example "
                         f"inputs: {first}") from err
    finally:
        model.train(was_training)


def shrink_layers(net: nn.Module, example_inputs: torch.Tensor,
                  kept: list[list[Any]]) -> None:
    """Narrow each layer ``name`` of ``net`` in place to its first ``count`` output channels
    (``kept`` holds [name, count] pairs), with every layer coupled to it: the shapes of one
    recorded pruning, before its weights are loaded."""
    tp = torch_pruning()
    modules = dict(net.named_modules())
    graph = trace(tp, net, example_inputs)
    for name, count in kept:
        layer = modules.get(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"the recorded pruning names {name!r}, which is not a convolution or "
                             f"linear layer of this network")
        total = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        if count > total:
            raise ValueError(f"the recorded pruning keeps {count} channels of {name}, which has "
                             f"{total}")
        if count < total:
            pruner = graph.get_pruner_of_module(layer)
            graph.get_pruning_group(layer, pruner.prune_out_channels,
                                    list(range(count, total))).prune()
