"""The whole method as library calls: train -> prune -> fine-tune -> report.

    ncslim run --config demo --out runs/demo

Each function here is one CLI subcommand. ``run`` writes ``train/`` and ``finetune/`` stage
directories, ``pruned.pt``, ``final.pt``, ``config.json`` and ``results.json`` into the run
directory; with ``resume=True`` finished stages are skipped and an interrupted one continues.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DATA_RECORD, Config
from ..data import FOLDER, DatasetInfo, ImageData, load_dataset
from ..data.layoutcheck import check_out_outside
from ..models import SlimmableNet, build_model
from ..models.files import save_model
from ..models.measure import latency_table, latency_warnings
from ..models.scales import find_scales
from ..prune import PruneReport, prune_model
from ..report.summary import SUMMARY_FILE, format_results
from ..report.tensorboard_log import LOGDIR, TensorBoardLog, summary_writer
from ..sparsity import SparsityMethod
from ..util import distributed
from ..util.files import atomic_write_text
from ..util.progress import RunProgress
from .device import resolve_device
from .distill import distill_record, distillation
from .methods import make_method
from .prunerule import check_reachable, check_reachable_in_passes, prune, shortfall_warnings
from .rundir import (
    check_out,
    claim,
    code_version,
    write_config,
)
from .steps import check_batches, evaluate, gamma_stats, steps_per_epoch
from .train import EpochObserver, Trainer
from .warmstart import init_weights

log = logging.getLogger("ncslim")


def setup_device(cfg: Config) -> torch.device:
    """This process's device; under torchrun it first joins the process group. A package the
    configuration needs and lacks (``--tensorboard``) is named first, before any data is read."""
    if cfg.tensorboard:
        summary_writer()
    device = resolve_device(cfg.device)
    distributed.init(device)
    return device


def load_data(cfg: Config, device: torch.device, training: bool = True) -> ImageData:
    """The config's dataset on ``device``; for ``training``, checked to hold one batch. An
    image folder must not hold ``--out`` (checked first: nothing is read or written)."""
    if cfg.dataset == FOLDER and cfg.data_dir is not None and cfg.out:
        check_out_outside(cfg.data_dir, cfg.out)
    data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download,
                        limit_train=cfg.limit_train, limit_test=cfg.limit_test,
                        include_extra=cfg.svhn_extra, input_size=cfg.input_size)
    if training:
        check_batches(data, cfg)
    return data.to(device)


def new_model(cfg: Config, data: ImageData) -> SlimmableNet:
    """The untrained network: an ``--arch`` family, or ``--model`` (the user's own)."""
    torch.manual_seed(cfg.seed)
    info = data.info
    if cfg.model is not None:
        model = build_model("imported", info.num_classes, info.in_channels,
                            channels={"builder": cfg.model}, input_size=info.image_size)
    else:
        model = build_model(cfg.arch, num_classes=info.num_classes,
                            in_channels=info.in_channels, width=cfg.width, depth=cfg.depth,
                            input_size=info.image_size)
    if cfg.init is not None:
        init_weights(model, cfg.init)
    model.trained_on = data_record(cfg, info)  # with an image folder's class names
    return model


def check_model(cfg: Config, data: ImageData) -> None:
    """Build the network once before anything is written and refuse a pruning target it cannot
    reach (:func:`~ncslim.run.prunerule.check_reachable`); a traced one (``--model``) is also pruned
    once on trial, so a network the graph cannot prune fails now, naming its layer, not after
    its training. (An ``--arch`` spec is checked with the configuration.)"""
    model = new_model(cfg, data)
    if cfg.model is not None:
        prune_model(model, ratio=0.5, min_channels=cfg.min_channels, round_to=cfg.round_to)
    check_reachable(model, cfg)
    check_reachable_in_passes(model, cfg)  # --passes N: each pass's share, N times over


def observers(cfg: Config, stage: str) -> list[EpochObserver]:
    """What watches the epochs of ``stage`` besides ``metrics.jsonl``: with ``--tensorboard``,
    TensorBoard logs in ``cfg.out/tensorboard/stage``, written by the process that writes files.
    """
    if not cfg.tensorboard or not distributed.is_main():
        return []
    return [TensorBoardLog(Path(cfg.out) / LOGDIR / stage)]


def data_record(cfg: Config, info: DatasetInfo | None = None) -> dict[str, Any]:
    """What a model file records of the data it was trained on (``prune`` and ``finetune``
    read it back); for an image folder (``info``) also the size, class names and split."""
    record = {key: getattr(cfg, key) for key in DATA_RECORD}
    if info is not None and info.classes:
        record.update(input_size=info.image_size, classes=list(info.classes),
                      test_split=info.test_split)
    return record


def check_fits(model: SlimmableNet, data: ImageData, source: str) -> None:
    info = data.info
    if model.num_classes != info.num_classes or model.in_channels != info.in_channels:
        raise ValueError(f"{source} is a model for {model.num_classes} classes / "
                         f"{model.in_channels} input channels, but {info.name} has "
                         f"{info.num_classes} / {info.in_channels}; pick the matching --dataset")
    if model.input_size != info.image_size:
        raise ValueError(f"{source} is a model for {model.input_size}x{model.input_size} "
                         f"images, but {info.name} has {info.image_size}x{info.image_size}; "
                         f"pick the matching --dataset (or --input-size)")
    classes = (model.trained_on or {}).get("classes")
    if classes and info.classes and tuple(classes) != info.classes:
        differ = next(i for i, pair in enumerate(zip(classes, info.classes)) if len(set(pair)) > 1)
        raise ValueError(f"{source} was trained on other classes: its class {differ} is "
                         f"{classes[differ]!r}, the folder's is {info.classes[differ]!r}; give "
                         f"the --data-dir it was trained on")


# settings that say how to compute, not what: a resumed run may change them
def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Sparsity training: ``out/`` gets metrics.jsonl, last.pt, best.pt, model.pt."""
    out = Path(cfg.out)
    check_out(out, resume)
    data = load_data(cfg, setup_device(cfg))
    check_model(cfg, data)
    with claim(out, fresh=not resume, resume=resume):
        write_config(cfg, out, "train", data.info.fingerprint)
        model, test_acc = sparsity_stage(cfg, data, out, resume)
        if distributed.is_main():
            save_model(model, out / "model.pt")
    return {"test_acc": test_acc, "model": str(out / "model.pt")}


def finetune(model: SlimmableNet, data: ImageData, cfg: Config, out: Path,
             resume: bool = False, from_scratch: bool = False,
             progress: RunProgress | None = None,
             teacher: torch.nn.Module | None = None) -> tuple[SlimmableNet, float]:
    """Retrain a (pruned) model without the penalty; ``from_scratch`` re-initialises it; with
    ``cfg.distill`` by distillation from ``teacher`` (:mod:`ncslim.run.distill`)."""
    if from_scratch:
        torch.manual_seed(cfg.seed)
        config, pruned_from = model.config(), model.pruned_from
        model = build_model(config.pop("arch"), **config).to(data.train_images.device)
        model.pruned_from = pruned_from
    model.trained_on = data_record(cfg, data.info)
    lr_flag = "--lr" if cfg.finetune_lr is None else "--finetune-lr"
    result = Trainer(model, data, finetune_stage(cfg), out, finetune_epochs(cfg),
                     progress=progress, lr_flag=lr_flag, observers=observers(cfg, "finetune"),
                     criterion=distillation(cfg, teacher)).fit(resume)
    return result.model, result.test_acc


def finetune_stage(cfg: Config) -> Config:
    """The settings fine-tuning trains with: ``finetune_lr`` and ``finetune_schedule``, where
    set, in place of ``lr`` and ``schedule``."""
    return replace(cfg, lr=cfg.lr if cfg.finetune_lr is None else cfg.finetune_lr,
                   schedule=cfg.finetune_schedule or cfg.schedule)


def finetune_record(cfg: Config) -> dict[str, Any]:
    """What ``results.json`` records of the fine-tuning: lr, schedule, epochs, distillation."""
    stage = finetune_stage(cfg)
    return {"lr": stage.lr, "schedule": stage.schedule, "epochs": finetune_epochs(cfg),
            "distill": distill_record(cfg)}


def size_summary(params: tuple[int, int], flops: tuple[int, int]) -> dict[str, Any]:
    """The ``params``, ``flops`` and ``macs`` fields of ``results.json`` from (original,
    pruned) counts: of one pruning as it counted them (fine-tuning changes no shape), or of a
    multi-pass run's original and final models."""
    return {
        "params": {"original": params[0], "pruned": params[1],
                   "removed": 1 - params[1] / params[0]},
        "flops": {"original": flops[0], "pruned": flops[1], "removed": 1 - flops[1] / flops[0],
                  "ratio": flops[0] / flops[1]},
        "macs": {"original": flops[0] // 2, "pruned": flops[1] // 2},
    }


def latency_results(cfg: Config, original: SlimmableNet, final: SlimmableNet,
                    device: torch.device) -> dict[str, Any]:
    """The ``latency`` field of ``results.json``: ``original`` against ``final`` on ``device``
    at batch 1 and the training batch, and on a GPU also on the CPU at batch 1."""
    latency = {device.type: latency_table(original, final, original.input_shape(), device,
                                          (1, cfg.batch_size), cfg.latency_threads)}
    if device.type != "cpu":
        latency["cpu"] = latency_table(
            copy.deepcopy(original).cpu(), copy.deepcopy(final).cpu(), original.input_shape(),
            torch.device("cpu"), (1,), cfg.latency_threads)
    return latency


def finetune_epochs(cfg: Config) -> int:
    return cfg.epochs if cfg.finetune_epochs is None else cfg.finetune_epochs


# how a trained model is pruned by a config: ncslim's rule, or a baseline's
Pruner = Callable[[SlimmableNet, Config], tuple[SlimmableNet, PruneReport]]


def sparsity_stage(cfg: Config, data: ImageData, stage_dir: Path, resume: bool = False,
                   progress: RunProgress | None = None,
                   method_for: Callable[[nn.Module], SparsityMethod] | None = None,
                   model: SlimmableNet | None = None) -> tuple[SlimmableNet, float]:
    """Sparsity training of a new model, or of ``model`` (a later pass of multi-pass slimming:
    the last pass's fine-tuned model), or its resumption; the model and its test accuracy.
    ``method_for`` makes the sparsity method of the model (default: the config's,
    :func:`~ncslim.run.methods.make_method`), e.g. a baseline's (:mod:`ncslim.run.baselines`)."""
    model = (new_model(cfg, data) if model is None else model).to(data.train_images.device)
    method = method_for(model) if method_for is not None else make_method(
        cfg, model, data.train_labels.numel(), cfg.epochs * steps_per_epoch(data, cfg))
    trained = Trainer(model, data, cfg, stage_dir, cfg.epochs, method, progress=progress,
                      observers=observers(cfg, "train")).fit(resume)
    return trained.model, trained.test_acc


def prune_and_finetune(model: SlimmableNet, sparse_acc: float, data: ImageData, cfg: Config,
                       out: Path, resume: bool = False, started: float | None = None,
                       progress: RunProgress | None = None, pruner: Pruner = prune,
                       extra: dict[str, Any] | None = None,
                       ) -> tuple[dict[str, Any], SlimmableNet]:
    """Prune a trained model, fine-tune it and measure everything; ``model`` is not changed.
    Returns the results and, in every process, the fine-tuned model (where the next pass of
    multi-pass slimming starts, :mod:`ncslim.run.passes`).

    Writes ``pruned.pt``, ``finetune/``, ``final.pt`` and ``results.json`` into ``out``;
    ``seconds`` counts from ``started`` (a ``time.perf_counter()`` value; default: now).
    Under torchrun every process prunes and fine-tunes; only rank 0 returns the results.
    ``pruner`` prunes by the config (default: ncslim's rule, :func:`~ncslim.run.prunerule.prune`);
    ``extra`` entries join ``results.json``, read when it is written (after ``pruner`` ran).
    """
    started = time.perf_counter() if started is None else started
    device = data.train_images.device
    pruned, report = pruner(model, cfg)
    if distributed.is_main():
        save_model(pruned, out / "pruned.pt")
    log.info("evaluating the pruned model")
    pruned_acc, _ = evaluate(pruned, data, cfg.channels_last)
    log.info("pruned %.1f%% of channels: test accuracy %.2f%% -> %.2f%%",
             100 * report.removed_fraction, 100 * sparse_acc, 100 * pruned_acc)
    final, final_acc = finetune(pruned, data, cfg, out / "finetune", resume, progress=progress,
                                teacher=model)  # the teacher of --distill
    if not distributed.is_main():
        return {}, final  # rank 0 measures latency and writes the results
    save_model(final, out / "final.pt")
    gammas = torch.cat([g.detach().abs().flatten() for g in find_scales(model).values()])
    results = {
        "config": cfg.to_dict(),
        "version": code_version(),
        "accuracy": {"sparse": sparse_acc, "pruned": pruned_acc, "finetuned": final_acc},
        "finetune": finetune_record(cfg),
        **size_summary((report.params_before, report.params_after),
                       (report.flops_before, report.flops_after)),
        "latency": latency_results(cfg, model, final, device),
        "prune": {k: v for k, v in report.to_dict().items() if k != "layers"},
        "channels": [{"layer": la.name, "kept": la.kept, "total": la.total}
                     for la in report.layers],
        "gamma": gamma_stats(model),
        "gamma_values": [float(f"{v:.6g}") for v in gammas.tolist()],
        "device": str(device),
        "seconds": time.perf_counter() - started,
    }
    results.update(extra or {})
    results["warnings"] = (latency_warnings(results["latency"])
                           + shortfall_warnings(gammas, cfg, report, sparse_acc, pruned_acc))
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results, final


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """The whole pipeline, one pass; returns (and writes to ``results.json``) every number it
    measured. ``--passes N`` runs through :func:`ncslim.run.passes.run`."""
    if cfg.passes > 1:
        raise ValueError(f"pipeline.run runs one pass; ncslim.run.passes.run runs --passes "
                         f"{cfg.passes}")
    started = time.perf_counter()
    out = Path(cfg.out)
    check_out(out, resume)
    data = load_data(cfg, setup_device(cfg))
    check_model(cfg, data)
    with claim(out, fresh=not resume, resume=resume):
        write_config(cfg, out, "run", data.info.fingerprint)
        progress = RunProgress((cfg.epochs + finetune_epochs(cfg)) * steps_per_epoch(data, cfg),
                               enabled=distributed.is_main())
        model, sparse_acc = sparsity_stage(cfg, data, out / "train", resume, progress)
        if distributed.is_main():
            save_model(model, out / "train" / "model.pt")
        results, _ = prune_and_finetune(model, sparse_acc, data, cfg, out, resume, started,
                                        progress)
        if distributed.is_main():
            atomic_write_text(out / SUMMARY_FILE, format_results(results) + "\n")
        return results
