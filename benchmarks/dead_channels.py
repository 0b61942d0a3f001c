"""What removing dead stream channels saves in a pruned DenseNet-40.

    python benchmarks/dead_channels.py

After pruning, a DenseNet stream channel that no later layer selects is dead: computing it is
wasted work. ``prune_model`` removes such channels from the conv that writes them
(``DenseNet.compact``). This prunes DenseNet-40 (width 1, 40 %, both gamma profiles of
``pruned_latency.py``) with and without that step and prints the dead channels, parameters,
FLOPs and the eager latency at batch 64 of both, timed round-robin.
"""

from __future__ import annotations

import torch
from common import print_json  # benchmarks/ is on sys.path when run as a script
from pruned_latency import RATIO, calibrate, latencies, set_gammas

import ncslim
from ncslim.models.densenet import DenseNet


def main() -> None:
    rows = []
    print(f"{'profile':<9}{'dead':>6}{'params':>20}{'FLOPs':>28}{'ms @64':>18}{'speed-up':>9}")
    for profile in ("paper", "uniform"):
        torch.manual_seed(0)
        model = ncslim.build_model("densenet").eval()
        set_gammas(model, calibrate(model, "densenet") if profile == "paper" else 0.0)
        compact, report = ncslim.prune_model(model, ratio=RATIO["densenet"])
        compact_fn = DenseNet.compact
        DenseNet.compact = lambda self: self  # type: ignore[method-assign]
        try:
            loose, loose_report = ncslim.prune_model(model, ratio=RATIO["densenet"])
        finally:
            DenseNet.compact = compact_fn  # type: ignore[method-assign]
        dead = sum(loose.get_submodule(name).out_channels - width
                   for name, width in compact.channels.get("outputs", {}).items())
        times = latencies({"original": loose.eval(), "compact": compact.eval()}, 64,
                          model.input_shape(), 8.0)
        row = {"profile": profile, "dead_channels": dead,
               "params": [loose_report.params_after, report.params_after],
               "flops": [loose_report.flops_after, report.flops_after],
               "latency_ms": [1e3 * times["original"], 1e3 * times["compact"]],
               "speedup": times["original"] / times["compact"]}
        rows.append(row)
        print(f"{profile:<9}{dead:>6}{row['params'][0]:>10,} ->{row['params'][1]:>8,}"
              f"{row['flops'][0]:>14,} ->{row['flops'][1]:>12,}"
              f"{row['latency_ms'][0]:>9.1f} ->{row['latency_ms'][1]:>6.1f}"
              f"{row['speedup']:>9.2f}", flush=True)
    print_json("dead_channels", torch.device("cpu"), rows)


if __name__ == "__main__":
    main()
