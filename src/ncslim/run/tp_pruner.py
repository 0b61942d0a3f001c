"""Torch-Pruning's ``BNScalePruner`` as the comparison drives it: set up over an ncslim VGG,
its pruning ratio searched until the pruned network keeps a given share of the channels,
parameters or FLOPs, and its pruned VGG rebuilt as an ncslim model (checked to compute the
same function). ``pip install 'ncslim[generic]'`` installs Torch-Pruning."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch
from torch import nn

from ..models import SlimmableNet, build_model
from ..models.measure import count_flops, count_params
from ..models.vgg import POOL

DEFAULT_REG = 1e-5  # BNScalePruner's own default
COARSE_STEPS = 10  # the compression search tries this many ratios before bisecting


class TargetUnreachable(ValueError):
    """No ratio of Torch-Pruning's pruner reaches the asked share of a trained model."""


def torch_pruning() -> Any:
    if importlib.util.find_spec("torch_pruning") is None:
        raise ValueError("the Torch-Pruning baseline needs Torch-Pruning: "
                         "pip install 'ncslim[generic]'")
    import torch_pruning

    return torch_pruning


def tp_version() -> str:
    """The installed distribution's version (the module's ``__version__`` can lag behind it)."""
    try:
        return metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        return str(torch_pruning().__version__)


def bnscale_pruner(model: nn.Module, reg: float = DEFAULT_REG, ratio: float = 0.5,
                   round_to: int = 1) -> Any:
    """Torch-Pruning's ``BNScalePruner`` over ``model`` (an ncslim VGG), set up as the
    comparison uses it: global ranking by ``BNScaleImportance``, the classifier's outputs kept.
    The graph is traced in eval mode, so tracing moves no BN running statistic."""
    tp = torch_pruning()
    reference = next(model.parameters())
    example = torch.zeros(1, *model.input_shape(), device=reference.device, dtype=reference.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            return tp.pruner.BNScalePruner(
                model, example, tp.importance.BNScaleImportance(), reg=reg,
                global_pruning=True, pruning_ratio=ratio, ignored_layers=[model.classifier],
                round_to=round_to if round_to > 1 else None)
    finally:
        model.train(was_training)


def rebuild_vgg(small: nn.Module, model: SlimmableNet) -> SlimmableNet:
    """The ncslim VGG of Torch-Pruning's pruned copy ``small`` of ``model``: its spec from the
    pruned conv widths, its weights from ``small``; checked to compute what ``small`` computes."""
    widths = iter(m.out_channels for m in small.features if isinstance(m, nn.Conv2d))
    spec = [entry if entry == POOL else next(widths) for entry in model.channels]
    reference = next(small.parameters())
    rebuilt = build_model("vgg", model.num_classes, model.in_channels, channels=spec,
                          input_size=model.input_size).to(reference.device, reference.dtype)
    rebuilt.load_state_dict(small.state_dict())
    rebuilt.train(model.training)
    was_training = small.training
    small.eval()
    rebuilt.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *model.input_shape(), generator=generator).to(reference)
    with torch.no_grad():
        expected = small(x)
        scale = float(expected.abs().max())  # the logits of a VGG at init are small
        same = torch.allclose(rebuilt(x), expected, rtol=1e-4, atol=1e-5 * scale)
    small.train(was_training)
    rebuilt.train(model.training)
    if not same:
        raise RuntimeError("the rebuilt VGG does not compute what Torch-Pruning's pruned model "
                           "computes; the pruning changed more than the conv widths")
    return rebuilt


@dataclass
class Match:
    """A Torch-Pruning pruning at the compression asked for."""

    small: nn.Module  # Torch-Pruning's pruned copy
    pruner: Any  # the BNScalePruner that pruned it
    removed: int  # channels Torch-Pruning was asked to remove (its ratio, in channels)
    ratio: float  # the pruning_ratio passed to BNScalePruner
    reached: float  # the share of the measure the pruned model keeps


def _amount(model: nn.Module, measure: str) -> int:
    if measure == "channels":
        return sum(m.num_features for m in model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))
    if measure == "params":
        return count_params(model)
    return count_flops(model, model.input_shape())


def match_compression(model: SlimmableNet, measure: str, fraction: float,
                      round_to: int = 1) -> Match:
    """Torch-Pruning's pruning of a copy of ``model`` with the smallest ratio whose ``measure``
    ("channels", "params" or "flops") falls to ``fraction`` of the original or below.

    The ratio is searched in whole channels (a ratio of k channels out of n prunes k), first on
    a coarse grid, then by bisection. Removing more channels need not shrink the network here:
    Torch-Pruning skips a layer whose every channel ranks below the cut, so the coarse grid finds
    the first ratio that fits before the bisection narrows it.
    """
    total, before = _amount(model, "channels"), _amount(model, measure)
    limit = (total - int((1.0 - fraction) * total + 1e-9) if measure == "channels"
             else fraction * before)
    tried: dict[int, Match] = {}

    def fits(removed: int) -> bool:
        if removed not in tried:
            ratio = 0.0 if removed == 0 else (removed - 0.5) / total  # TP prunes exactly k
            small = copy.deepcopy(model)
            pruner = bnscale_pruner(small, ratio=ratio, round_to=round_to)
            pruner.step()
            tried[removed] = Match(small, pruner, removed, ratio,
                                   _amount(small, measure) / before)
        return tried[removed].reached * before <= limit

    if measure == "channels":  # Torch-Pruning's own ratio first: it removes that many channels
        exact = total - int(limit)
        if fits(exact) and (exact == 0 or not fits(exact - 1)):
            return tried[exact]
    grid = sorted({round(i * (total - 1) / COARSE_STEPS) for i in range(COARSE_STEPS + 1)})
    low, high = -1, None  # a count known not to fit, the first known to fit
    for removed in grid:
        if fits(removed):
            high = removed
            break
        low = removed
    if high is None:
        best = min(m.reached for m in tried.values())
        raise TargetUnreachable(f"Torch-Pruning cannot bring the {measure} to {fraction:.1%} of "
                                f"the original at any ratio (reached {best:.1%} at best); ask "
                                f"for less")
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return tried[high]
