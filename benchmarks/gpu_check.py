"""Issue 18: every GPU path of ncslim, run briefly and checked, and the paper's runs timed.

    bash scripts/gpu_check.sh                  # on a GPU host: at most 8 minutes on one GPU
    bash scripts/gpu_check.sh --device cpu     # the same checks at tiny sizes on the CPU

Checks (``gpu_paths``): a few real training steps on each path (float32, float16 AMP with its
GradScaler, bfloat16, channels-last, torch.compile) with a proximal penalty, each seeing
unscaled gradients and following the float32 run; no host synchronisation inside the training
step (CUDA's sync debug mode); a training SIGKILLed mid-epoch and resumed, against an
uninterrupted one; torchrun (NCCL on CUDA, gloo on the CPU) against one process. Timings
(``gpu_timing``): pruned models against their originals at batch 1/64/256 (CUDA events), and
the training throughput of the paper presets on CIFAR-10 files generated on the spot (the real
format: a GPU host may have no internet), with the projected time of a 160-epoch run and the
loop's overhead over the bare compute. Prints one table, then one JSON line.

A CUDA-only check on the CPU is skipped and named. A failed check is a row, not an abort: every
other check still runs, and the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from common import print_json  # benchmarks/ is on sys.path when run as a script
from gpu_harness import CPU_SIZES, GPU_SIZES, Context, Row, Skip, write_cifar10


def run_check(name: str, check: Callable[[Context], Row | list[Row]], ctx: Context) -> list[Row]:
    start = time.perf_counter()
    try:
        rows = check(ctx)
    except Skip as why:
        rows = Row(name, "skipped", str(why))
    except Exception as err:  # a failed check is a row; the others still run
        where = traceback.extract_tb(err.__traceback__)[-1]
        rows = Row(name, "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0][:300]} "
                                 f"({Path(where.filename).name}:{where.lineno})")
    rows = rows if isinstance(rows, list) else [rows]
    seconds = (time.perf_counter() - start) / len(rows)
    for row in rows:
        row.seconds = row.seconds or seconds
    if ctx.cuda:
        torch.cuda.empty_cache()
    return rows


def print_table(rows: list[Row]) -> None:
    width = max(len(r.check) for r in rows)
    print(f"\n{'check':<{width}}  {'status':<7}  {'s':>6}  detail")
    for r in rows:
        print(f"{r.check:<{width}}  {r.status:<7}  {r.seconds:>6.1f}  {r.detail}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--only", default="", help="comma-separated check names (or prefixes) "
                                                   "to run; default: all")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, "
                                                  "removed at the end)")
    return parser.parse_args(argv)


def refuse(message: str) -> None:
    print(f"gpu_check: error: {message}", file=sys.stderr)
    sys.exit(2)


def resolve(device_arg: str) -> torch.device:
    try:
        device = torch.device(device_arg)
    except RuntimeError:
        refuse(f"--device {device_arg!r} is not a device; use cuda, cuda:N or cpu")
    if device.type not in ("cuda", "cpu"):
        refuse(f"--device {device_arg}: use cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = torch.__version__ + (", a CPU build" if torch.version.cuda is None else "")
        refuse(f"no CUDA device is usable by this torch ({build}); install a CUDA build of "
               f"torch (scripts/setup.sh does where nvidia-smi sees a GPU), or use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        refuse(f"--device {device_arg}: this host has {torch.cuda.device_count()} GPU(s), "
               f"numbered from 0")
    return device


def main(argv: list[str] | None = None) -> int:
    from gpu_paths import PATH_CHECKS
    from gpu_timing import TIMING_CHECKS

    args = parse_args(argv)
    device = resolve(args.device)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    checks = {**PATH_CHECKS, **TIMING_CHECKS}
    wanted = [c for c in args.only.split(",") if c]
    unknown = [w for w in wanted if not any(name.startswith(w) for name in checks)]
    if unknown:
        refuse(f"--only {unknown[0]!r} names no check; the checks: {', '.join(checks)}")
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        refuse(f"--work {args.work} is not empty: give a new or empty folder")
    work = args.work or Path(tempfile.mkdtemp(prefix="ncslim-gpu-check-"))
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    started = time.perf_counter()
    print(f"gpu_check: {device_name(device)}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; scratch in {work}", flush=True)
    try:
        ctx = Context(device, sizes, work, write_cifar10(work / "data", sizes.per_file))
        rows: list[Row] = []
        for name, check in checks.items():
            if wanted and not any(name.startswith(w) for w in wanted):
                continue
            print(f"gpu_check: {name} ...", flush=True)
            rows += run_check(name, check, ctx)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    print_table(rows)
    failed = [r.check for r in rows if r.status == "FAIL"]
    print(f"\n{len(rows)} checks in {total:.0f} s on {device_name(device)}: "
          f"{sum(r.status == 'ok' for r in rows)} ok, {len(failed)} failed, "
          f"{sum(r.status == 'skipped' for r in rows)} skipped", flush=True)
    print_json("gpu_check", device, [{**asdict(r), "seconds": round(r.seconds, 2)}
                                     for r in rows])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
