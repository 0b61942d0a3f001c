"""Compensation: fold the average output of each removed channel into the layers that read it
(a bias, or the next BatchNorm's running mean), so the pruned network starts closer to the
original before fine-tuning. For ncslim's own families (their :class:`~ncslim.models.PruneSlot`
list says who reads a channel)."""

from __future__ import annotations

import torch
from torch import nn

from ..models import PruneSlot, SlimmableNet

Keep = dict[str, torch.Tensor]  # BN name -> sorted indices of the channels that stay


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


def compensation(model: SlimmableNet, slots: list[PruneSlot],
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
