"""Ways to gather channels (a pruned pre-activation unit's channel selection), side by side.

    python benchmarks/channel_select.py

A pruned DenseNet/ResNet unit reads a subset of the channels of a stream that other layers also
read, so it must gather them. PyTorch offers several gathers, and their speed differs by memory
format and between inference and training. This times each one on a DenseNet-40-sized stream
(batch 64, 168 -> 100 channels, 32x32), interleaved round-robin, in NCHW and channels-last: the
forward alone (inference) and forward + backward (training), beside a plain copy of the output's
size, the least any gather can cost. ``ChannelSelect`` uses the fastest correct one per case.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import print_json  # benchmarks/ is on sys.path when run as a script
from torch import Tensor

from ncslim.models.base import ChannelSelect


def nhwc_view_gather(x: Tensor, index: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)[..., index].permute(0, 3, 1, 2)


GATHERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "index_select": lambda x, i: x.index_select(1, i),
    "advanced_index": lambda x, i: x[:, i],
    "nhwc_view_index": nhwc_view_gather,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,168,32,32", help="N,C,H,W of the stream")
    parser.add_argument("--keep", type=int, default=100, help="channels gathered")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    gen = torch.Generator().manual_seed(0)
    index = torch.randperm(shape[1], generator=gen)[: args.keep].sort().values
    rows = []
    print(f"{'layout':<14}{'pass':<10}{'method':<17}{'ms':>8}{'x copy':>8}  output layout")
    for layout in (torch.contiguous_format, torch.channels_last):
        for mode in ("forward", "training"):
            rows += measure(shape, index, layout, mode, args.repeats, gen)
    print_json("channel_select", torch.device("cpu"), rows)


def measure(shape: tuple[int, ...], index: Tensor, layout: torch.memory_format, mode: str,
            repeats: int, gen: torch.Generator) -> list[dict[str, object]]:
    ours = ChannelSelect(index.tolist())
    x = torch.randn(shape, generator=gen).contiguous(memory_format=layout)
    x.requires_grad_(mode == "training")
    out_shape = (shape[0], index.numel(), *shape[2:])
    grad = torch.randn(out_shape, generator=gen).contiguous(memory_format=layout)
    floor = torch.empty(out_shape).contiguous(memory_format=layout)
    methods = {**GATHERS, "ChannelSelect": lambda t, _: ours(t)}

    def call(gather: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], object]:
        if mode == "forward":
            return lambda: _no_grad(lambda: gather(x, index))
        return lambda: gather(x, index).backward(grad)

    calls = {"copy": lambda: floor.copy_(grad), **{k: call(f) for k, f in methods.items()}}
    times = _round_robin(calls, repeats)
    layout_name = "channels_last" if layout == torch.channels_last else "NCHW"
    rows = []
    for name, seconds in times.items():
        out = floor if name == "copy" else _no_grad(lambda n=name: methods[n](x, index))
        fmt = ("channels_last" if out.is_contiguous(memory_format=torch.channels_last)
               and not out.is_contiguous() else "NCHW")
        row = {"layout": layout_name, "pass": mode, "method": name, "ms": 1e3 * seconds,
               "over_copy": seconds / times["copy"], "output_layout": fmt}
        rows.append(row)
        print(f"{layout_name:<14}{mode:<10}{name:<17}{row['ms']:>8.2f}"
              f"{row['over_copy']:>8.2f}  {fmt}", flush=True)
    return rows


def _no_grad(fn: Callable[[], Tensor]) -> Tensor:
    with torch.no_grad():
        return fn()


def _round_robin(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


if __name__ == "__main__":
    main()
