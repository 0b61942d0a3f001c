"""Training with the sparsity regularizer: the loop, evaluation, per-epoch metrics, checkpoints.

    ncslim train --config demo --out runs/demo-train

A stage (sparsity training or fine-tuning) writes into its own directory: ``metrics.jsonl`` (one
line per epoch), ``last.pt`` (everything needed to resume, written atomically every epoch) and
``best.pt`` (the model with the best test accuracy so far). Each epoch draws its shuffling and
augmentation from a generator seeded by (seed, epoch), so a resumed run repeats exactly what an
uninterrupted one would have done.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data import ImageData, batches
from ..models.files import CHECKPOINT_FORMAT, FORMAT_VERSION, model_payload, nonfinite_entry
from ..models.scales import find_scales
from ..sparsity import SparsityMethod
from ..util import distributed
from ..util.files import atomic_save
from ..util.progress import EpochProgress, RunProgress
from .checkpoint import check_optimizer_state, damaged, load_checkpoint, read_metrics
from .device import amp_dtype, autocast
from .steps import (
    check_batches,
    epoch_generator,
    evaluate,
    gamma_stats,
    lr_at,
    sgd,
    steps_per_epoch,
)

log = logging.getLogger("ncslim")



class TrainingDiverged(RuntimeError):
    """The loss or the scaling factors became NaN or infinite."""


class EpochObserver(Protocol):
    """What watches a stage besides ``metrics.jsonl``, e.g. TensorBoard
    (:class:`ncslim.tensorboard_log.TensorBoardLog`): told each finished epoch in the process
    that writes files, just before the epoch's metrics line and checkpoint are written (a crash
    in between is undone on resume, as for the metrics). It opens what it writes at its first
    epoch, and is closed when the stage's epochs end, also on an error."""

    def epoch_end(self, record: dict[str, Any], model: nn.Module) -> None:
        """``record`` is the epoch's ``metrics.jsonl`` line; ``model`` the unwrapped model."""

    def close(self) -> None:
        """Flush and release what the observer holds."""


