"""Shuffled, normalised batches with on-device augmentation (pad, random crop, flip)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .catalog import DatasetInfo

PAD = 4  # CIFAR augmentation: zero padding before the random crop (at 32x32; see augment_pad)


def augment_pad(size: int) -> int:
    """The zero padding before the random crop of ``size`` x ``size`` images: CIFAR's 4 at 32,
    the same share of the image at other sizes (8 at 64, 28 at 224), at least 1."""
    return max(1, round(PAD * size / 32))


def _crop_flip(images: Tensor, offset_y: Tensor, offset_x: Tensor, flip: Tensor,
               pad: int = PAD) -> Tensor:
    """Zero-pad by ``pad``, crop back to the input size at per-image offsets, mirror if ``flip``.

    ``out[b, :, i, j] = padded[b, :, offset_y[b] + i, offset_x[b] + (W-1-j if flip[b] else j)]``,
    computed as one gather for the whole batch.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    width = w + 2 * pad
    dev = images.device
    rows = offset_y.view(b, 1) + torch.arange(h, device=dev)
    j = torch.arange(w, device=dev)
    cols = offset_x.view(b, 1) + torch.where(flip.view(b, 1), w - 1 - j, j)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, index).view(b, c, h, w)


def _epoch_plan(n: int, device: torch.device, generator: torch.Generator | None,
                augment: bool, pad: int = PAD) -> tuple[Tensor, ...]:
    """One epoch's permutation (and crop offsets, flips), drawn at once, moved to ``device``.

    Drawn on the generator's device (a CPU generator cannot drive CUDA sampling), then moved:
    one small transfer per epoch, none per batch.
    """
    gdev = generator.device if generator is not None else device
    plan = [torch.randperm(n, generator=generator, device=gdev)]
    if augment:
        plan += [torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev),
                 torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev),
                 torch.randint(0, 2, (n,), generator=generator, device=gdev).bool()]
    # non_blocking only towards an accelerator: a non-blocking copy to the CPU may be read early
    return tuple(t.to(device, non_blocking=device.type != "cpu") for t in plan)


def _check_batch_args(images: Tensor, labels: Tensor, batch_size: int,
                      info: DatasetInfo) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                         f"{list(images.shape)}")
    if images.shape[1] != info.in_channels:
        raise ValueError(f"{info.name} images have {info.in_channels} channels, got "
                         f"{images.shape[1]}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be [N] with N = {len(images)}, got {list(labels.shape)}")
    if labels.device != images.device:
        raise ValueError(f"images on {images.device} but labels on {labels.device}")


def batches(images: Tensor, labels: Tensor, batch_size: int, *, info: DatasetInfo,
            train: bool, generator: torch.Generator | None = None, drop_last: bool = False,
            channels_last: bool = False,
            part: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised float32 batches ``(x [B, C, H, W], y [B])`` on the images' device.

    ``train=True``: a fresh permutation per call (from ``generator``: same seed, same batches)
    and, if ``info.augment``, zero-pad (4 at 32x32: :func:`augment_pad`) + random crop + random
    horizontal flip per image.
    ``train=False``: every image in order, no augmentation. ``drop_last`` drops a final partial
    batch. ``part=(i, n)`` yields only the i-th of n equal slices of each batch (``batch_size``
    must divide by n): the images and augmentation that process i of n trains on, the same as
    in the whole batch. Arguments are checked here, at the call, not at the first ``next``.
    """
    _check_batch_args(images, labels, batch_size, info)
    index, count = part
    if not 0 <= index < count or batch_size % count:
        raise ValueError(f"batch_size {batch_size} cannot be split into {count} equal parts "
                         f"(part {index}); use a multiple of {count}")
    return _iterate(images, labels, batch_size, info, train, generator, drop_last, channels_last,
                    part)


def _iterate(images: Tensor, labels: Tensor, batch_size: int, info: DatasetInfo, train: bool,
             generator: torch.Generator | None, drop_last: bool, channels_last: bool,
             part: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
    n, channels = images.shape[:2]
    device = images.device
    std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, channels, 1, 1)
    mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std  # (v/255 - mean)/std = v*scale + shift
    pad = augment_pad(images.shape[-1])
    plan = _epoch_plan(n, device, generator, info.augment, pad) if train else None
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    end = n - n % batch_size if drop_last else n
    share = batch_size // part[1]
    for first in range(0, end, batch_size):
        start = first + part[0] * share
        stop = min(start + share, first + batch_size, n)
        if stop <= start:  # this part of a final partial batch is empty
            continue
        if plan is None:
            x, y = images[start:stop], labels[start:stop]
        else:
            order = plan[0][start:stop]
            x, y = images[order], labels[order]
            if len(plan) > 1:
                x = _crop_flip(x, *(t[start:stop] for t in plan[1:]), pad=pad)
        x = x.to(dtype=torch.float32, memory_format=memory_format)
        yield x.mul_(scale).add_(shift), y
