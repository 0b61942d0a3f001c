"""``--lam auto``: lambda adapted while training, so that the channels a pruning target removes
end with |gamma| near zero and the others are penalised as little as that allows.

    reg = ncslim.SparsityRegularizer(model, ncslim.make_penalty("tl1", lam=START_LAM),
                                     mode="proximal")
    auto = LambdaController(reg, target=0.5, total_steps=epochs * steps_per_epoch)
    ...  # each step, after opt.step(), one call, as with reg.proximal_step(lr):
    auto.after_step(lr)                # subgradient mode: auto.after_backward() before step()

The controller is integral control of log lambda on the share of scaling factors near zero:
every ``every`` steps it measures ``share = mean(|gamma| <= zero)`` on the device and, one
update later (so the loop never waits for the device, and every process and a resumed run see
the same values), moves ``log lambda`` by ``gain * (wanted - share)``. ``wanted`` ramps from 0
to the target's share over the first ``ramp`` of the steps (a tightening schedule) and then
holds, so the sparsity settles while the learning rate is still high and the kept channels
train on after it. Too few small gammas raise lambda, too many lower it. ``zero`` is
``ZERO_SHARE`` of the gammas' initial median (0.01 for the reference initialisation, gamma 0.5).

A target given as a FLOPs or parameter fraction becomes a share of channels once an epoch: the
share that pruning to that budget would remove from the current model (``share_of``).
docs/lambda-controller.md explains the choice and its measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .regularizer import SparsityRegularizer
from .selection import layer_floor
from .sparsity import SparsityMethod

START_LAM = 1e-4  # the paper's lambda for VGG: where the controller starts
LAM_RANGE = (1e-7, 1.0)
ZERO_SHARE = 0.02  # "near zero": below this share of the initial median |gamma|
EVERY = 10  # steps between two updates
GAIN = 0.5  # change of log lambda per update for a distance of 1 (all channels)
RAMP = 0.4  # share of the training over which the wanted share grows to the target


class LambdaController(SparsityMethod):
    """A :class:`~ncslim.regularizer.SparsityRegularizer` whose lambda follows a target.

    ``target`` is the share of channels pruning will remove (a ratio), or a function of the model
    that returns it (called at the start of every epoch: FLOPs and parameter budgets).
    ``weights`` (one per channel, flat in the regularizer's order) make the aim rank
    ``|gamma| / weight``: MorphNet's cost weighting (:mod:`ncslim.costs`). The channels each
    layer keeps whatever the target (``min_channels``, and the ``max_layer_ratio`` cap) are never
    aimed at, and the target share is at most what is left outside them.
    """

    def __init__(self, regularizer: SparsityRegularizer, target: float | Callable[[Any], float],
                 total_steps: int, every: int = EVERY, gain: float = GAIN,
                 ramp: float = RAMP, weights: torch.Tensor | None = None,
                 min_channels: int = 1, max_layer_ratio: float | None = None) -> None:
        super().__init__(regularizer.model)
        if callable(target):
            self._share_of, share = target, None
        else:
            if not 0.0 <= target < 1.0:
                raise ValueError(f"the controller's target share must be in [0, 1), got {target}")
            self._share_of, share = None, float(target)
        self.reg = regularizer
        # per channel, what removing it saves relative to the mean (ncslim.costs): the aim
        # ranks |gamma| / weight, as pruning to the budget then does
        self.inverse_weights = None if weights is None else 1.0 / weights.clamp(min=1e-12)
        # pruning keeps each layer's strongest min_channels (and what the cap keeps) whatever the
        # target: never aimed
        sizes = torch.tensor(regularizer.sizes)
        floors = torch.tensor([layer_floor(n, min_channels, max_layer_ratio)
                               for n in regularizer.sizes])
        self.removable = 1.0 - float(floors.sum()) / max(int(sizes.sum()), 1)
        self._layer_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        self._floor_of = torch.repeat_interleave(floors, sizes)  # per channel: its layer's floor
        self._layer_start = sizes.cumsum(0) - sizes
        self.total_steps, self.every, self.gain, self.ramp = max(total_steps, 1), every, gain, ramp
        gammas = regularizer.scales().abs().float()
        self.zero = ZERO_SHARE * float(gammas.median())
        self._set_floor()
        # the aimed channels' BN shifts go to zero too: a channel with gamma = 0 still sends the
        # constant relu(beta), which no bias folds exactly where zero padding meets small maps
        modules = dict(self.model.named_modules())
        self.betas = [modules[name].bias for name in regularizer.names]
        self._betas = torch.empty(0)
        self.target_share = min(share, self.removable) if share is not None else 0.0
        self.steps = 0
        self.pending: torch.Tensor | None = None  # the last measurement, applied at the next update
        # one call per step, as for the plain regularizer: the hook its mode uses also counts
        if regularizer.mode == "proximal":
            self.after_step = self._prox_and_count  # type: ignore[method-assign]
        else:
            self.after_backward = self._gradient_and_count  # type: ignore[method-assign]
        self._aim()

    @property
    def lam(self) -> float:
        return self.reg.penalty.lam

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return self.reg.param_groups(weight_decay)

    def wanted(self) -> float:
        """The share of near-zero gammas wanted now: the target, ramped in over the first steps."""
        return self.target_share * min(1.0, self.steps / (self.ramp * self.total_steps))

    def begin_epoch(self, seed: int, epoch: int) -> None:
        if self._share_of is not None:
            self.target_share = min(float(self._share_of(self.model)), self.removable)
            self._aim()

    def _set_floor(self) -> None:
        # lp's derivative is unbounded at 0: exact subgradient steps throw an aimed gamma across
        # zero, and the harder lambda pushes the wider it swings (docs/lambda-controller.md)
        self.reg.grad_floor = self.zero if self.reg.penalty.SINGULAR_AT_ZERO else 0.0

    def _aim(self) -> None:
        """Point the penalty at the channels pruning to the target would remove now: the
        ``target_share`` smallest |gamma| (per unit of cost with ``weights``) outside each
        layer's floor of strongest (on the device, no sync)."""
        with torch.no_grad():
            scales = self.reg._gather().abs()
            if self.inverse_weights is not None:
                if self.inverse_weights.device != scales.device:  # once, not at every aim
                    self.inverse_weights = self.inverse_weights.to(scales.device)
                scales = scales * self.inverse_weights
            scales = self._floor_kept(scales)
            count = round(self.target_share * scales.numel())
            if count == 0:
                self.reg.mask = torch.zeros_like(scales, dtype=torch.bool)
                return
            self.reg.mask = scales <= torch.kthvalue(scales.float(), count).values

    def _floor_kept(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` with each layer's floor (``min_channels``, or what the cap keeps) of highest
        set to inf (sorts, no sync)."""
        if self._layer_of.device != scores.device:
            self._layer_of = self._layer_of.to(scores.device)
            self._layer_start = self._layer_start.to(scores.device)
            self._floor_of = self._floor_of.to(scores.device)
        falling = torch.argsort(scores, descending=True, stable=True)
        by_layer = falling[torch.argsort(self._layer_of[falling], stable=True)]
        rank = torch.empty_like(by_layer)
        rank[by_layer] = (torch.arange(by_layer.numel(), device=scores.device)
                          - self._layer_start[self._layer_of[by_layer]])
        return torch.where(rank < self._floor_of, torch.inf, scores.float())

    def _prox_and_count(self, lr: float) -> None:
        self.reg.proximal_step(lr)
        with torch.no_grad():  # l1's prox on the aimed betas: soft thresholding
            flat = self._flat_betas()
            shrunk = flat.sign() * (flat.abs() - lr * self.lam).clamp(min=0)
            new = torch.where(self.reg.mask, shrunk, flat)
            torch._foreach_copy_(self.betas, new.split(self.reg.sizes))
        self._count()

    def _gradient_and_count(self) -> None:
        self.reg.apply_gradient()
        with torch.no_grad():  # l1's subgradient on the aimed betas
            flat = self._flat_betas()
            step = (self.lam * flat.sign() * self.reg.mask).split(self.reg.sizes)
            grads = [b.grad if b.grad is not None else torch.zeros_like(b) for b in self.betas]
            torch._foreach_add_(grads, step)
            for beta, grad in zip(self.betas, grads):
                beta.grad = grad
        self._count()

    def _flat_betas(self) -> torch.Tensor:
        """All aimed-at BN shifts as one vector, in a buffer reused from step to step."""
        first = self.betas[0]
        if self._betas.device != first.device or self._betas.dtype != first.dtype:
            self._betas = torch.empty(sum(self.reg.sizes), device=first.device, dtype=first.dtype)
        return torch.cat([b.detach() for b in self.betas], out=self._betas)

    def _count(self) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        if self.pending is not None:
            self._update(float(self.pending))  # measured `every` steps ago: long since computed
        self.pending = self._measure()
        self._aim()

    def _measure(self) -> torch.Tensor:
        with torch.no_grad():
            return (self.reg._gather().abs() <= self.zero).float().mean()

    def _update(self, share: float) -> None:
        lam = self.reg.penalty.lam * math.exp(self.gain * (self.wanted() - share))
        self.reg.penalty.lam = min(max(lam, LAM_RANGE[0]), LAM_RANGE[1])

    def share_near_zero(self) -> float:
        return float(self._measure())

    def end_epoch(self) -> dict[str, float]:
        share = self.share_near_zero()  # one sync an epoch, with the evaluation's
        return {"lam": self.lam, "penalty": float(self.reg.penalty_value()),
                "target_share": self.target_share, "share_near_zero": share,
                "target_distance": self.target_share - share}

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.reg.penalty.lam, "steps": self.steps,
                "target_share": self.target_share, "zero": self.zero,
                "pending": None if self.pending is None else float(self.pending),
                "mask": self.reg.mask.detach().cpu().clone()}  # aimed at the last update's gammas

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lam" not in state or "steps" not in state:
            raise ValueError("the checkpoint holds no lambda-controller state (it was not trained "
                             "with --lam auto); resume it with its own settings (config.json)")
        self.reg.penalty.lam = float(state["lam"])
        self.steps, self.target_share = int(state["steps"]), float(state["target_share"])
        self.zero = float(state["zero"])
        self._set_floor()
        device = self.reg.gammas[0].device
        self.pending = (None if state["pending"] is None
                        else torch.tensor(state["pending"], device=device))
        if state.get("mask") is None or state["mask"].shape != self.reg.mask.shape:
            raise ValueError("the checkpoint's lambda-controller state is for other channels")
        self.reg.mask = state["mask"].to(device=device, dtype=torch.bool)
