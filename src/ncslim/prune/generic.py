"""Physical pruning of any CNN: our selection rule, Torch-Pruning's dependency graph.

    small, report = ncslim.prune_model(my_resnet, ratio=0.5,
                                       example_inputs=torch.randn(1, 3, 224, 224))

For models that are not ncslim architectures (projection shortcuts, depthwise convolutions,
concatenations, ...), the graph traced by Torch-Pruning (``pip install 'ncslim[generic]'``) says
which channels are *coupled*: a conv's outputs, its BatchNorm, every layer that reads them, and
every other layer bound to them through a residual addition or a depthwise convolution. Each such
group is scored channel by channel by the largest |gamma| among its BatchNorms (a channel goes
only when every BN it passes through has let it go), then the same global rule as for our own
families (:mod:`ncslim.prune.selection`: ``ratio`` or ``threshold``, ``min_channels``,
``max_layer_ratio``, ``round_to``)
decides what is removed.
Groups without a BatchNorm (a classifier's outputs, for one) are never pruned.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.graph import torch_pruning, trace
from ..util.escape import first_line
from .selection import channel_scores, select_channels

_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class _Group:
    name: str  # the root layer's name
    root: nn.Module
    handler: Any  # Torch-Pruning's pruning function for the root (output channels)
    scores: torch.Tensor  # per root channel: the largest |gamma| of the group's BNs


def _resolve(model: nn.Module, original: nn.Module,
             ignored: Sequence[nn.Module | str] | None) -> list[nn.Module]:
    """The copy's modules for ``ignored`` (modules of the original model, or their names)."""
    names = {id(m): n for n, m in original.named_modules()}
    modules = dict(model.named_modules())
    out = []
    for item in ignored or []:
        name = item if isinstance(item, str) else names.get(id(item))
        if name is None or name not in modules:
            shown = item if isinstance(item, str) else type(item).__name__
            raise ValueError(f"ignored_layers: {shown} is not a layer of this model")
        out.append(modules[name])
    return out


def _groups(graph: Any, model: nn.Module, ignored: list[nn.Module],
            given: Mapping[str, torch.Tensor] | None) -> list[_Group]:
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored,
                                      root_module_types=(nn.Conv2d, nn.Linear)):
        if any(item.dep.target.module in ignored for item in group):
            continue  # an ignored layer keeps its inputs and outputs whole
        root = group[0].dep.target.module
        scores = None
        for item in group:
            bn = item.dep.target.module
            if not isinstance(bn, _BN) or bn.weight is None or not graph.is_out_channel_pruning_fn(
                    item.dep.handler):
                continue
            local = channel_scores(modules, names[bn], given)[torch.as_tensor(item.idxs)]
            if scores is None:
                scores = torch.full((len(group[0].idxs),), -1.0, device=local.device)
            index = torch.as_tensor(item.root_idxs, device=local.device)
            scores[index] = torch.maximum(scores[index], local)
        if scores is not None and bool((scores >= 0).all()):
            groups.append(_Group(names[root], root, group[0].dep.handler, scores))
    return groups


def channel_groups(model: nn.Module, example_inputs: Any, bn_names: Sequence[str],
                   ) -> tuple[list[int], torch.Tensor]:
    """How the cut sees ``model``'s channels: the size of each coupled group (in the cut's order)
    and, per channel of the BNs ``bn_names`` (flat, in that order), the index of the group
    channel it belongs to over all groups (-1: in no prunable group). A group channel is
    scored by the largest |gamma| of its members, as :func:`prune_generic` scores it; the lambda
    controller aims at group channels through this map."""
    tp = torch_pruning()
    graph = trace(tp, model, example_inputs)
    modules = dict(model.named_modules())
    offsets, start = {}, 0
    for name in bn_names:
        offsets[name] = start
        start += modules[name].weight.numel()
    unit_of = torch.full((start,), -1, dtype=torch.long)
    names = {m: n for n, m in modules.items()}
    sizes: list[int] = []
    for group in _groups(graph, model, [], None):
        first = sum(sizes)
        for item in graph.get_pruning_group(group.root, group.handler,
                                            list(range(group.scores.numel()))):
            bn = item.dep.target.module
            name = names.get(bn)
            if name in offsets and graph.is_out_channel_pruning_fn(item.dep.handler):
                unit_of[offsets[name] + torch.as_tensor(item.idxs)] = (
                    first + torch.as_tensor(item.root_idxs))
        sizes.append(group.scores.numel())
    return sizes, unit_of


