"""``--lam auto``: lambda adapted while training, so that the channels a pruning target removes
are exactly zero when sparsity training ends and the others are penalised as little as that
allows.

    reg = ncslim.SparsityRegularizer(model, ncslim.make_penalty("tl1", lam=START_LAM),
                                     mode="proximal")
    auto = LambdaController(reg, target=0.5, total_steps=epochs * steps_per_epoch,
                            schedule=lambda step: lr_of_epoch[step // steps_per_epoch])
    ...  # each step, after opt.step(), one call, as with reg.proximal_step(lr):
    auto.after_step(lr)                # subgradient mode: auto.after_backward() before step()

The run has three phases, in shares of its steps:

1. **Select** (before ``FINISH[0]``). Every ``every`` steps the penalty is aimed at the channels
   pruning to the target would remove now, and ``log lambda`` moves by ``gain x (wanted - share)
   x (tau since the last update)``: integral control on the share of gammas near zero, with
   ``wanted`` ramping from 0 to the target share over the first ``RAMP`` of the steps. ``tau`` is
   the share of the run's summed learning rate (``schedule``), what the penalty's shrinking
   spends: a run with few steps, large batches or a decayed rate gets the same reach per unit
   of distance. The measurement is taken on the device and applied one update later (no host
   sync; the same on every process). With a schedule, lambda starts where the ramp's learning
   rate brings a median gamma to zero (:meth:`LambdaController.start_lam`), so short runs and
   large batches start in range.
2. **Finish** (``FINISH[0]`` to ``FINISH[1]``). The channels the cut removes now are frozen,
   and their gammas and BN shifts shrink linearly to exactly zero at the deadline, whatever
   lambda achieved: the budget holds in runs too short, too decayed or too compressed for the
   penalty alone. The deadline comes before a step schedule first lowers the learning rate.
3. **Hold** (from ``FINISH[1]``). They stay exactly zero while the kept channels train on, so
   the model that sparsity training ends with is the pruned model: pruning costs nothing.

``zero`` (what "near zero" means for the share) is ``ZERO_SHARE`` of the gammas' initial median
(0.01 for the reference initialisation, gamma 0.5). A target given as a FLOPs or parameter
fraction becomes a share of channels once an epoch (``target``), and the frozen set is the
pruning search's own (``removal``). docs/lambda-controller.md explains the choice and its
measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..prune.selection import DEFAULT_MIN_CHANNELS
from .aim import ChannelAim
from .method import SparsityMethod
from .regularizer import SparsityRegularizer

START_LAM = 1e-4  # the paper's lambda for VGG: the penalty's lambda before the controller's own
LAM_RANGE = (1e-7, 1.0)
ZERO_SHARE = 0.02  # "near zero": below this share of the initial median |gamma|
EVERY = 10  # steps between two updates (fewer in runs of under 600 steps)
GAIN = 30.0  # change of log lambda for a distance of 1 (all channels) held over the whole run
MAX_MOVE = 0.5  # at most this change of log lambda in one update
RAMP = 0.3  # share of the steps over which the wanted share grows to the target
FINISH = (0.35, 0.5)  # share of the steps at which the removed channels freeze, and by which
# they are zero: before a step schedule first lowers the learning rate, and half the run left
START_SCALE = 1.0  # lambda starts at this many times the lambda that just zeroes a median gamma


def default_every(total_steps: int) -> int:
    """Steps between two updates: 10, or fewer in a short run (at least 60 updates, every >= 3)."""
    return max(3, min(EVERY, total_steps // 60))


class LambdaController(SparsityMethod):
    """A :class:`~ncslim.sparsity.regularizer.SparsityRegularizer` whose lambda follows a target,
    and whose aimed channels end exactly zero.

    ``target`` is the share of channels pruning will remove (a ratio), or a function of the model
    that returns it (called at the start of every epoch: FLOPs and parameter budgets).
    ``removal``, for such a budget, returns the flat mask (in the regularizer's order) of the
    channels the pruning search removes from the model now: the set frozen at the finish.
    ``schedule(step)`` is the learning rate of a step: with it, lambda starts where the
    schedule can shrink a median gamma to zero over the ramp (``momentum``, the optimizer's,
    multiplies a subgradient step's reach); without it, at the penalty's own lambda, and the
    learning rate counts as constant. ``finish`` (shares of the steps: freeze, deadline) or None
    for no finishing phase (the penalty alone: an ablation).
    ``weights`` (one per channel, flat in the regularizer's order) make the aim rank
    ``|gamma| / weight``: MorphNet's cost weighting (:mod:`ncslim.prune.costs`). The channels each
    layer keeps whatever the target (``min_channels``, and the ``max_layer_ratio`` cap) are never
    aimed at, and the target share is at most what is left outside them. ``units`` (from
    :func:`ncslim.prune.generic.channel_groups`: group sizes, and each BN channel's group channel)
    make every share and aim count coupled group channels, the units the cut removes.
    """

    def __init__(self, regularizer: SparsityRegularizer, target: float | Callable[[Any], float],
                 total_steps: int, every: int | None = None, gain: float = GAIN,
                 ramp: float = RAMP, weights: torch.Tensor | None = None,
                 min_channels: int = DEFAULT_MIN_CHANNELS, max_layer_ratio: float | None = None,
                 schedule: Callable[[int], float] | None = None, momentum: float = 0.0,
                 removal: Callable[[Any], torch.Tensor | None] | None = None,
                 finish: tuple[float, float] | None = FINISH,
                 start_lam: float | None = None,
                 units: tuple[list[int], torch.Tensor] | None = None,
                 ranking: str = "global") -> None:
        super().__init__(regularizer.model)
        if callable(target):
            self._share_of, share = target, None
        else:
            if not 0.0 <= target < 1.0:
                raise ValueError(f"the controller's target share must be in [0, 1), got {target}")
            self._share_of, share = None, float(target)
        if finish is not None and not (0.0 < finish[0] <= finish[1] <= 1.0
                                       and 0.0 < ramp <= finish[0]):
            raise ValueError(f"the controller needs 0 < ramp <= finish[0] <= finish[1] <= 1, got "
                             f"ramp {ramp}, finish {finish}")
        self.reg, self._removal, self.ranking = regularizer, removal, ranking
        self.aim = ChannelAim(regularizer.sizes, min_channels, max_layer_ratio, ranking, weights,
                              units)
        self.removable = self.aim.removable
        self.total_steps = max(total_steps, 1)
        self.every = default_every(self.total_steps) if every is None else every
        self.gain, self.ramp, self.window = gain, ramp, finish
        self.schedule = schedule or (lambda step: 1.0)
        self.total_mass = sum(self.schedule(s) for s in range(self.total_steps)) or 1.0
        gammas = regularizer.scales().abs().float()
        self.zero = ZERO_SHARE * float(gammas.median())
        self._set_floor()
        if start_lam is None and schedule is not None:  # else: the penalty's own lambda
            start_lam = self.start_lam(float(gammas.median()), momentum)
        if start_lam is not None:
            self.reg.penalty.lam = min(max(start_lam, LAM_RANGE[0]), LAM_RANGE[1])
        # the aimed channels' BN shifts go to zero too: a channel with gamma = 0 still sends the
        # constant relu(beta), which no bias folds exactly where zero padding meets small maps
        modules = dict(self.model.named_modules())
        self.betas = [modules[name].bias for name in regularizer.names]
        self._betas = torch.empty(0)
        self.target_share = min(share, self.removable) if share is not None else 0.0
        self.steps, self.mass, self.updated_at = 0, 0.0, 0.0
        self.pending: torch.Tensor | None = None  # the last measurement, applied at the next update
        self.frozen = False  # the finish: the removed channels are fixed and shrink to zero
        self.left = 1.0  # the share of their size they keep now (finish: 1 -> 0 by the deadline)
        self._bind_hooks()
        self._aim()

    def _bind_hooks(self) -> None:
        """One call per step, as for the plain regularizer, bound per phase (never chosen in the
        step): while selecting, the penalty's own hook and the count; once frozen, only the
        shrink and the count (the penalty acts on the frozen set alone, which the shrink sets)."""
        if self.frozen:
            self.after_backward = self.reg._nothing  # type: ignore[method-assign]
            self.after_step = self._finish_and_count  # type: ignore[method-assign]
        elif self.reg.mode == "proximal":
            self.after_step = self._prox_and_count  # type: ignore[method-assign]
        else:
            self.after_backward = self._gradient  # type: ignore[method-assign]
            self.after_step = self._finish_and_count  # type: ignore[method-assign]

    @property
    def lam(self) -> float:
        return self.reg.penalty.lam

    @property
    def tau(self) -> float:
        """The share of the run's summed learning rate spent so far."""
        return self.mass / self.total_mass

    @property
    def progress(self) -> float:
        """The share of the run's steps done."""
        return self.steps / self.total_steps

    def start_lam(self, median: float, momentum: float) -> float:
        """The lambda at which the ramp's summed learning rate (times ``1 / (1 - momentum)`` for
        subgradient steps, which momentum carries on) brings a gamma of ``median`` to zero at
        the penalty's slope near zero, times ``START_SCALE`` (the loss holds channels up)."""
        penalty = self.reg.penalty
        near = self.zero if penalty.SINGULAR_AT_ZERO else 1e-12
        slope = abs(float(penalty.grad(torch.tensor([near], dtype=torch.float64))[0]))
        slope = slope / max(penalty.lam, 1e-30)
        reach = sum(self.schedule(s) for s in range(int(self.ramp * self.total_steps))) or 1.0
        if self.reg.mode == "subgradient":
            reach /= max(1.0 - momentum, 1e-3)
        return START_SCALE * median / max(slope * reach, 1e-30)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return self.reg.param_groups(weight_decay)

    def wanted(self) -> float:
        """The share of near-zero gammas wanted now: the target, ramped in over the steps."""
        return self.target_share * min(1.0, self.progress / self.ramp)

    def begin_epoch(self, seed: int, epoch: int) -> None:
        if self._share_of is not None and not self.frozen:
            self.target_share = min(float(self._share_of(self.model)), self.removable)
            self._aim()

    def _set_floor(self) -> None:
        # a subgradient step of fixed size throws a gamma near zero across it (lp's, unbounded
        # there, ever wider), so the share near zero never settles and lambda runs away: inside
        # the near-zero band the step shrinks with |gamma|, and zero attracts
        # (docs/lambda-controller.md)
        self.reg.grad_floor = self.zero

    def _aim(self) -> None:
        """Point the penalty at the channels pruning to the target would remove now (on the
        device, no sync)."""
        with torch.no_grad():
            self.reg.mask = self.aim.mask(self.reg._gather().abs(), self.target_share)

    def _prox_and_count(self, lr: float) -> None:
        self.reg.proximal_step(lr)
        with torch.no_grad():  # l1's prox on the aimed betas: soft thresholding
            flat = self._flat_betas()
            shrunk = flat.sign() * (flat.abs() - lr * self.lam).clamp(min=0)
            new = torch.where(self.reg.mask, shrunk, flat)
            torch._foreach_copy_(self.betas, new.split(self.reg.sizes))
        self._finish_and_count(lr)

    def _gradient(self) -> None:
        self.reg.apply_gradient()
        with torch.no_grad():  # l1's subgradient on the aimed betas
            flat = self._flat_betas()
            step = (self.lam * flat.sign() * self.reg.mask).split(self.reg.sizes)
            grads = [b.grad if b.grad is not None else torch.zeros_like(b) for b in self.betas]
            torch._foreach_add_(grads, step)
            for beta, grad in zip(self.betas, grads):
                beta.grad = grad

    def _flat_betas(self) -> torch.Tensor:
        """All aimed-at BN shifts as one vector, in a buffer reused from step to step."""
        first = self.betas[0]
        if self._betas.device != first.device or self._betas.dtype != first.dtype:
            self._betas = torch.empty(sum(self.reg.sizes), device=first.device, dtype=first.dtype)
        return torch.cat([b.detach() for b in self.betas], out=self._betas)

    def _finish_and_count(self, lr: float = 0.0) -> None:
        """After the optimizer's step: count it, then shrink the frozen channels (finish and
        hold), or every ``every`` steps update lambda and aim (select). Host arithmetic only."""
        self.mass += self.schedule(self.steps)
        self.steps += 1
        if self.frozen:
            self._shrink()
        elif self.window is not None and self.progress >= self.window[0]:
            self._freeze()
            self._shrink()
        elif self.steps % self.every == 0:
            if self.pending is not None:
                self._update(float(self.pending))  # measured `every` steps ago: long computed
            self.pending = self._measure()
            self._aim()

    def _freeze(self) -> None:
        """Fix the channels the cut removes now (the pruning search's own with a budget)."""
        removed = None if self._removal is None else self._removal(self.model)
        if removed is not None:
            self.reg.mask = removed.to(self.reg.gammas[0].device)
            self.target_share = float(removed.float().mean())  # one sync, once a run
        else:
            self._aim()
        self.frozen, self.pending = True, None
        self._bind_hooks()

    def _shrink(self) -> None:
        """Scale the frozen channels' gammas and shifts to the share of their size the linear
        path to zero at the deadline leaves them now (exactly zero from the deadline on)."""
        start, deadline = self.window  # type: ignore[misc]
        left = min(1.0, max(0.0, (deadline - self.progress) / max(deadline - start, 1e-12)))
        factor = left / self.left if self.left > 0.0 else 0.0
        self.left = left
        if factor == 1.0:
            return
        with torch.no_grad():
            mask = self.reg.mask
            for flat, params in ((self.reg._gather(), self.reg.gammas),
                                 (self._flat_betas(), self.betas)):
                new = torch.where(mask, flat * factor, flat)
                torch._foreach_copy_(params, new.split(self.reg.sizes))

    def _measure(self) -> torch.Tensor:
        with torch.no_grad():
            return (self.aim.scores(self.reg._gather().abs()) <= self.zero).float().mean()

    def _update(self, share: float) -> None:
        move = self.gain * (self.wanted() - share) * (self.mass - self.updated_at) / self.total_mass
        self.updated_at = self.mass
        lam = self.reg.penalty.lam * math.exp(min(max(move, -MAX_MOVE), MAX_MOVE))
        self.reg.penalty.lam = min(max(lam, LAM_RANGE[0]), LAM_RANGE[1])

    def share_near_zero(self) -> float:
        return float(self._measure())

    def end_epoch(self) -> dict[str, float]:
        share = self.share_near_zero()  # one sync an epoch, with the evaluation's
        return {"lam": self.lam, "penalty": float(self.reg.penalty_value()),
                "target_share": self.target_share, "share_near_zero": share,
                "target_distance": self.target_share - share, "tau": self.tau,
                "frozen_share": float(self.reg.mask.float().mean()) if self.frozen else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.reg.penalty.lam, "steps": self.steps, "mass": self.mass,
                "updated_at": self.updated_at, "target_share": self.target_share,
                "zero": self.zero, "frozen": self.frozen, "left": self.left,
                "pending": None if self.pending is None else float(self.pending),
                "mask": self.reg.mask.detach().cpu().clone()}  # aimed at the last update's gammas

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lam" not in state or "steps" not in state:
            raise ValueError("the checkpoint holds no lambda-controller state (it was not trained "
                             "with --lam auto); resume it with its own settings (config.json)")
        if "mass" not in state:
            raise ValueError("the checkpoint's lambda-controller state is from an ncslim before "
                             "the finishing phase; start the run afresh in another --out")
        self.reg.penalty.lam = float(state["lam"])
        self.steps, self.target_share = int(state["steps"]), float(state["target_share"])
        self.mass, self.updated_at = float(state["mass"]), float(state["updated_at"])
        self.frozen, self.left = bool(state["frozen"]), float(state["left"])
        self._bind_hooks()
        self.zero = float(state["zero"])
        self._set_floor()
        device = self.reg.gammas[0].device
        self.pending = (None if state["pending"] is None
                        else torch.tensor(state["pending"], device=device))
        if state.get("mask") is None or state["mask"].shape != self.reg.mask.shape:
            raise ValueError("the checkpoint's lambda-controller state is for other channels")
        self.reg.mask = state["mask"].to(device=device, dtype=torch.bool)
