"""A peer in ncslim's harness: network slimming as Torch-Pruning implements it (``BNScalePruner``).

    from ncslim.run.baselines import run_tp_baseline
    from ncslim.config import load_config
    run_tp_baseline(load_config("demo", {"out": "runs/tp"}), reg=1e-5)

Everything but the method is ncslim's: the data, the VGG and its initialisation (same seed), the
optimizer, schedule, epochs, fine-tuning, evaluation and ``results.json``. Torch-Pruning does its
own two parts with its own code: ``BNScalePruner.regularize`` after every ``backward()`` (the
subgradient ``reg * sign(gamma)`` on every BN scale), and ``BNScalePruner.step()`` with
``BNScaleImportance`` and ``global_pruning=True`` (channels ranked across layers by |gamma|
divided by its layer's mean |gamma|, the library's defaults). Its pruning ratio is searched so
that the pruned network keeps the share of channels, parameters or FLOPs the config asks for
(``--ratio``, ``--target-params``, ``--target-flops``), as an ncslim run pruned to the same
target keeps. Torch-Pruning's pruned VGG is rebuilt as an ncslim model from its conv widths (and
checked to compute the same function), so it is fine-tuned and saved like ours.
``pip install 'ncslim[generic]'`` installs Torch-Pruning; benchmarks/tp_baseline.py runs seeds,
regs and targets; docs/baselines.md explains the comparison.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data import ImageData
from ..models import SlimmableNet
from ..models.files import save_model
from ..models.scales import unwrap
from ..models.vgg import POOL
from ..prune import LayerReport, PruneReport, inherit_record, pruning_report
from ..prune.selection import DEFAULT_MIN_CHANNELS
from ..report.summary import SUMMARY_FILE, format_results
from ..sparsity import SparsityMethod
from ..util import distributed
from ..util.files import atomic_write_text
from ..util.progress import RunProgress
from .pipeline import finetune_epochs, load_data, prune_and_finetune, setup_device, sparsity_stage
from .rundir import claim, require_run, write_config
from .steps import steps_per_epoch
from .tp_pruner import (  # noqa: F401  (callers and benchmarks reach them here too)
    DEFAULT_REG,
    Match,
    TargetUnreachable,
    bnscale_pruner,
    match_compression,
    rebuild_vgg,
    torch_pruning,
    tp_version,
)

log = logging.getLogger("ncslim")

NAME = "tp-bnscale"  # how ncslim report labels the runs
TITLE = "torch-pruning BNScalePruner"
IMPORTANCE = "BNScaleImportance(group_reduction='mean', normalizer='mean')"  # its defaults
COMMAND = "tp-baseline"  # what config.json records as the command of a baseline run


def check_baseline(cfg: Config, reg: float) -> None:
    """Refuse, in one line each, what the baseline cannot run, before anything is written."""
    torch_pruning()
    if isinstance(reg, bool) or not (isinstance(reg, (int, float)) and math.isfinite(reg)
                                     and reg >= 0):
        raise ValueError(f"reg (Torch-Pruning's regularization coefficient) must be a finite "
                         f"number >= 0, got {reg!r}")
    if cfg.model is not None or cfg.arch != "vgg":
        raise ValueError(f"the Torch-Pruning baseline runs on VGG, the family the comparison "
                         f"uses (its pruned widths rebuild the spec exactly); got "
                         f"{'--model ' + cfg.model if cfg.model else '--arch ' + cfg.arch}")
    if cfg.threshold is not None or (cfg.prune_rule().budget is None and cfg.ratio is None):
        raise ValueError("the Torch-Pruning baseline is pruned to a compression: give --ratio, "
                         "--target-flops or --target-params (not --threshold)")
    if cfg.min_channels not in (1, DEFAULT_MIN_CHANNELS):
        raise ValueError("Torch-Pruning's pruner has no --min-channels floor (it never empties "
                         "a layer, and its runs record 1); leave --min-channels at its default")


def baseline_config(cfg: Config, reg: float) -> Config:
    """The config a baseline run records: the harness settings of ``cfg``, no ncslim penalty
    (``penalty = "none"``; ``lam`` holds ``reg``), no compensation, no cost weighting and no
    channel floor (Torch-Pruning has none)."""
    check_baseline(cfg, reg)
    return replace(cfg, penalty="none", lam=float(reg), mode="subgradient", compensate=False,
                   cost_weighted=False, min_channels=1).validate()


class TorchPruningBNScale(SparsityMethod):
    """Sparsity training by ``BNScalePruner.regularize`` after each backward (AMP: after
    ``unscale_``); its per-layer loop and ``.data`` writes are Torch-Pruning's own code."""

    def __init__(self, model: nn.Module, reg: float = DEFAULT_REG) -> None:
        super().__init__(model)
        self.reg = float(reg)
        self.pruner = bnscale_pruner(self.model, self.reg)
        ignored = set(map(id, self.pruner.ignored_layers))
        self.scales = [m.weight for m in self.model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
                       and id(m) not in ignored]

    @property
    def lam(self) -> float:
        return self.reg

    def after_backward(self) -> None:
        self.pruner.regularize(self.model)

    def end_epoch(self) -> dict[str, float]:
        with torch.no_grad():  # sync point, once per epoch
            total = sum(float(g.abs().sum()) for g in self.scales)
        return {"lam": self.reg, "penalty": self.reg * total}

    def state_dict(self) -> dict[str, Any]:
        return {"reg": self.reg}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state.get("reg") != self.reg:
            raise ValueError(f"it was trained with Torch-Pruning's reg {state.get('reg')}, not "
                             f"{self.reg}; resume with that reg or choose another folder")


