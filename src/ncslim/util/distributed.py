"""Several processes, one training run: PyTorch's own distributed engine, launched by torchrun.

    torchrun --nproc-per-node 4 -m ncslim run --config vgg19-cifar10 --out runs/vgg
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 -m ncslim train ...

``--batch-size`` stays the *global* batch: each of the N processes trains on its 1/N of every
batch (its shard of the epoch's permutation), so a preset means the same optimisation on any
number of GPUs. DDP averages the gradients; the penalty then acts on identical gammas in every
process. Only rank 0 writes files and prints. The backend is NCCL on CUDA and gloo on CPU.

``--sync-bn`` normalises each batch with the statistics of the whole global batch: with it, N
processes follow the one-process run (up to summation order). On CUDA this is PyTorch's
``SyncBatchNorm``; on CPU, where that module refuses to run, :class:`GlobalBatchNorm2d` does the
same with two differentiable all-reduces per layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn


def launched() -> bool:
    """Started by torchrun (or an equivalent launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> None:
    """Join the process group torchrun described in the environment (NCCL on CUDA, else gloo)."""
    if not launched() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def shutdown(finished: bool = False) -> None:
    """Leave the process group; ``finished`` (the command succeeded everywhere) waits for every
    process first, so that none tears down its connections while a peer is still writing (gloo
    then aborted a process at exit, once in five runs here)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """The sums over every process of each (same-shaped on every rank) tensor; one collective."""
    if not active():
        return list(values)
    flat = torch.cat([v.detach().double().reshape(-1) for v in values])
    dist.all_reduce(flat)
    sizes = [v.numel() for v in values]
    return [part.view_as(v).to(v.dtype) for part, v in zip(flat.split(sizes), values)]


def shard(n: int) -> slice:
    """This process's contiguous share of ``n`` items (the first ranks get one more if uneven)."""
    size, extra = divmod(n, world_size())
    r = rank()
    start = r * size + min(r, extra)
    return slice(start, start + size + (r < extra))


class _SumOverProcesses(torch.autograd.Function):
    """``y = sum over processes of x``, seen by every process. Each process's loss depends on
    ``y``, so the gradient of the summed losses with respect to ``x`` is again a sum."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    return _SumOverProcesses.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the global batch of every process (training), for any device/backend.

    Mean and variance come from all-reduced sums (two passes, as stable as one process's BN);
    the all-reduces are differentiable, so the backward pass sees the global statistics too.
    Running statistics get the unbiased global variance, as ``nn.BatchNorm2d`` would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        dtype = x.dtype
        x = x.float()  # statistics in float32 under autocast, as BatchNorm2d keeps them
        channels = x.shape[1]
        count = torch.tensor([x.numel() / channels], device=x.device, dtype=x.dtype)
        summed = _sum_over_processes(torch.cat([x.sum((0, 2, 3)), count]))
        total = summed[-1]
        mean = summed[:-1] / total
        centred = x - mean.view(1, -1, 1, 1)
        var = _sum_over_processes(centred.square().sum((0, 2, 3))) / total
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else (
                    1.0 / self.num_batches_tracked.item())
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * total / (total - 1).clamp_min(1), m)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = centred * scale.view(1, -1, 1, 1)
        out = out + self.bias.view(1, -1, 1, 1) if self.affine else out
        return out.to(dtype)


def _swap_batchnorm(model: nn.Module, make: Callable[[nn.BatchNorm2d], nn.BatchNorm2d],
                    kind: type[nn.Module]) -> None:
    """Replace every ``kind`` module by ``make(old)``, sharing its parameters and buffers."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not kind:
                continue
            new = make(child)
            new.weight, new.bias = child.weight, child.bias
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, buffer, getattr(child, buffer))
            new.train(child.training)
            setattr(parent, name, new)


def _like(cls: type[nn.Module], bn: nn.Module, **kwargs: object) -> nn.BatchNorm2d:
    return cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
               device=bn.weight.device if bn.weight is not None else None, **kwargs)


def sync_batchnorm(model: nn.Module) -> None:
    """Make every BatchNorm2d of ``model`` normalise over the global batch (in place).

    The same parameter and buffer tensors stay in the model, so optimisers, the regularizer and
    checkpoints are unaffected; :func:`plain_batchnorm` undoes it.
    """
    if next(model.parameters()).device.type == "cuda":
        _swap_batchnorm(model, lambda bn: _like(nn.SyncBatchNorm, bn), nn.BatchNorm2d)
    else:
        _swap_batchnorm(model, lambda bn: _like(GlobalBatchNorm2d, bn), nn.BatchNorm2d)


def plain_batchnorm(model: nn.Module) -> None:
    """Undo :func:`sync_batchnorm`: every synchronised BN becomes an ``nn.BatchNorm2d`` again."""
    for kind in (nn.SyncBatchNorm, GlobalBatchNorm2d):
        _swap_batchnorm(model, lambda bn: _like(nn.BatchNorm2d, bn), kind)
