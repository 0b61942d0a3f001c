"""Latency of pruned models against their originals, with the FLOPs ratio beside it.

    python benchmarks/pruned_latency.py
    python benchmarks/pruned_latency.py --archs vgg --batches 64 --backends eager,onnxruntime

For each reference architecture at width 1 (CIFAR-10 shapes) and the paper's ratio (VGG-19 70 %,
DenseNet-40 40 %, ResNet-164 40 %), the median forward latency of the original and of the pruned
model, at each batch size, in PyTorch eager (NCHW and channels-last), under ``torch.compile`` and
exported to ONNX in ONNX Runtime; the speed-up next to the FLOPs ratio, and their quotient (1.0 =
every removed FLOP shows up as saved time). The models are timed round-robin in one process, so
the machine's drift hits all.

No trained width-1 models exist on this machine, so the BN scaling factors are set, not learned.
Which channels go decides how many FLOPs go, and after real sparsity training the late layers
lose the most channels. Profile ``paper`` reproduces that: gamma = u * exp(-t * depth) with
u ~ U(0, 1) per channel and depth in [0, 1] along the network, and t bisected until pruning removes
the FLOPs share that Liu et al. report at that ratio (51 % / 28 % / 24 %). Profile ``uniform``
(t = 0) prunes every layer alike; it removes far more FLOPs and is the harder case for latency.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop chatter

import torch  # noqa: E402
from common import print_json  # benchmarks/ is on sys.path when run as a script
from torch import nn

import ncslim

RATIO = {"vgg": 0.7, "densenet": 0.4, "resnet": 0.4}
PAPER_FLOPS_REMOVED = {"vgg": 0.51, "densenet": 0.28, "resnet": 0.24}
NAMES = {"vgg": "VGG-19", "densenet": "DenseNet-40", "resnet": "ResNet-164"}


def set_gammas(model: nn.Module, decay: float, seed: int = 0) -> None:
    """gamma = u * exp(-decay * depth), depth = slot position in [0, 1] along the network."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    slots = model.prune_slots()
    with torch.no_grad():
        for i, slot in enumerate(slots):
            bn = modules[slot.bn]
            depth = i / max(len(slots) - 1, 1)
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) * math.exp(-decay * depth))


def calibrate(model: nn.Module, arch: str) -> float:
    """The decay whose pruning at the paper's ratio removes the paper's share of FLOPs."""
    low, high = 0.0, 12.0
    for _ in range(14):
        middle = 0.5 * (low + high)
        set_gammas(model, middle)
        removed = ncslim.prune_model(model, ratio=RATIO[arch])[1].flops_removed
        # a steeper decay prunes later, cheaper layers: fewer FLOPs removed
        low, high = (middle, high) if removed > PAPER_FLOPS_REMOVED[arch] else (low, middle)
    return 0.5 * (low + high)


def latencies(models: dict[str, nn.Module], batch: int, shape: tuple[int, ...],
              budget_s: float) -> dict[str, float]:
    """Median seconds of one forward of each model, timed round-robin so drift hits all alike."""
    x = torch.randn(batch, *shape)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(2):
                model(x)
        started = time.perf_counter()
        while (len(times["original"]) < 5
               or (time.perf_counter() - started < budget_s and len(times["original"]) < 50)):
            for name, model in models.items():
                begin = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - begin)
    return {name: statistics.median(t) for name, t in times.items()}


