"""Parameters and FLOPs, counted by PyTorch itself.

    >>> import ncslim
    >>> model = ncslim.build_model("vgg", width=0.25)
    >>> ncslim.count_flops(model, (3, 32, 32)) > 0
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor once); buffers such as BN statistics excluded."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one input, as ``torch.utils.flop_counter`` counts them.

    ``input_shape`` is ``(C, H, W)`` for one image or ``(N, C, H, W)`` for a batch. A
    multiply-accumulate counts as two FLOPs (MACs = FLOPs / 2); element-wise layers (BN, ReLU,
    pooling) are not counted, as in the papers' tables.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape}")
    reference = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(shape, device=reference.device, dtype=reference.dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
