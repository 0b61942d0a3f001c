"""The sparsity regularizer: a penalty on the BatchNorm scaling factors, in the training loop.

It touches the loop at one point, by mode::

    reg = ncslim.SparsityRegularizer(model, ncslim.make_penalty("tl1", lam=1e-4, a=1.0))
    opt = torch.optim.SGD(reg.param_groups(weight_decay=1e-4), lr=0.1, momentum=0.9)
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        reg.apply_gradient()          # mode="subgradient": adds grad(gamma) to every gamma's .grad
        opt.step()
        # mode="proximal": instead, after opt.step():  reg.proximal_step(lr)

With AMP's GradScaler the penalty must see *unscaled* gradients, or its strength silently
shrinks by the loss scale (65536 by default)::

    scaler.scale(loss).backward()
    scaler.unscale_(opt)              # first bring the gradients back to their true scale
    reg.apply_gradient()
    scaler.step(opt)                  # step() knows unscale_ ran and does not unscale twice
    scaler.update()

The proximal step needs no such care: it acts on the weights after the step.

All gammas are processed as one flat vector (one gather, a few element-wise ops, one scatter),
whatever the number of BN layers.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..models.scales import LayerFilter, find_scales, unwrap
from .method import SparsityMethod
from .penalties import Penalty

__all__ = ["MODES", "LayerFilter", "SparsityRegularizer", "find_scales", "unwrap"]

Mode = Literal["subgradient", "proximal"]
MODES = ("subgradient", "proximal")


class SparsityRegularizer(SparsityMethod):
    """Applies ``penalty`` to the BN scaling factors of ``model``.

    ``mode="subgradient"`` (the paper): call :meth:`apply_gradient` after ``loss.backward()``.
    ``mode="proximal"``: call :meth:`proximal_step` with the learning rate after
    ``optimizer.step()``; gammas then reach exact zeros. ``decay_gammas`` says whether the
    optimizer's weight decay also applies to the gammas (the paper: yes); it takes effect through
    :meth:`param_groups`.
    """

    def __init__(
        self,
        model: nn.Module,
        penalty: Penalty,
        mode: Mode = "subgradient",
        layers: LayerFilter = None,
        decay_gammas: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be a Penalty (ncslim.make_penalty), got {penalty!r}")
        super().__init__(model)
        self.penalty = penalty
        self.mode = mode
        proximal = mode == "proximal"  # the hooks are bound once, not chosen at every step
        self.after_backward = self._nothing if proximal else self.apply_gradient  # type: ignore
        self.after_step = self.proximal_step if proximal else self._ignore_lr  # type: ignore
        self.decay_gammas = decay_gammas
        scales = find_scales(self.model, layers)
        self.names = list(scales)
        self.gammas = list(scales.values())
        self.sizes = [g.numel() for g in self.gammas]
        self._flat = torch.empty(0)
        # which channels the penalty acts on (None: all); the lambda controller sets it to the
        # channels its pruning target removes, so that the others train free of the penalty
        self.mask: torch.Tensor | None = None
        # the subgradient is taken at |gamma| no smaller than this (sign kept): a bounded step
        # near zero for a penalty whose derivative is unbounded there (lp); 0 = the exact one
        self.grad_floor = 0.0

    def __repr__(self) -> str:
        return (f"SparsityRegularizer({self.penalty!r}, mode={self.mode!r}, "
                f"{len(self.gammas)} layers, {sum(self.sizes)} channels)")

    @property
    def lam(self) -> float:
        return self.penalty.lam

    def end_epoch(self) -> dict[str, float]:
        return {"lam": self.penalty.lam, "penalty": float(self.penalty_value())}

    @staticmethod
    def _nothing() -> None:
        pass

    @staticmethod
    def _ignore_lr(lr: float) -> None:
        pass

    def _gather(self) -> torch.Tensor:
        """All gammas as one flat vector, in a buffer reused from step to step."""
        first = self.gammas[0]
        if self._flat.device != first.device or self._flat.dtype != first.dtype:
            self._flat = torch.empty(sum(self.sizes), device=first.device, dtype=first.dtype)
        return torch.cat(self.gammas, out=self._flat)

    @torch.no_grad()
    def apply_gradient(self) -> None:
        """Add the penalty's (sub)gradient to every gamma's ``.grad`` (after ``backward()``)."""
        if self.mode != "subgradient":
            raise RuntimeError("apply_gradient() is for mode='subgradient'; in proximal mode "
                               "call proximal_step(lr) after optimizer.step()")
        grads = [g.grad for g in self.gammas]
        if any(grad is None for grad in grads):  # a BN that took no part in this forward
            grads = [torch.zeros_like(g) if grad is None else grad
                     for g, grad in zip(self.gammas, grads)]
            for g, grad in zip(self.gammas, grads):
                g.grad = grad
        flat = self._gather()
        if self.grad_floor > 0.0:  # below the floor, the floor's derivative scaled down linearly
            size = flat.abs()
            step = (self.penalty.grad(flat.sign() * size.clamp(min=self.grad_floor))
                    * (size / self.grad_floor).clamp(max=1.0))
        else:
            step = self.penalty.grad(flat)
        if self.mask is not None:
            step = step * self.mask
        torch._foreach_add_(grads, step.split(self.sizes))

    @torch.no_grad()
    def proximal_step(self, lr: float) -> None:
        """Set every gamma to ``prox(gamma, lr)`` (after ``optimizer.step()``)."""
        if self.mode != "proximal":
            raise RuntimeError("proximal_step() is for mode='proximal'; in subgradient mode "
                               "call apply_gradient() after loss.backward()")
        flat = self._gather()
        new = self.penalty.prox(flat, float(lr))
        if self.mask is not None:
            new = torch.where(self.mask, new, flat)
        torch._foreach_copy_(self.gammas, new.split(self.sizes))

    @torch.no_grad()
    def penalty_value(self) -> torch.Tensor:
        """The penalty summed over the gammas it acts on, as a 0-dim tensor (no device sync)."""
        value = self.penalty.value(self._gather())
        return (value if self.mask is None else value * self.mask).sum()

    @torch.no_grad()
    def scales(self) -> torch.Tensor:
        """A copy of all regularised gammas as one flat vector."""
        return self._gather().clone()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the gammas get ``weight_decay`` only if ``decay_gammas``."""
        ids = {id(g) for g in self.gammas}
        others = [p for p in self.model.parameters() if id(p) not in ids]
        gamma_decay = weight_decay if self.decay_gammas else 0.0
        return [{"params": others, "weight_decay": weight_decay},
                {"params": self.gammas, "weight_decay": gamma_decay}]
