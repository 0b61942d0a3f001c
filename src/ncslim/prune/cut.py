"""Physical channel pruning: a smaller dense network from the BN scaling factors.

    >>> import ncslim
    >>> model = ncslim.build_model("vgg", width=0.25)
    >>> small, report = ncslim.prune_model(model, ratio=0.5)
    >>> report.params_after < report.params_before
    True

The rule of network slimming: rank the |gamma| of every prunable BN globally and remove the lowest
``ratio`` of them, or remove every channel with |gamma| <= ``threshold`` (0 removes exactly the
zeros that proximal training leaves); that rule lives in :mod:`ncslim.prune.selection`. The model
family says which layers each BN couples (its :class:`~ncslim.models.PruneSlot` list); this module
only slices tensors along those couplings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass

import torch
from torch import nn

from ..models import PruneSlot, SlimmableNet, TracedNet, build_model
from ..models.scales import unwrap
from .compensation import Keep, compensation
from .generic import prune_generic
from .report import LayerReport, PruneReport, inherit_record, pruning_report
from .selection import (
    DEFAULT_MIN_CHANNELS,
    DEFAULT_RANKING,
    channel_scores,
    check_rule,
    resolve_ranking,
    select_channels,
)


def _copy_module(new: nn.Module, old: nn.Module, out_idx: torch.Tensor | None,
                 in_idx: torch.Tensor | None, mean_shift: torch.Tensor | None,
                 bias_add: torch.Tensor | None) -> None:
    def take(t: torch.Tensor, idx: torch.Tensor | None, dim: int = 0) -> torch.Tensor:
        return t if idx is None else t.index_select(dim, idx)

    if isinstance(old, nn.modules.batchnorm._BatchNorm):
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, key).copy_(take(getattr(old, key), out_idx))
        if mean_shift is not None:
            new.running_mean.sub_(take(mean_shift, out_idx))
        new.num_batches_tracked.copy_(old.num_batches_tracked)
        return
    new.weight.copy_(take(take(old.weight, out_idx), in_idx, 1))
    if new.bias is not None:
        bias = old.bias if old.bias is not None else old.weight.new_zeros(old.weight.shape[0])
        if bias_add is not None:
            bias = bias + bias_add
        new.bias.copy_(take(bias, out_idx))
    elif bias_add is not None:
        raise RuntimeError(f"cannot fold compensation into {type(new).__name__} without a bias")


def _transfer(new: nn.Module, old: nn.Module, slots: list[PruneSlot], keep: Keep,
              mean_shift: dict[str, torch.Tensor], bias_add: dict[str, torch.Tensor]) -> None:
    out_idx = {slot.bn: keep[slot.bn] for slot in slots}
    out_idx.update({slot.producer: keep[slot.bn] for slot in slots if slot.producer})
    in_idx = {name: keep[slot.bn] for slot in slots for name in slot.consumers}
    old_modules = dict(old.named_modules())
    for name, module in new.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            _copy_module(module, old_modules[name], out_idx.get(name), in_idx.get(name),
                         mean_shift.get(name), bias_add.get(name))


@torch.no_grad()
def prune_model(
    model: nn.Module,
    ratio: float | None = None,
    threshold: float | None = None,
    min_channels: int = DEFAULT_MIN_CHANNELS,
    round_to: int = 1,
    compensate: bool = False,
    example_inputs: torch.Tensor | None = None,
    ignored_layers: Sequence[nn.Module | str] | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    max_layer_ratio: float | None = None,
    ranking: str = DEFAULT_RANKING,
) -> tuple[nn.Module, PruneReport]:
    """A new, smaller, dense model without the weak channels of ``model``, and a report.

    ``ratio`` removes that fraction of all prunable channels, lowest |gamma| first; ``threshold``
    removes every channel with |gamma| <= threshold. No layer keeps fewer than ``min_channels``
    channels, none loses more than ``max_layer_ratio`` of them (fewer than ``ratio`` go then),
    and kept counts are rounded up to multiples of ``round_to``. ``ranking`` says how a ratio
    ranks layers against each other (:data:`ncslim.prune.selection.RANKINGS`: ``global``, raw
    scores, or ``layer``, each divided by its layer's mean; ``auto`` is ``global`` here).
    ``compensate`` folds the average output of each removed channel into the layer that read it
    (a bias or the next BN's running mean), so the pruned network is closer to the original
    before fine-tuning; ``model`` is left untouched.

    Any other CNN is pruned through Torch-Pruning's dependency graph (:mod:`ncslim.prune.generic`),
    traced from ``example_inputs`` (required then, e.g. ``torch.randn(1, 3, 224, 224)``);
    ``ignored_layers`` (modules or their names) keep every input and output channel, and so does
    every layer coupled to them. ``compensate`` is for ncslim architectures only.

    ``scores`` (per-channel tensors keyed by BN name) are ranked instead of |gamma|, e.g. VCP's
    ``VariationalScales.scores()`` with ``threshold=1.0``.
    """
    model = unwrap(model)
    rule = _Settings(ratio, threshold, min_channels, round_to, max_layer_ratio,
                 resolve_ranking(ranking))  # checked
    if not isinstance(model, SlimmableNet) or isinstance(model, TracedNet):
        return _prune_other(model, rule, compensate, example_inputs, ignored_layers, scores)
    if ignored_layers:
        raise ValueError("ignored_layers is for models that are not ncslim architectures; ours "
                         "prune every BN-scored layer (use min_channels to keep some width)")
    slots = model.prune_slots()
    modules = dict(model.named_modules())
    layer_scores = [channel_scores(modules, slot.bn, scores) for slot in slots]
    chosen = select_channels(layer_scores, *astuple(rule))
    keep: Keep = {slot.bn: kept for slot, kept in zip(slots, chosen.keep)}
    held = {kind: [slot.bn for slot, hit in zip(slots, hits) if hit]
            for kind, hits in (("floored", chosen.floored), ("capped", chosen.capped))}
    mean_shift, bias_add = compensation(model, slots, keep) if compensate else ({}, {})
    needs_bias = any(modules[name].bias is None for name in bias_add)
    spec = model.channels_after({k: v.tolist() for k, v in keep.items()}, stream_bias=needs_bias)
    reference = next(model.parameters())
    small = build_model(model.arch, model.num_classes, model.in_channels, channels=spec,
                        input_size=model.input_size, check_fits=False)  # a part of `model`
    small.to(device=reference.device, dtype=reference.dtype)
    _transfer(small, model, slots, keep, mean_shift, bias_add)
    small.train(model.training)
    small = small.compact()  # drop stream channels that no pruned layer reads any more
    layers = [LayerReport(s.bn, keep[s.bn].numel(), sc.numel(), keep[s.bn].tolist())
              for s, sc in zip(slots, layer_scores)]
    report = pruning_report(model, small, model.input_shape(), layers, chosen.threshold,
                            rule.ratio, held=held, max_layer_ratio=rule.max_layer_ratio,
                            compensated=compensate, ranking=rule.ranking)
    inherit_record(small, model, report)
    return small, report


@dataclass(frozen=True)
class _Settings:
    """prune_model's arguments to the channel rule, checked, in the order of
    :func:`~ncslim.prune.selection.select_channels` (:class:`~ncslim.prune.rule.PruneRule` is
    the rule as users state it)."""

    ratio: float | None
    threshold: float | None
    min_channels: int
    round_to: int
    max_layer_ratio: float | None
    ranking: str

    def __post_init__(self) -> None:
        check_rule(self.ratio, self.threshold, self.min_channels, self.round_to,
                   self.max_layer_ratio, self.ranking)


def _prune_other(model: nn.Module, rule: _Settings, compensate: bool,
                 example_inputs: torch.Tensor | None,
                 ignored_layers: Sequence[nn.Module | str] | None,
                 scores: Mapping[str, torch.Tensor] | None) -> tuple[nn.Module, PruneReport]:
    """Pruning through Torch-Pruning's graph: any CNN, or a traced ncslim family (whose own
    input shape gives the example inputs, and whose spec records the pruning)."""
    if example_inputs is None and isinstance(model, SlimmableNet):
        reference = next(model.parameters())
        example_inputs = torch.zeros(1, *model.input_shape(), device=reference.device,
                                     dtype=reference.dtype)
    if not isinstance(example_inputs, torch.Tensor):
        raise ValueError(f"prune_model needs example_inputs (a tensor batch, e.g. "
                         f"torch.randn(1, 3, 224, 224)) to prune a {type(model).__name__}: its "
                         f"dependency graph is traced from them")
    if compensate:
        raise ValueError("compensate works for ncslim's own architectures only (--arch), not "
                         "for other or imported (--model) networks")
    small, groups, cut, held = prune_generic(
        model, example_inputs, rule.ratio, rule.threshold, rule.min_channels, rule.round_to,
        ignored_layers, scores, rule.max_layer_ratio, rule.ranking)
    layers = [LayerReport(name, len(kept), total, kept) for name, kept, total in groups]
    shape = tuple(example_inputs[:1].shape)
    report = pruning_report(model, small, shape, layers, cut, rule.ratio, held=held,
                            max_layer_ratio=rule.max_layer_ratio, ranking=rule.ranking)
    if isinstance(small, TracedNet):
        small.record_pruning([(la.name, la.kept) for la in layers if la.kept < la.total])
        inherit_record(small, model, report)
    return small, report