class ChannelsLast(nn.Module):
    """A copy of ``model`` in channels-last that converts its input too."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


class OnnxRuntime:
    """``model`` exported to ONNX (ncslim.export_model) and run by an ONNX Runtime CPU session
    with as many threads as PyTorch uses."""

    def __init__(self, model: nn.Module, folder: str) -> None:
        from ncslim.models.export import onnx_session

        path = ncslim.export_model(model, os.path.join(folder, f"{id(model)}.onnx"))
        self.session = onnx_session(path, threads=torch.get_num_threads())

    def __call__(self, x: torch.Tensor) -> object:
        return self.session.run(None, {"input": x.numpy()})[0]


def prepare(model: nn.Module, backend: str) -> nn.Module | OnnxRuntime:
    if backend == "eager":
        return model
    if backend == "channels_last":
        return ChannelsLast(model)
    if backend == "compile":
        return torch.compile(model)
    if backend == "onnxruntime":
        return OnnxRuntime(model, tempfile.mkdtemp(prefix="ncslim-bench-"))
    raise SystemExit(f"unknown backend {backend!r}; use eager, channels_last, compile or "
                     f"onnxruntime")


def gather_share(model: nn.Module, batch: int, shape: tuple[int, ...]) -> float:
    """Share of the eager forward's CPU time spent in channel-selection gathers."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(batch, *shape)
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gather = sum(e.self_cpu_time_total for e in events
                 if e.key in ("aten::index_select", "aten::index"))
    return gather / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="vgg,densenet,resnet")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--profiles", default="paper,uniform")
    parser.add_argument("--round-to", default="1,8", help="round_to values to prune with")
    parser.add_argument("--backends", default="eager,channels_last,compile,onnxruntime",
                        help="eager (NCHW), channels_last (eager, NHWC), compile (torch.compile), "
                             "onnxruntime (exported to ONNX, ONNX Runtime CPU)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    backends = args.backends.split(",")
    rows = []
    print(f"{'model':<12}{'profile':<9}{'variant':<10}{'params':>11}{'FLOPs':>15}{'batch':>6} "
          f"{'backend':<14}{'latency ms':>11}{'speed-up':>9}{'FLOPs x':>8}{'ratio':>7}"
          f"{'gather':>8}")
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        original = ncslim.build_model(arch).eval()
        shape = original.input_shape()
        for profile_name in args.profiles.split(","):
            decay = calibrate(original, arch) if profile_name == "paper" else 0.0
            set_gammas(original, decay)
            variants: list[tuple[str, nn.Module]] = [("original", original)]
            for r in (int(v) for v in args.round_to.split(",")):
                small = ncslim.prune_model(original, ratio=RATIO[arch], round_to=r)[0].eval()
                variants.append((f"pruned/{r}", small))
            flops = {name: ncslim.count_flops(m, shape) for name, m in variants}
            for backend in backends:
                torch._dynamo.reset()  # fresh compile caches: its recompile limit is per code
                runs = {name: prepare(m, backend) for name, m in variants}
                for batch in batches:
                    measured = latencies(runs, batch, shape, args.budget * len(runs))
                    base = measured["original"]
                    for name, model in variants:
                        t = measured[name]
                        share = (gather_share(runs[name], batch, shape)
                                 if backend in ("eager", "channels_last") and arch != "vgg"
                                 else 0.0)
                        row = {
                            "arch": arch, "profile": profile_name, "decay": decay,
                            "variant": name, "params": ncslim.count_params(model),
                            "flops": flops[name], "batch": batch, "backend": backend,
                            "latency_ms": 1e3 * t, "speedup": base / t,
                            "flops_ratio": flops["original"] / flops[name],
                            "gather_share": share,
                        }
                        row["speedup_over_flops_ratio"] = row["speedup"] / row["flops_ratio"]
                        rows.append(row)
                        print(f"{NAMES[arch]:<12}{profile_name:<9}{name:<10}"
                              f"{row['params']:>11,}{row['flops']:>15,}{batch:>6} "
                              f"{backend:<14}{row['latency_ms']:>11.2f}{row['speedup']:>9.2f}"
                              f"{row['flops_ratio']:>8.2f}{row['speedup_over_flops_ratio']:>7.2f}"
                              f"{share:>8.1%}", flush=True)
    print_json("pruned_latency", torch.device("cpu"), rows)


if __name__ == "__main__":
    main()
