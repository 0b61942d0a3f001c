"""Physical channel pruning: a smaller dense network from the BN scaling factors.

    >>> import ncslim
    >>> model = ncslim.build_model("vgg", width=0.25)
    >>> small, report = ncslim.prune_model(model, ratio=0.5)
    >>> report.params_after < report.params_before
    True

The rule of network slimming: rank the |gamma| of every prunable BN globally and remove the lowest
``ratio`` of them, or remove every channel with |gamma| <= ``threshold`` (0 removes exactly the
zeros that proximal training leaves); that rule lives in :mod:`ncslim.selection`. The model
family says which layers each BN couples (its :class:`~ncslim.models.PruneSlot` list); this module
only slices tensors along those couplings. :func:`prune_to_budget` searches the ratio that keeps a
given fraction of the FLOPs or of the parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field
from typing import Any

import torch
from torch import nn

from .generic import prune_generic
from .metrics import count_flops, count_params
from .models import PruneSlot, SlimmableNet, TracedNet, build_model
from .regularizer import unwrap
from .selection import (
    DEFAULT_MIN_CHANNELS,
    DEFAULT_RANKING,
    channel_scores,
    check_rule,
    resolve_ranking,
    select_channels,
)

Keep = dict[str, torch.Tensor]  # BN name -> sorted indices of the channels that stay


@dataclass
class LayerReport:
    name: str
    kept: int
    total: int
    indices: list[int]  # the channels that stay, in the original layer's numbering


@dataclass
class PruneReport:
    """What a pruning did: the global threshold, channels kept per layer, size before and after."""

    threshold: float
    ratio: float | None
    removed_fraction: float
    layers: list[LayerReport]
    floored: list[str]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    compensated: bool
    capped: list[str] = field(default_factory=list)  # layers held by the max_layer_ratio cap
    max_layer_ratio: float | None = None
    ranking: str = "global"  # how a ratio ranked layers against each other

    def removed(self) -> torch.Tensor:
        """One bool per channel of the pruned layers, in the report's layer order: True where
        this pruning removed it."""
        parts = []
        for layer in self.layers:
            gone = torch.ones(layer.total, dtype=torch.bool)
            gone[torch.as_tensor(layer.indices, dtype=torch.long)] = False
            parts.append(gone)
        return torch.cat(parts)

    @property
    def params_removed(self) -> float:
        return 1.0 - self.params_after / self.params_before

    @property
    def flops_removed(self) -> float:
        return 1.0 - self.flops_after / self.flops_before

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.max_layer_ratio is None:  # no cap: the record of a pruning without one
            del out["capped"], out["max_layer_ratio"]
        if self.ratio is None:  # a threshold compares raw scores: no ranking
            del out["ranking"]
        out.update(params_removed=self.params_removed, flops_removed=self.flops_removed,
                   macs_before=self.flops_before // 2, macs_after=self.flops_after // 2)
        return out

    def __str__(self) -> str:
        lines = [f"{'layer':<28} {'kept':>6} / total"]
        lines += [f"{layer.name:<28} {layer.kept:>6} / {layer.total}" for layer in self.layers]
        ranked = f" ({self.ranking} ranking)" if self.ratio is not None else ""
        lines.append(f"threshold {self.threshold:.4g}{ranked}; "
                     f"channels removed {self.removed_fraction:.1%}")
        lines.append(f"params {self.params_before:,} -> {self.params_after:,} "
                     f"({self.params_removed:.1%} removed)")
        lines.append(f"FLOPs  {self.flops_before:,} -> {self.flops_after:,} "
                     f"({self.flops_removed:.1%} removed)")
        if self.floored:
            lines.append(f"kept at the min_channels floor: {', '.join(self.floored)}")
        if self.capped:
            lines.append(f"held at the max_layer_ratio cap ({self.max_layer_ratio:g} of a layer's "
                         f"channels at most): {', '.join(self.capped)}")
        if self.compensated:
            lines.append("compensated: the mean output of the removed channels is folded into "
                         "the layers that read them")
        return "\n".join(lines)


def _removed_output(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Expected post-ReLU output of each channel, E[relu(gamma * z + beta)] with z ~ N(0, 1).

    BN normalises its input to zero mean and unit variance over the training data, so this is
    the constant a removed channel contributes on average; for gamma = 0 it is exactly relu(beta).
    """
    gamma, beta = bn.weight.detach().abs(), bn.bias.detach()
    safe = gamma.clamp_min(torch.finfo(gamma.dtype).tiny)
    u = beta / safe
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = beta * normal.cdf(u) + safe * normal.log_prob(u).exp()
    return torch.where(gamma > 0, expected, beta.clamp_min(0.0))


