"""Fine-tuning by knowledge distillation: the pruned model learns from the unpruned one.

    ncslim run --config demo --lam auto --penalty l1 --mode proximal --ratio 0.7 --distill
    ncslim finetune --checkpoint runs/x/pruned.pt --distill --teacher runs/x/train/model.pt

The objective (Hinton et al., 2015) on each augmented training batch::

    loss = (1 - A) * CE(student, y) + A * T^2 * KL(softmax(teacher / T) || softmax(student / T))

with T = ``--distill-temperature`` and A = ``--distill-weight``. The factor T^2 keeps the soft
term's gradient (which scales as 1/T^2) on the scale of the hard term's whatever T is. The
defaults, T = 4 and A = 0.9, are the usual ones of the distillation literature; a heavy weight
on the teacher suits this student: it starts as a pruned copy of its teacher, so matching the
teacher's outputs is what "winning back" the pruning means, and the labels correct it where the
teacher is wrong. ``train_loss`` in a distilled stage's ``metrics.jsonl`` is this loss.

The teacher is a private copy of the given model, in evaluation mode (its BatchNorm statistics
are used, never updated), without gradients, run under ``torch.no_grad`` and under the
student's autocast, on the same batch. Under torchrun every process holds its own copy and
distils its own part of the batch: a model that takes no gradient needs no DDP wrapper.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, temperature: float,
            weight: float) -> torch.Tensor:
    """The distillation loss of logits ``student`` and ``teacher`` (B x classes) and labels
    ``y``, the batch mean, in float32."""
    student, teacher = student.float(), teacher.float()
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1),
                    F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1 - weight) * F.cross_entropy(student, y) + weight * temperature ** 2 * soft


class Distillation:
    """The objective of a distilled fine-tuning (a :class:`ncslim.run.train.Criterion`)."""

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, weight: float = 0.9,
                 channels_last: bool = False, compile: bool = False) -> None:
        """``teacher`` itself is left as it is; ``channels_last`` and ``compile`` as the
        student's (the batches arrive in the student's memory format)."""
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.teacher) if compile else self.teacher
        self.temperature, self.weight = float(temperature), float(weight)

    def __call__(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.forward(x)
        return kd_loss(out, target, y, self.temperature, self.weight)


def distillation(cfg: Config, teacher: nn.Module | None) -> Distillation | None:
    """The objective of ``cfg``'s fine-tuning: a :class:`Distillation` from ``teacher`` with
    ``--distill``, else None (the trainer's cross-entropy)."""
    if not cfg.distill:
        return None
    if teacher is None:
        raise ValueError("--distill needs a teacher, the model to distil from (ncslim finetune: "
                         "--teacher MODEL)")
    return Distillation(teacher, cfg.distill_temperature, cfg.distill_weight,
                        channels_last=cfg.channels_last, compile=cfg.compile)


def distill_record(cfg: Config) -> dict[str, Any] | None:
    """What ``results.json`` records of the distillation: its temperature and weight, or None."""
    if not cfg.distill:
        return None
    return {"temperature": cfg.distill_temperature, "weight": cfg.distill_weight}
