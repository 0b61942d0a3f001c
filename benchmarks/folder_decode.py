"""How long an image folder takes to load: the first time (decoding every file), with worker
processes against threads, and the second time (from ncslim's cache).

    python benchmarks/folder_decode.py --images 50000 --size 32

Generates ``--images`` small files under ``--root`` (kept for the next call; 10 classes, a quarter
each of 32x32 PNG, 32x32 JPEG, 64x64 PNG and 64x64 JPEG, smooth colours plus noise), in
parallel. Then, in one process: the folder scan; ``decode_images`` with every core as processes,
as threads, and in this process alone, interleaved round-robin (``--rounds``; the median is
reported); a first ``load_dataset("folder", ...)`` into an empty cache folder (scan, decode,
statistics, cache write) and a second one (a cache hit). The files were just written or read, so
the OS page cache holds them: these are decode times, not disk times.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import print_json  # benchmarks/ is on sys.path when run as a script

from ncslim.data import load_dataset, scan_folder
from ncslim.data.decode import decode_images, default_workers

KINDS = [(32, "png"), (32, "jpg"), (64, "png"), (64, "jpg")]
CLASSES = 10


def _write(job: tuple[str, int, int, str]) -> None:
    from PIL import Image

    path, seed, side, suffix = job
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side)[None, :, None] * rng.uniform(0, 200, 3)
    image = ramp + rng.uniform(0, 40, (side, 1, 3)) + rng.integers(0, 16, (side, side, 3))
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)


def generate(root: Path, count: int) -> float:
    """Write ``count`` images below ``root/train`` and ``root/val`` (10 % there), unless a
    previous call did; the seconds it took."""
    marker = root / f".complete-{count}"
    if marker.exists():
        return 0.0
    jobs = []
    for i in range(count):
        side, suffix = KINDS[i % len(KINDS)]
        split = "val" if (i // CLASSES) % 10 == 0 else "train"
        folder = root / split / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"{i:06d}.{suffix}"), i, side, suffix))
    started = time.perf_counter()
    with futures.ProcessPoolExecutor(default_workers(),
                                     mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(_write, jobs, chunksize=256))
    marker.touch()
    return time.perf_counter() - started


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=32, help="S: images are resized to S x S")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(),
                                                       "ncslim-folder-bench"))
    args = parser.parse_args()
    root = Path(args.root)
    print(f"generating {args.images} images in {root}", file=sys.stderr)
    made = generate(root, args.images)
    scan = []
    layout = None
    for _ in range(args.rounds):
        scan.append(timed(lambda: scan_folder(root)))
    layout = scan_folder(root)
    paths = [str(root / f.path) for f in layout.train + layout.test]
    workers = default_workers()
    variants = [("processes", workers), ("threads", workers), ("processes", 1)]
    times: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for pool, count in variants:
            print(f"decoding with {count} {pool}", file=sys.stderr)
            times[(pool, count)].append(timed(
                lambda pool=pool, count=count: decode_images(paths, args.size, workers=count,
                                                             pool=pool)))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        first = timed(lambda: load_dataset("folder", root, input_size=args.size))
        second = [timed(lambda: load_dataset("folder", root, input_size=args.size))
                  for _ in range(args.rounds)]
        cache_mib = sum(p.stat().st_size for p in Path(cache).rglob("*.pt")) / 2**20
    n = len(paths)
    rows = [{"what": "generate", "images": n, "seconds": made},
            {"what": "scan", "images": n, "seconds": statistics.median(scan)}]
    for (pool, count), values in times.items():
        seconds = statistics.median(values)
        rows.append({"what": "decode", "pool": "this process" if count == 1 else pool,
                     "workers": count, "images": n, "size": args.size, "seconds": seconds,
                     "images_per_s": n / seconds, "runs": values})
    rows += [{"what": "first load (empty cache)", "images": n, "size": args.size,
              "seconds": first, "cache_mib": cache_mib},
             {"what": "second load (cache hit)", "images": n, "size": args.size,
              "seconds": statistics.median(second), "runs": second}]
    print(f"{'what':<34}{'seconds':>10}{'images/s':>12}")
    for row in rows[1:]:
        label = row["what"] + (f" ({row['pool']}, {row['workers']})" if "pool" in row else "")
        print(f"{label:<34}{row['seconds']:>10.2f}{n / row['seconds']:>12,.0f}")
    print_json("folder_decode", torch.device("cpu"), rows)


if __name__ == "__main__":
    main()