def _input_sizes(model: nn.Module, names: set[str]) -> dict[str, tuple[int, int]]:
    """Spatial size (H, W) of the input of each named conv, from one forward pass."""
    sizes: dict[str, tuple[int, int]] = {}
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_pre_hook(
        lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name in names if isinstance(modules[name], nn.Conv2d)]
    reference = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, *model.input_shape(), device=reference.device, dtype=reference.dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return sizes


def _tap_coverage(conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """Share of output positions at which each kernel tap reads inside the image, not padding.

    A constant input through a zero-padded conv gives an output that is smaller at the border;
    weighting the taps by their coverage makes the folded bias the exact spatial mean.
    """
    per_axis = []
    for k, s, p, d, n in zip(conv.kernel_size, conv.stride, conv.padding, conv.dilation, size):
        outputs = range((n + 2 * p - d * (k - 1) - 1) // s + 1)
        per_axis.append([sum(0 <= i * s - p + t * d < n for i in outputs) / len(outputs)
                         for t in range(k)])
    rows, cols = (torch.tensor(a, dtype=conv.weight.dtype, device=conv.weight.device)
                  for a in per_axis)
    return rows[:, None] * cols[None, :]


def _compensation(model: SlimmableNet, slots: list[PruneSlot],
                  keep: Keep) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-module output shifts that stand in for the average output of the removed channels.

    Returns (running-mean shifts keyed by BN name, bias additions keyed by consumer name).
    """
    modules = dict(model.named_modules())
    sizes = _input_sizes(model, {name for slot in slots for name in slot.consumers})
    mean_shift: dict[str, torch.Tensor] = {}
    bias_add: dict[str, torch.Tensor] = {}
    for slot in slots:
        bn = modules[slot.bn]
        removed = torch.ones(bn.num_features, dtype=torch.bool, device=bn.weight.device)
        removed[keep[slot.bn]] = False
        if not removed.any():
            continue
        constant = _removed_output(bn)[removed]
        for name in slot.consumers:
            consumer = modules[name]
            weight = consumer.weight.detach()[:, removed]
            if isinstance(consumer, nn.Conv2d):
                weight = (weight * _tap_coverage(consumer, sizes[name])).sum((2, 3))
            delta = weight @ constant
            target, key = (mean_shift, slot.fold) if slot.fold else (bias_add, name)
            target[key] = target.get(key, 0) + delta
    return mean_shift, bias_add


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
    ranks layers against each other (:data:`ncslim.selection.RANKINGS`: ``global``, raw scores,
    or ``layer``, each divided by its layer's mean; ``auto`` is ``global`` here).
    ``compensate`` folds the average output of each removed channel into the layer that read it
    (a bias or the next BN's running mean), so the pruned network is closer to the original
    before fine-tuning; ``model`` is left untouched.

    Any other CNN is pruned through Torch-Pruning's dependency graph (:mod:`ncslim.generic`),
    traced from ``example_inputs`` (required then, e.g. ``torch.randn(1, 3, 224, 224)``);
    ``ignored_layers`` (modules or their names) keep every input and output channel, and so does
    every layer coupled to them. ``compensate`` is for ncslim architectures only.

    ``scores`` (per-channel tensors keyed by BN name) are ranked instead of |gamma|, e.g. VCP's
    ``VariationalScales.scores()`` with ``threshold=1.0``.
    """
    model = unwrap(model)
    rule = _Rule(ratio, threshold, min_channels, round_to, max_layer_ratio,
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
    mean_shift, bias_add = _compensation(model, slots, keep) if compensate else ({}, {})
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


def inherit_record(small: SlimmableNet, model: SlimmableNet, report: PruneReport) -> None:
    """What a pruned model keeps of its original's record: the full size and the data."""
    small.pruned_from = model.pruned_from or {
        "params": report.params_before, "flops": report.flops_before,
        "channels": sum(layer.total for layer in report.layers)}
    small.trained_on = model.trained_on


@dataclass(frozen=True)
class _Rule:
    """The selection rule's settings (:func:`~ncslim.selection.select_channels`)."""

    ratio: float | None
    threshold: float | None
    min_channels: int
    round_to: int
    max_layer_ratio: float | None
    ranking: str

    def __post_init__(self) -> None:
        check_rule(self.ratio, self.threshold, self.min_channels, self.round_to,
                   self.max_layer_ratio, self.ranking)


def pruning_report(model: nn.Module, small: nn.Module, shape: Sequence[int],
                   layers: list[LayerReport], cut: float, ratio: float | None, *,
                   held: dict[str, list[str]] | None = None,
                   max_layer_ratio: float | None = None,
                   compensated: bool = False, ranking: str = "global") -> PruneReport:
    """The report of one pruning: sizes counted on both models, channels from ``layers``;
    ``held``: the layers kept at the floor ("floored") and at the cap ("capped")."""
    held = held or {"floored": [], "capped": []}
    return PruneReport(
        threshold=cut, ratio=ratio, layers=layers, floored=held["floored"],
        capped=held["capped"], max_layer_ratio=max_layer_ratio, compensated=compensated,
        ranking=ranking,
        removed_fraction=1.0 - sum(la.kept for la in layers) / sum(la.total for la in layers),
        params_before=count_params(model), params_after=count_params(small),
        flops_before=count_flops(model, shape), flops_after=count_flops(small, shape),
    )


def _prune_other(model: nn.Module, rule: _Rule, compensate: bool,
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


MEASURES = {"flops": ("FLOPs", "--target-flops"), "params": ("parameters", "--target-params")}


def _sizes(report: PruneReport, measure: str) -> tuple[int, int]:
    """``measure`` (FLOPs or parameters) of the pruned model and of the original."""
    if measure == "flops":
        return report.flops_after, report.flops_before
    return report.params_after, report.params_before


def _fits(report: PruneReport, measure: str, fraction: float) -> bool:
    after, before = _sizes(report, measure)
    return after <= fraction * before


def prune_to_budget(model: nn.Module, fraction: float, measure: str = "flops",
                    iterations: int = 14, **options: Any) -> tuple[nn.Module, PruneReport]:
    """Prune the smallest global ratio whose ``measure`` falls to ``fraction`` x the original.

    ``measure`` is ``"flops"`` or ``"params"``; both fall as the ratio grows, so the ratio is
    found by bisection. ``options`` go to :func:`prune_model` (``min_channels``, ``round_to``,
    ``max_layer_ratio``, ``ranking`` (``auto``: the one for ``measure``), ``compensate``,
    ``scores``, and for other models ``example_inputs`` and ``ignored_layers``).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    options["ranking"] = resolve_ranking(options.get("ranking", DEFAULT_RANKING), measure)
    what, flag = MEASURES[measure]
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ValueError(f"{flag} (the fraction of {what} kept) must be in (0, 1], "
                         f"got {fraction}")
    low, high = 0.0, 1.0 - 1e-9
    best = prune_model(model, ratio=low, **options)
    if _fits(best[1], measure, fraction):
        return best
    best = prune_model(model, ratio=high, **options)
    if not _fits(best[1], measure, fraction):
        after, before = _sizes(best[1], measure)
        raise ValueError(f"{what} cannot fall to {fraction:.1%} of the original ({flag}) even "
                         f"at ratio ~1 (reached {after / before:.1%}); lower "
                         f"--min-channels or --round-to"
                         + (", or raise --max-layer-ratio" if options.get("max_layer_ratio")
                            is not None else ""))
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        candidate = prune_model(model, ratio=middle, **options)
        if _fits(candidate[1], measure, fraction):
            high, best = middle, candidate
        else:
            low = middle
    return best


def prune_to_flops(model: nn.Module, target: float, iterations: int = 14,
                   **options: Any) -> tuple[nn.Module, PruneReport]:
    """Prune the smallest global ratio whose FLOPs fall to ``target`` x the original or below
    (:func:`prune_to_budget` with ``measure="flops"``)."""
    return prune_to_budget(model, target, "flops", iterations, **options)
