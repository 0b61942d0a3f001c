"""What the training loop costs beyond the compute, and how fast its data pipeline is.

    python benchmarks/pipeline_overhead.py
    python benchmarks/pipeline_overhead.py --augment --workers 0,2

On the ``demo`` preset (Fashion-MNIST, 20k training images, VGG-19 at 1/8 width, TL1 by
subgradient, batch 64), one training epoch three ways, interleaved in one process after one
untimed warm-up epoch each:

- ``ncslim``: ``Trainer.train_epoch`` -- batches drawn, augmented and normalised on the fly,
  the penalty applied, loss and accuracy accumulated, the progress bar fed;
- ``compute``: only forward, loss, backward and the SGD step, on the same batches already built
  and held in memory (the floor any loop can reach);
- ``dataloader``: the usual torchvision way -- a ``Dataset`` that turns one uint8 image at a time
  into a normalised float tensor (padding, cropping and flipping it in Python when augmenting),
  batched by ``torch.utils.data.DataLoader`` -- feeding the same compute step.

Then the data pipelines alone (no model), in images/s. ``--augment`` switches on CIFAR-style
pad-4 random crop + flip (the demo's Fashion-MNIST does not augment; CIFAR presets do).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import print_json  # benchmarks/ is on sys.path when run as a script
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ncslim.config import load_config
from ncslim.data import PAD, ImageData, batches
from ncslim.run.methods import make_method
from ncslim.run.pipeline import load_data, new_model
from ncslim.run.train import Trainer, epoch_generator
from ncslim.util.progress import EpochProgress, RunProgress


class PerSampleDataset(Dataset):
    """One image at a time, in Python: what a torchvision transform pipeline does."""

    def __init__(self, images: Tensor, labels: Tensor, mean: tuple[float, ...],
                 std: tuple[float, ...], augment: bool) -> None:
        self.images, self.labels = images.numpy(), labels.numpy()
        self.mean = np.array(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.array(std, dtype=np.float32).reshape(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.images[i].astype(np.float32) / 255.0
        if self.augment:
            c, h, w = image.shape
            padded = np.zeros((c, h + 2 * PAD, w + 2 * PAD), dtype=np.float32)
            padded[:, PAD:PAD + h, PAD:PAD + w] = image
            top, left = random.randint(0, 2 * PAD), random.randint(0, 2 * PAD)
            image = padded[:, top:top + h, left:left + w]
            if random.random() < 0.5:
                image = image[:, :, ::-1]
        image = (image - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[i])


def train_steps(model: nn.Module, opt: torch.optim.Optimizer,
                batches_: Iterable[tuple[Tensor, Tensor]]) -> int:
    seen = 0
    for x, y in batches_:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += y.numel()
    return seen


def dataloader(data: ImageData, batch_size: int, workers: int, augment: bool) -> DataLoader:
    info = data.info
    dataset = PerSampleDataset(data.train_images, data.train_labels, info.mean, info.std, augment)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=workers, persistent_workers=workers > 0)


def timed_rows(title: str, baseline: str, methods: dict[str, Callable[[], int]], rounds: int,
               images: int) -> list[dict[str, object]]:
    """Each method's median seconds over ``rounds`` interleaved runs (after one untimed run
    each), against ``baseline``."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for run in methods.values():
        run()  # warm-up: first-call costs (allocator, oneDNN primitives) are not the loop's
    for _ in range(rounds):
        for name, run in methods.items():
            start = time.perf_counter()
            seen = run()
            times[name].append(time.perf_counter() - start)
            assert seen == images, (name, seen, images)
    base = statistics.median(times[baseline])
    print(f"{title:<22}{'seconds':>9}{'images/s':>10}{'x ' + baseline.split()[0]:>11}")
    rows = []
    for name, values in times.items():
        seconds = statistics.median(values)
        rows.append({"what": title, "method": name, "seconds": seconds,
                     "images_per_s": images / seconds, "over_baseline": seconds / base,
                     "images": images})
        print(f"{name:<22}{seconds:>9.2f}{images / seconds:>10.0f}{seconds / base:>11.3f}")
    return rows


def silent_epoch(trainer: Trainer) -> EpochProgress:
    """An epoch's progress that shows nothing."""
    return RunProgress(trainer.steps, enabled=False).epoch("bench", 1, 1, trainer.steps,
                                                           trainer.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--augment", action="store_true", help="CIFAR-style pad-crop-flip")
    parser.add_argument("--rounds", type=int, default=3, help="epochs timed per method")
    parser.add_argument("--workers", default="0", help="DataLoader num_workers values to time")
    args = parser.parse_args()
    cfg = load_config(args.config)
    device = torch.device("cpu")
    data = load_data(cfg, device)
    if args.augment:
        data.info = dataclasses.replace(data.info, augment=True)
    torch.manual_seed(cfg.seed)
    template = new_model(cfg, data)
    steps = data.train_labels.numel() // cfg.batch_size
    images = steps * cfg.batch_size

    def make_batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        return batches(data.train_images, data.train_labels, cfg.batch_size, info=data.info,
                       train=True, generator=epoch_generator(device, cfg.seed, epoch),
                       drop_last=True)

    held = [(x.clone(), y.clone()) for x, y in make_batches(0)]
    workdir = Path(tempfile.mkdtemp(prefix="ncslim-bench-"))
    model = copy.deepcopy(template)
    trainer = Trainer(model, data, cfg, workdir, epochs=cfg.epochs,
                      method=make_method(cfg, model, data.train_labels.numel(), 1))
    plain = copy.deepcopy(template)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    loader_model = copy.deepcopy(template)
    loader_opt = torch.optim.SGD(loader_model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                 weight_decay=cfg.weight_decay)
    worker_counts = [int(w) for w in args.workers.split(",")]
    loaders = {w: dataloader(data, cfg.batch_size, w, data.info.augment) for w in worker_counts}
    plain.train()
    loader_model.train()

    methods: dict[str, Callable[[], int]] = {
        "ncslim": lambda: trainer.train_epoch(0, cfg.lr, silent_epoch(trainer))["images"],
        "compute": lambda: train_steps(plain, plain_opt, held),
    }
    for w, loader in loaders.items():
        methods[f"dataloader/{w}w"] = (
            lambda ld=loader: train_steps(loader_model, loader_opt, ld))
    print(f"{cfg.arch} width {cfg.width}, {images} images/epoch, batch {cfg.batch_size}, "
          f"augment {data.info.augment}, {torch.get_num_threads()} threads")
    rows = timed_rows("training epoch", "compute", methods, args.rounds, images)
    pipelines: dict[str, Callable[[], int]] = {
        "ncslim batches": lambda: sum(y.numel() for _, y in make_batches(1)),
        **{f"dataloader/{w}w": (lambda ld=ld: sum(y.numel() for _, y in ld))
           for w, ld in loaders.items()},
    }
    rows += timed_rows("data pipeline only", "ncslim batches", pipelines, args.rounds, images)
    for row in rows:
        row["augment"] = data.info.augment
    print_json("pipeline_overhead", device, rows)


if __name__ == "__main__":
    main()
