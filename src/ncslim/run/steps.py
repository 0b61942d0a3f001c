"""What a training stage is made of, outside the loop itself: the learning rate of an epoch,
the optimizer, the steps of an epoch and each epoch's random generator, and the measures taken
after an epoch (test accuracy and loss, how far the scaling factors are from zero)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data import ImageData, batches
from ..models.scales import find_scales
from ..sparsity import SparsityMethod
from ..util import distributed
from .device import autocast

EVAL_BATCH = 500
HIST_EDGES = [0.0] + [10.0 ** e for e in range(-6, 2)]  # |gamma| histogram bins


def lr_at(cfg: Config, epoch: int, epochs: int) -> float:
    """The learning rate of an epoch: /10 at 50 % and 75 % of the epochs, cosine, or constant."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    return cfg.lr * (0.1 ** ((epoch >= 0.5 * epochs) + (epoch >= 0.75 * epochs)))


def sgd(cfg: Config, method: SparsityMethod, fused: bool | None = None) -> torch.optim.SGD:
    """The paper's optimizer over the method's parameter groups. ``fused`` (default: when the
    parameters are on a GPU) updates them in one kernel, and lets a GradScaler skip an
    overflowed step on the device: with the unfused optimizer it reads the overflow flag on the
    host, a sync in every step."""
    groups = method.param_groups(cfg.weight_decay)
    if fused is None:
        fused = any(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, fused=fused or None)


def steps_per_epoch(data: ImageData, cfg: Config) -> int:
    """Training steps in one epoch (the last partial batch is dropped)."""
    return data.train_labels.numel() // cfg.batch_size


def check_batches(data: ImageData, cfg: Config) -> None:
    """Refuse a training set smaller than one batch: every epoch would have no step."""
    n = data.train_labels.numel()
    if n < cfg.batch_size:
        raise ValueError(f"the training set has {n} images, fewer than one batch (--batch-size "
                         f"{cfg.batch_size}), so no step would train; lower --batch-size or "
                         f"raise --limit-train")


def epoch_generator(device: torch.device, seed: int, epoch: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, channels_last: bool = False,
             amp: torch.dtype | None = None) -> tuple[float, float]:
    """(accuracy, mean loss) on the test set, under autocast to ``amp`` if given."""
    was_training = model.training
    model.eval()
    device = data.test_images.device
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    share = distributed.shard(data.test_labels.numel())  # under torchrun: this process's part
    with autocast(device, amp):
        for x, y in batches(data.test_images[share], data.test_labels[share], EVAL_BATCH,
                            info=data.info, train=False, channels_last=channels_last):
            out = model(x).float()
            loss += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    loss, correct = distributed.all_sum(loss, correct)
    n = data.test_labels.numel()
    return correct.item() / n, loss.item() / n  # sync point, once per evaluation


def gamma_stats(model: nn.Module) -> dict[str, Any]:
    """How far the scaling factors are from zero: shares below 1e-3 / 1e-2 and a histogram."""
    gammas = torch.cat([g.detach().abs().float().flatten() for g in find_scales(model).values()])
    edges = torch.tensor(HIST_EDGES + [math.inf], device=gammas.device)
    counts = torch.bucketize(gammas, edges[1:], right=True).bincount(minlength=len(edges) - 1)
    return {
        "gamma_below_1e-3": float((gammas < 1e-3).float().mean()),
        "gamma_below_1e-2": float((gammas < 1e-2).float().mean()),
        "gamma_zero": float((gammas == 0).float().mean()),
        "gamma_hist": {"edges": HIST_EDGES, "counts": counts[: len(HIST_EDGES)].tolist()},
    }