def target_of(cfg: Config) -> tuple[str, float]:
    """(measure, share kept at most): ("flops", 0.4), ("params", 0.3) or ("channels", 0.5)."""
    rule = cfg.prune_rule()
    if rule.budget is not None:
        return rule.budget
    return "channels", 1.0 - float(rule.value)


def prune_tp(model: SlimmableNet, cfg: Config,
             record: dict[str, Any] | None = None) -> tuple[SlimmableNet, PruneReport]:
    """Torch-Pruning's pruning of ``model`` at the config's compression (:func:`target_of`), as
    an ncslim model and ncslim's report of it; ``record`` gets the ratio it took."""
    model = unwrap(model)
    measure, fraction = target_of(cfg)
    log.info("searching Torch-Pruning's ratio that keeps %g of the %s", fraction, measure)
    match = match_compression(model, measure, fraction, cfg.round_to)
    small = rebuild_vgg(match.small, model)
    removed = {name: sorted(idxs) for name, out_channels, idxs in match.pruner.pruning_history()
               if out_channels}
    modules = dict(model.named_modules())
    layers, gone = [], []
    for slot in model.prune_slots():
        gamma = modules[slot.bn].weight.detach().abs()
        cut = set(removed.get(slot.producer, ()))
        kept = [i for i in range(gamma.numel()) if i not in cut]
        layers.append(LayerReport(slot.bn, len(kept), gamma.numel(), kept))
        gone.append(gamma[sorted(cut)])
    if [layer.kept for layer in layers] != [c for c in small.channels if c != POOL]:
        raise RuntimeError("Torch-Pruning's pruning history does not match its pruned widths")
    largest = torch.cat(gone)
    threshold = float(largest.max()) if largest.numel() else 0.0  # the largest |gamma| removed
    report = pruning_report(model, small, model.input_shape(), layers, threshold,
                            cfg.ratio if measure == "channels" else None,
                            ranking="layer")  # its importance is divided by the group's mean
    inherit_record(small, model, report)
    if record is not None:
        record.update(pruning_ratio=match.ratio, channels_asked=match.removed,
                      reached=match.reached)
    return small, report


def baseline_record(cfg: Config, reg: float) -> dict[str, Any]:
    """What ``results.json`` records of the baseline under ``"baseline"``."""
    measure, fraction = target_of(cfg)
    return {"name": TITLE, "key": NAME, "torch_pruning": tp_version(), "reg": float(reg),
            "importance": IMPORTANCE, "global_pruning": True, "isomorphic": False,
            "group_lasso": False, "ignored_layers": ["classifier"],
            "round_to": cfg.round_to if cfg.round_to > 1 else None,
            "target": {"measure": measure, "kept": fraction}}


def train_baseline(cfg: Config, data: ImageData, stage_dir: Path, reg: float,
                   resume: bool = False, progress: RunProgress | None = None,
                   ) -> tuple[SlimmableNet, float]:
    """Sparsity training with Torch-Pruning's regularizer through ncslim's Trainer."""
    return sparsity_stage(cfg, data, stage_dir, resume, progress,
                          method_for=lambda model: TorchPruningBNScale(model, reg))


def prune_and_finetune_baseline(model: SlimmableNet, sparse_acc: float, data: ImageData,
                                cfg: Config, out: Path, reg: float, resume: bool = False,
                                started: float | None = None,
                                progress: RunProgress | None = None) -> dict[str, Any]:
    """:func:`ncslim.run.pipeline.prune_and_finetune` with Torch-Pruning's pruning; results.json
    gains the ``"baseline"`` record."""
    record = baseline_record(cfg, reg)
    return prune_and_finetune(model, sparse_acc, data, cfg, out, resume, started, progress,
                              pruner=lambda m, c: prune_tp(m, c, record),
                              extra={"baseline": record})[0]


def run_tp_baseline(cfg: Config, reg: float = DEFAULT_REG, resume: bool = False,
                    ) -> dict[str, Any]:
    """The whole baseline in ``cfg.out``, laid out as ``ncslim run`` lays out a run: train with
    Torch-Pruning's regularizer, prune with its pruner at the config's compression, fine-tune,
    measure; ``resume`` continues an interrupted run. Returns what results.json holds."""
    started = time.perf_counter()
    cfg = baseline_config(cfg, reg)
    out = Path(cfg.out)
    if resume:
        require_run(out)
    data = load_data(cfg, setup_device(cfg))
    with claim(out, fresh=not resume, resume=resume):
        write_config(cfg, out, COMMAND, data.info.fingerprint)
        progress = RunProgress((cfg.epochs + finetune_epochs(cfg)) * steps_per_epoch(data, cfg),
                               enabled=distributed.is_main())
        model, sparse_acc = train_baseline(cfg, data, out / "train", reg, resume, progress)
        if distributed.is_main():
            save_model(model, out / "train" / "model.pt")
        results = prune_and_finetune_baseline(model, sparse_acc, data, cfg, out, reg, resume,
                                              started, progress)
        if distributed.is_main():
            atomic_write_text(out / SUMMARY_FILE, format_results(results) + "\n")
        return results