class Criterion(Protocol):
    """The training objective, the loop's one seam for the loss (e.g.
    :class:`ncslim.run.distill.Distillation`): called as ``criterion(x, out, y)`` with the batch
    ``x``, the model's logits ``out`` and the labels ``y``, inside the step's autocast; returns
    the batch's mean loss as a float32 scalar. It runs every step: no host sync."""

    def __call__(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss to minimise."""


class CrossEntropy:
    """The default objective: cross-entropy of the logits, in float32 also under autocast."""

    def __call__(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), y)


@dataclass
class StageResult:
    model: nn.Module
    test_acc: float
    epochs: int
    history: list[dict[str, Any]]


class Trainer:
    """One training stage of one model: ``Trainer(...).fit()`` runs (or resumes) it."""

    def __init__(self, model: nn.Module, data: ImageData, cfg: Config, stage_dir: Path,
                 epochs: int, method: SparsityMethod | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 progress: RunProgress | None = None, lr_flag: str = "--lr",
                 observers: Sequence[EpochObserver] = (),
                 criterion: Criterion | None = None) -> None:
        """Train ``model`` with ``method`` (default: no sparsity) and ``optimizer`` (default:
        :func:`sgd` over the method's parameter groups) to minimise ``criterion`` (default:
        :class:`CrossEntropy`). ``lr_flag`` names the flag that set this stage's learning rate,
        for the advice if it diverges; ``observers`` are told every finished epoch
        (:class:`EpochObserver`)."""
        self.model, self.data, self.cfg, self.epochs = model, data, cfg, epochs
        self.criterion: Criterion = criterion or CrossEntropy()
        self.dir, self.lr_flag, self.observers = Path(stage_dir), lr_flag, tuple(observers)
        self.device = data.train_images.device
        check_batches(data, cfg)
        self.steps = steps_per_epoch(data, cfg)
        self.progress = progress or RunProgress(epochs * self.steps, distributed.is_main())
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.method = method or SparsityMethod(model)
        self.opt = optimizer or sgd(cfg, self.method)
        self.amp = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.part = (distributed.rank(), distributed.world_size())
        forward: nn.Module = model
        if distributed.active():
            if cfg.batch_size % self.part[1]:
                raise ValueError(f"--batch-size {cfg.batch_size} (the global batch) must divide "
                                 f"by the {self.part[1]} processes")
            if cfg.sync_bn:
                distributed.sync_batchnorm(model)
            forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.forward = torch.compile(forward) if cfg.compile else forward
        self.start_epoch, self.best_acc, self.history = 0, -1.0, []

    def train_epoch(self, epoch: int, lr: float, progress: EpochProgress) -> dict[str, float]:
        """One pass over the training set; the hot loop."""
        model, opt, scaler, method, cfg = self.forward, self.opt, self.scaler, self.method, self.cfg
        criterion = self.criterion
        for group in opt.param_groups:
            group["lr"] = lr
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)  # first NaN/inf step
        seen = 0
        generator = epoch_generator(self.device, cfg.seed, epoch)
        method.begin_epoch(cfg.seed, epoch)
        for step, (x, y) in enumerate(batches(
                self.data.train_images, self.data.train_labels, cfg.batch_size,
                info=self.data.info, train=True, generator=generator, drop_last=True,
                channels_last=cfg.channels_last, part=self.part)):
            with autocast(self.device, self.amp):
                out = model(x)
                loss = criterion(x, out, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss + method.loss_term()).backward()
            scaler.unscale_(opt)  # the method must see true gradients, not scaled ones
            method.after_backward()
            scaler.step(opt)
            scaler.update()
            method.after_step(lr)
            loss = loss.detach()
            loss_sum += loss * y.numel()
            correct += (out.argmax(1) == y).sum()
            first_bad = torch.where((first_bad < 0) & ~loss.isfinite(), step, first_bad)
            seen += y.numel()
            reading = progress.step(loss)  # the loss of earlier steps; never waits for the device
            if reading is not None:
                if not math.isfinite(reading):
                    self._diverged("the loss", epoch, int(first_bad))
                self.progress.note(lam=method.lam)  # a host float: the controller moves it
        if first_bad.item() >= 0:  # sync point, once per epoch
            self._diverged("the loss", epoch, int(first_bad))
        loss_sum, correct, images = distributed.all_sum(
            loss_sum, correct, torch.tensor(seen, device=self.device))
        seen = int(images)
        return {"train_loss": loss_sum.item() / max(seen, 1),
                "train_acc": correct.item() / max(seen, 1), "images": seen}

    def _diverged(self, what: str, epoch: int, step: int | None) -> None:
        where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
        kept = (f"the checkpoint of epoch {epoch} is kept" if epoch > 0 else
                "no checkpoint was written")
        flags = self.lr_flag + (" or --lam" if self.method.lam > 0 else "")
        raise TrainingDiverged(f"{what} became NaN/inf in {where} of {self.dir}; {kept}; lower "
                               f"{flags} and run again")

    def fit(self, resume: bool = False) -> StageResult:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.progress.begin_stage(lam=self.method.lam)
        if resume:
            self._restore()
            self.progress.skip(self.start_epoch * self.steps)
        elif (self.dir / "last.pt").exists():
            raise ValueError(f"{self.dir} already holds a run; pass --resume to continue it or "
                             f"choose another --out")
        try:
            for epoch in range(self.start_epoch, self.epochs):
                self._run_epoch(epoch)
        finally:
            for observer in self.observers:
                observer.close()
        distributed.plain_batchnorm(self.model)
        self.method.finish()  # also when a resume had no epoch left
        acc = self.history[-1]["test_acc"] if self.history else evaluate(
            self.model, self.data, self.cfg.channels_last, self.amp)[0]
        return StageResult(self.model, acc, self.epochs, self.history)

    def _run_epoch(self, epoch: int) -> None:
        lr = lr_at(self.cfg, epoch, self.epochs)
        start = time.perf_counter()
        with self.progress.epoch(self.dir.name, epoch + 1, self.epochs, self.steps,
                                 self.device) as progress:
            stats = self.train_epoch(epoch, lr, progress)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        test_acc, test_loss = evaluate(self.model, self.data, self.cfg.channels_last, self.amp)
        record = {"epoch": epoch + 1, "lr": lr, **stats, "test_acc": test_acc,
                  "test_loss": test_loss, "epoch_time": seconds,
                  "images_per_s": stats["images"] / seconds, **gamma_stats(self.model)}
        record.update(self.method.end_epoch())
        self._check_gammas(epoch)
        self.progress.note(test_acc=test_acc, small=record["gamma_below_1e-2"], lam=record["lam"],
                           **({"distance": record["target_distance"]}
                              if "target_distance" in record else {}))
        self.history.append(record)
        if distributed.is_main():
            for observer in self.observers:
                observer.epoch_end(record, self.model)
            self._save(record)
        log.info("%s epoch %d/%d  loss %.4f  train %.2f%%  test %.2f%%  lr %.3g  "
                 "|gamma|<1e-2 %.1f%%  %.1fs  %.0f img/s", self.dir.name, epoch + 1, self.epochs,
                 record["train_loss"], 100 * record["train_acc"], 100 * test_acc, lr,
                 100 * record["gamma_below_1e-2"], seconds, record["images_per_s"])

    def _check_gammas(self, epoch: int) -> None:
        """The loss is watched step by step in :meth:`train_epoch`; the gammas once per epoch."""
        if not all(torch.isfinite(g).all() for g in find_scales(self.model).values()):
            self._diverged("the BN scaling factors", epoch, None)

    def _save(self, record: dict[str, Any]) -> None:
        """Metrics first, then the checkpoint: a crash in between is undone on resume."""
        path = self.dir / "metrics.jsonl"
        try:
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:  # a full disk: name the file (a torn line is dropped on resume)
            raise OSError(err.errno, err.strerror, str(path)) from err
        payload = model_payload(self.model)
        if record["test_acc"] > self.best_acc:
            self.best_acc = record["test_acc"]
            atomic_save({**payload, "metrics": record}, self.dir / "best.pt")
        atomic_save({
            "format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "epoch": record["epoch"],
            "epochs": self.epochs, "best_acc": self.best_acc, "config": self.cfg.to_dict(),
            "model": payload, "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(), "method": self.method.state_dict(),
        }, self.dir / "last.pt")

    def _restore(self) -> None:
        path = self.dir / "last.pt"
        if not path.exists():  # killed before its first checkpoint: metrics written since go
            read_metrics(self.dir / "metrics.jsonl", keep=0, rewrite=distributed.is_main())
            return
        state = load_checkpoint(path, self.device)
        if self.model.recorded_config(state["model"].get("config")) != self.model.config():
            raise ValueError(f"{path} holds another architecture or class count "
                             f"({_describe(state['model'])}) than this run "
                             f"({_describe(model_payload(self.model))}); resume with the settings "
                             f"in its config.json or choose another --out")
        bad = nonfinite_entry(state["model"]["state_dict"])
        if bad is not None:
            raise ValueError(f"{path} holds NaN or infinite values ({bad}): it cannot be resumed; "
                             f"start afresh in another --out with a lower --lr (or --lam)")
        if state["epoch"] > self.epochs:
            raise damaged(path, f"it says epoch {state['epoch']} of a {self.epochs}-epoch stage")
        try:
            self.model.load_state_dict(state["model"]["state_dict"])
            self.opt.load_state_dict(state["optimizer"])
            check_optimizer_state(self.opt)
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            first = " ".join(lines[:2])[:200] or type(err).__name__  # torch: a header, a cause
            raise damaged(path, f"its state does not fit this run ({first})") from None
        try:  # checkpoints before the method protocol kept VCP's state under "vcp"
            self.method.load_state_dict(state.get("method") or state.get("vcp") or {})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        except (KeyError, TypeError, RuntimeError, IndexError) as err:
            raise damaged(path, f"its sparsity method's state does not fit ({err!r})") from None
        self.start_epoch, self.best_acc = state["epoch"], float(state["best_acc"])
        self.history = read_metrics(self.dir / "metrics.jsonl", keep=self.start_epoch,
                                     rewrite=distributed.is_main())
        log.info("resumed %s at epoch %d/%d", self.dir, self.start_epoch, self.epochs)


def _describe(payload: dict[str, Any]) -> str:
    """"vgg, 10 classes, 1 input channel(s), 12,345 parameters" of a model payload."""
    config = payload.get("config") or {}
    params = sum(t.numel() for k, t in payload.get("state_dict", {}).items()
                 if torch.is_tensor(t) and not k.endswith(("running_mean", "running_var",
                                                           "num_batches_tracked")))
    return (f"{config.get('arch')}, {config.get('num_classes')} classes, "
            f"{config.get('in_channels')} input channel(s), {params:,} parameters")
