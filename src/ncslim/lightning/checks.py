"""The callback's argument checks, before any training, and where its gammas are in the
optimizers and how sparse they are."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..sparsity.regularizer import MODES, SparsityRegularizer


def check_args(lam: Any, mode: str, rules: dict[str, float], min_channels: Any, round_to: Any,
                network: Any, example_inputs: Any, compensate: bool, save_to: Any) -> None:
    """One-line ValueErrors for arguments that cannot work, before any training."""
    if isinstance(lam, str) and lam != "auto":
        raise ValueError(f"lam must be a number >= 0 or 'auto', got {lam!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if len(rules) > 1:
        raise ValueError(f"give one pruning rule, not {' and '.join(rules)}")
    if lam == "auto" and (not rules or "threshold" in rules):
        raise ValueError("lam='auto' adapts lambda to a pruning target: give ratio, "
                         "target_flops or target_params (not threshold)")
    for name, value in (("min_channels", min_channels), ("round_to", round_to)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if network is not None and (not isinstance(network, str) or not network):
        raise ValueError(f"network must be a submodule's name such as 'net', got {network!r}")
    if example_inputs is not None and not isinstance(example_inputs, torch.Tensor):
        raise ValueError(f"example_inputs must be a tensor batch such as "
                         f"torch.randn(1, 3, 32, 32), got {type(example_inputs).__name__}")
    if (compensate or save_to is not None) and not rules:
        what = "compensate" if compensate else "save_to"
        raise ValueError(f"{what} is about the pruning at the end of the fit: give ratio, "
                         f"threshold, target_flops or target_params")


def check_max_layer_ratio(value: Any, rules: dict[str, float]) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"max_layer_ratio must be in (0, 1] or None, got {value!r}")
    if not rules:
        raise ValueError("max_layer_ratio caps the pruning at the end of the fit: give ratio, "
                         "threshold, target_flops or target_params")


def gamma_group(optimizers: Sequence[torch.optim.Optimizer], reg: SparsityRegularizer,
                 mode: str) -> tuple[torch.optim.Optimizer, int]:
    """The optimizer and parameter group that train the gammas (whose lr the prox step uses)."""
    wanted = {id(g) for g in reg.gammas}
    found = [(opt, i, wanted & {id(p) for p in group["params"]})
             for opt in optimizers for i, group in enumerate(opt.param_groups)]
    found = [(opt, i, held) for opt, i, held in found if held]
    missing = len(wanted - set().union(*(held for _, _, held in found)))
    if missing:
        raise ValueError(f"the optimizer of configure_optimizers does not train the weights of "
                         f"{missing} of the {len(wanted)} BatchNorm layers the penalty acts on; "
                         f"give it all parameters (self.parameters())")
    if mode == "proximal" and len(found) > 1:
        raise ValueError("mode='proximal' steps every BatchNorm weight with one learning rate: "
                         "put them all in one parameter group of one optimizer")
    return found[0][0], found[0][1]


@torch.no_grad()
def gamma_shares(reg: SparsityRegularizer) -> dict[str, float]:
    """Shares of the scaling factors that are exactly zero and below 1e-2 (one sync)."""
    size = reg.scales().abs().float()
    zero, small = torch.stack([(size == 0).float().mean(), (size < 1e-2).float().mean()]).tolist()
    return {"gamma_zero": zero, "gamma_below_1e-2": small}
