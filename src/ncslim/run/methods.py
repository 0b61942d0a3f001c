"""The sparsity method a configuration asks for, for one training stage: the registered method
its ``--penalty`` names (:mod:`ncslim.sparsity.registry`), given the stage's learning rate at
every step.

    method = make_method(cfg, model, n_train=20000, steps=8 * 312)
"""

from __future__ import annotations

from torch import nn

from ..config import Config
from ..sparsity import SparsityMethod
from ..sparsity.penalized import (  # noqa: F401  (their documented home was here)
    budget_search,
    cost_weights,
    coupled_units,
    removal_of,
    removed_mask,
    target_of,
)
from ..sparsity.registry import Stage, method_spec
from .steps import lr_at


def make_method(cfg: Config, model: nn.Module, n_train: int, steps: int,
                sparsity: bool = True) -> SparsityMethod:
    """``sparsity=False`` (fine-tuning): no sparsity; else the method ``cfg.penalty`` names.
    ``steps`` is the number of training steps of the stage: with ``cfg.epochs`` they give the
    method the learning rate of every step (``cfg.schedule``)."""
    if not sparsity:
        return SparsityMethod(model)
    per_epoch = max(steps // max(cfg.epochs, 1), 1)
    lrs = [lr_at(cfg, epoch, cfg.epochs) for epoch in range(max(cfg.epochs, 1))]
    stage = Stage(cfg, model, n_train, steps,
                  schedule=lambda step: lrs[min(step // per_epoch, len(lrs) - 1)])
    return method_spec(cfg.penalty).build(stage)
