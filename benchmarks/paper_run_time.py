"""Expected wall time of one run of each paper preset, from measured training throughput.

    python benchmarks/paper_run_time.py --device cpu --steps 5
    python benchmarks/paper_run_time.py --device cuda --steps 50

For each preset: the images/s of the real training step (ncslim's batches + model + penalty +
SGD, batch 64, width 1) on synthetic uint8 data of the dataset's shape, measured after warm-up,
then the time of (epochs + finetune_epochs) passes over the training set plus one evaluation of
the test set per epoch (an evaluation image counted as a third of a training image). Fine-tuning
a pruned model is faster than this, so the estimate is an upper bound. Prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import print_json  # benchmarks/ is on sys.path when run as a script

import ncslim
from ncslim.config import load_config
from ncslim.data import DATASETS, batches

PRESETS = ["vgg19-cifar10", "densenet40-cifar10", "resnet164-cifar10", "vgg19-svhn",
           "densenet40-svhn", "resnet164-svhn"]
SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
         "svhn": (73_257 + 531_131, 26_032)}


def throughput(preset: str, device: torch.device, steps: int, warmup: int = 2) -> float:
    cfg = load_config(preset)
    info = DATASETS[cfg.dataset]
    torch.manual_seed(0)
    model = ncslim.build_model(cfg.arch, info.num_classes, info.in_channels, cfg.width,
                               cfg.depth).to(device)
    reg = ncslim.SparsityRegularizer(model, ncslim.make_penalty("l1", cfg.lam))
    opt = torch.optim.SGD(reg.param_groups(cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    n = cfg.batch_size * (steps + warmup)
    images = torch.randint(0, 256, (n, info.in_channels, 32, 32), dtype=torch.uint8,
                           device=device)
    labels = torch.randint(0, info.num_classes, (n,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    start = 0.0
    for step, (x, y) in enumerate(batches(images, labels, cfg.batch_size, info=info,
                                          train=True, generator=gen)):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        reg.apply_gradient()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for preset in PRESETS:
        cfg = load_config(preset)
        train_images, test_images = SIZES[cfg.dataset]
        rate = throughput(preset, device, args.steps)
        epochs = cfg.epochs + cfg.finetune_epochs
        seconds = epochs * (train_images + test_images / 3) / rate
        rows.append({"preset": preset, "images_per_s": round(rate, 1), "epochs": epochs,
                     "hours_per_run": round(seconds / 3600, 2)})
        print(f"{preset:<22} {rate:>9.1f} img/s  {epochs:>3} epochs  "
              f"~{seconds / 3600:>8.2f} h per run (upper bound)", flush=True)
    print_json("paper_run_time", device, rows)


if __name__ == "__main__":
    main()
