"""How much memory a network takes, counted on the meta device before anything is allocated.

A width, depth or spec that is merely within the sane limits of :mod:`ncslim.models.base` can
still describe a network larger than the machine (VGG-19 at width 16: 5.1 billion parameters,
19 GiB). :func:`build_model` therefore builds each network once on the meta device (shapes, no
storage), counts the bytes of its parameters and buffers and refuses, in one line that says how
large it would be, one that needs more than :data:`MEMORY_SHARE` of the memory this process can
still have (:func:`available_memory`). ``ncslim info`` does the same for the activations of its
latency timing at the batch size and input size it would time (:func:`forward_cost`).

    >>> from ncslim.models import build_model
    >>> from ncslim.models.memory import forward_cost, tensor_bytes
    >>> model = build_model("vgg", width=0.25, depth=11)
    >>> tensor_bytes(model), forward_cost(model)  # bytes of weights; (activations, FLOPs)
    (2321960, (397312, 19761664))
"""

from __future__ import annotations

import os
import resource

import torch
from torch import nn

MEMORY_SHARE = 0.5  # a network (with info's timing: and its activations) may take this share
TIMING_MEMORY = 1 << 30  # info's timing may take at most this much for activations, besides
PAGE = 4096


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What the cgroup (v2) limit still allows this container, if it sets one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def _address_space_room() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) still allows this process, if it is set."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        size = 0
    return max(0, soft - size)


def available_memory() -> int:
    """Bytes this process can still use: the least of the kernel's MemAvailable (else the
    physical memory), the cgroup's remaining limit and the remaining ``ulimit -v``."""
    room = [r for r in (_meminfo("MemAvailable"), _cgroup_room(), _address_space_room())
            if r is not None]
    if not room:
        room = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    return min(room)


def gib(count: int) -> str:
    return f"{count / 2**30:,.1f} GiB" if count >= 2**30 else f"{count / 2**20:,.0f} MiB"


def check_memory(what: str, need: int, fix: str, available: int | None = None) -> None:
    """Raise a one-line ValueError when ``need`` bytes exceed :data:`MEMORY_SHARE` of
    ``available`` (default: :func:`available_memory`): ``what`` would take so much, ``fix``
    says what to change."""
    available = available_memory() if available is None else available
    allowed = int(MEMORY_SHARE * available)
    if need > allowed:
        raise ValueError(f"{what} would take {gib(need)} of memory, more than the "
                         f"{gib(allowed)} allowed here ({MEMORY_SHARE:.0%} of the "
                         f"{gib(available)} available); {fix}")


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model`` (each tensor once; meta ones too)."""
    seen = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


def forward_cost(model: nn.Module, input_shape: tuple[int, ...] | None = None
                 ) -> tuple[int, int]:
    """(bytes, FLOPs) of one image's forward pass without gradients, counted on meta copies of
    the weights (nothing is allocated or computed, whatever the input size). The bytes are an
    estimate of the memory needed beyond the weights: three times the largest input plus
    output of any one layer; the FLOPs are :func:`ncslim.models.measure.count_flops`'s."""
    from torch.utils.flop_counter import FlopCounterMode

    shape = tuple(input_shape) if input_shape is not None else tuple(model.input_shape())
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    peak = [0]

    def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
        tensors = [t for t in (*inputs, output) if torch.is_tensor(t)]
        peak[0] = max(peak[0], sum(t.numel() * t.element_size() for t in tensors))

    meta = {name: torch.empty_like(t, device="meta") for name, t in
            (*model.named_parameters(), *model.named_buffers())}
    x = torch.empty((1, *shape), device="meta", dtype=next(model.parameters()).dtype)
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            torch.func.functional_call(model, meta, (x,))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return 3 * peak[0] + PAGE, int(counter.get_total_flops())