def prune_generic(model: nn.Module, example_inputs: Any, ratio: float | None,
                  threshold: float | None, min_channels: int, round_to: int,
                  ignored_layers: Sequence[nn.Module | str] | None = None,
                  scores: Mapping[str, torch.Tensor] | None = None,
                  max_layer_ratio: float | None = None, ranking: str = "global",
                  ) -> tuple[nn.Module, list[tuple[str, list[int], int]], float,
                             dict[str, list[str]]]:
    """Prune a copy of ``model``; returns it, (group, kept indices, total) per group, the
    |gamma| threshold applied and the groups held at the ``min_channels`` floor ("floored")
    and at the ``max_layer_ratio`` cap ("capped")."""
    tp = torch_pruning()
    small = copy.deepcopy(model)
    ignored = _resolve(small, model, ignored_layers)
    was_training = small.training
    small.eval()
    graph = trace(tp, small, example_inputs)
    groups = _groups(graph, small, ignored, scores)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no prunable channels: no convolution or "
                         f"linear layer feeds a BatchNorm that is not in ignored_layers")
    chosen = select_channels([g.scores for g in groups], ratio, threshold, min_channels,
                             round_to, max_layer_ratio, ranking)
    layers: list[tuple[str, list[int], int]] = []
    held: dict[str, list[str]] = {"floored": [], "capped": []}
    for group, keep, hit_floor, hit_cap in zip(groups, chosen.keep, chosen.floored,
                                               chosen.capped):
        layers.append((group.name, keep.tolist(), group.scores.numel()))
        for kind, hit in (("floored", hit_floor), ("capped", hit_cap)):
            if hit:
                held[kind].append(group.name)
        gone = sorted(set(range(group.scores.numel())) - set(keep.tolist()))
        if gone:  # the group is rebuilt from the root now, so concat offsets are current
            graph.get_pruning_group(group.root, group.handler, gone).prune()
    small.train(was_training)
    _check_runs(small, model, example_inputs)
    return small, layers, chosen.threshold, held


def _check_runs(small: nn.Module, model: nn.Module, example_inputs: torch.Tensor) -> None:
    """Run the pruned copy once; a failure names the innermost layer it happened in."""
    names = {m: n for n, m in small.named_modules()}
    inside: list[nn.Module] = []

    def enter(module: nn.Module, _: Any) -> None:
        inside.append(module)

    def leave(module: nn.Module, _: Any, __: Any) -> None:
        inside.pop()

    hooks = [h for m in small.modules() for h in (m.register_forward_pre_hook(enter),
                                                   m.register_forward_hook(leave))]
    was_training = small.training
    small.eval()
    try:
        with torch.no_grad():
            small(example_inputs)
    except RuntimeError as err:
        culprit = inside[-1] if inside and names[inside[-1]] else None
        where = f" in layer {names[culprit]} ({type(culprit).__name__})" if culprit else ""
        first = first_line(err)
        raise ValueError(f"the pruned {type(model).__name__} fails{where}: {first}; Torch-Pruning "
                         f"did not see how that layer couples channels: let it read widths from "
                         f"its input (not fixed numbers), or keep the layers whose outputs reach "
                         f"it whole (ignored_layers, in Python)") from err
    finally:
        for hook in hooks:
            hook.remove()
        small.train(was_training)
