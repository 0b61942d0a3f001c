"""The one protocol of sparsity methods: the hooks a training loop calls, whatever the method.

    opt = torch.optim.SGD(method.param_groups(weight_decay=1e-4), lr=0.1, momentum=0.9)
    for epoch in range(epochs):
        method.begin_epoch(seed, epoch)
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            (F.cross_entropy(model(x), y) + method.loss_term()).backward()
            method.after_backward()          # with AMP: after scaler.unscale_(opt)
            opt.step()
            method.after_step(lr)
        metrics = method.end_epoch()         # {"lam": ..., ...}: host values, once an epoch
    method.finish()

:class:`SparsityMethod` itself is "no sparsity" (every hook does nothing); the penalty
(:class:`~ncslim.sparsity.regularizer.SparsityRegularizer`), the Bayesian baseline
(:class:`~ncslim.sparsity.vcp.VariationalScales`) and the lambda controller
(:class:`~ncslim.sparsity.controller.LambdaController`) override the hooks they need. A new
method is a subclass; the loop does not change. The per-step hooks run no host synchronisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.scales import unwrap


class SparsityMethod:
    """No sparsity: the hooks of the protocol, each doing nothing (fine-tuning, ``--penalty
    none``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap(model)

    @property
    def lam(self) -> float:
        """The penalty weight now (0 without a penalty); a host float, read without a sync."""
        return 0.0

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (the method may add parameters or exempt some from decay)."""
        return [{"params": list(self.model.parameters()), "weight_decay": weight_decay}]

    def loss_term(self) -> torch.Tensor | float:
        """What the method adds to the training loss of a step."""
        return 0.0

    def after_backward(self) -> None:
        """After ``backward()`` (and AMP's ``unscale_``), before ``optimizer.step()``."""

    def after_step(self, lr: float) -> None:
        """After ``optimizer.step()``, with the step's learning rate."""

    def begin_epoch(self, seed: int, epoch: int) -> None:
        """Before an epoch's first step; randomness is drawn from (seed, epoch)."""

    def end_epoch(self) -> dict[str, float]:
        """After an epoch: what the method reports for ``metrics.jsonl`` (may sync once)."""
        return {"lam": self.lam}

    def finish(self) -> None:
        """After the last epoch (also when a resumed run had none left)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume the method exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result."""
