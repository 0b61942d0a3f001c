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

import copy
import importlib.util
import logging
import math
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data import ImageData
from ..models import SlimmableNet, build_model
from ..models.files import save_model
from ..models.measure import count_flops, count_params
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
from .train import steps_per_epoch

log = logging.getLogger("ncslim")

NAME = "tp-bnscale"  # how ncslim report labels the runs
TITLE = "torch-pruning BNScalePruner"
DEFAULT_REG = 1e-5  # BNScalePruner's own default
IMPORTANCE = "BNScaleImportance(group_reduction='mean', normalizer='mean')"  # its defaults
COMMAND = "tp-baseline"  # what config.json records as the command of a baseline run
COARSE_STEPS = 10  # the compression search tries this many ratios before bisecting


class TargetUnreachable(ValueError):
    """No ratio of Torch-Pruning's pruner reaches the asked share of a trained model."""


def torch_pruning() -> Any:
    if importlib.util.find_spec("torch_pruning") is None:
        raise ValueError("the Torch-Pruning baseline needs Torch-Pruning: "
                         "pip install 'ncslim[generic]'")
    import torch_pruning

    return torch_pruning


def tp_version() -> str:
    """The installed distribution's version (the module's ``__version__`` can lag behind it)."""
    try:
        return metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        return str(torch_pruning().__version__)


def bnscale_pruner(model: nn.Module, reg: float = DEFAULT_REG, ratio: float = 0.5,
                   round_to: int = 1) -> Any:
    """Torch-Pruning's ``BNScalePruner`` over ``model`` (an ncslim VGG), set up as the
    comparison uses it: global ranking by ``BNScaleImportance``, the classifier's outputs kept.
    The graph is traced in eval mode, so tracing moves no BN running statistic."""
    tp = torch_pruning()
    reference = next(model.parameters())
    example = torch.zeros(1, *model.input_shape(), device=reference.device, dtype=reference.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            return tp.pruner.BNScalePruner(
                model, example, tp.importance.BNScaleImportance(), reg=reg,
                global_pruning=True, pruning_ratio=ratio, ignored_layers=[model.classifier],
                round_to=round_to if round_to > 1 else None)
    finally:
        model.train(was_training)


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


def rebuild_vgg(small: nn.Module, model: SlimmableNet) -> SlimmableNet:
    """The ncslim VGG of Torch-Pruning's pruned copy ``small`` of ``model``: its spec from the
    pruned conv widths, its weights from ``small``; checked to compute what ``small`` computes."""
    widths = iter(m.out_channels for m in small.features if isinstance(m, nn.Conv2d))
    spec = [entry if entry == POOL else next(widths) for entry in model.channels]
    reference = next(small.parameters())
    rebuilt = build_model("vgg", model.num_classes, model.in_channels, channels=spec,
                          input_size=model.input_size).to(reference.device, reference.dtype)
    rebuilt.load_state_dict(small.state_dict())
    rebuilt.train(model.training)
    was_training = small.training
    small.eval()
    rebuilt.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *model.input_shape(), generator=generator).to(reference)
    with torch.no_grad():
        expected = small(x)
        scale = float(expected.abs().max())  # the logits of a VGG at init are small
        same = torch.allclose(rebuilt(x), expected, rtol=1e-4, atol=1e-5 * scale)
    small.train(was_training)
    rebuilt.train(model.training)
    if not same:
        raise RuntimeError("the rebuilt VGG does not compute what Torch-Pruning's pruned model "
                           "computes; the pruning changed more than the conv widths")
    return rebuilt


@dataclass
class Match:
    """A Torch-Pruning pruning at the compression asked for."""

    small: nn.Module  # Torch-Pruning's pruned copy
    pruner: Any  # the BNScalePruner that pruned it
    removed: int  # channels Torch-Pruning was asked to remove (its ratio, in channels)
    ratio: float  # the pruning_ratio passed to BNScalePruner
    reached: float  # the share of the measure the pruned model keeps


def target_of(cfg: Config) -> tuple[str, float]:
    """(measure, share kept at most): ("flops", 0.4), ("params", 0.3) or ("channels", 0.5)."""
    rule = cfg.prune_rule()
    if rule.budget is not None:
        return rule.budget
    return "channels", 1.0 - float(rule.value)


def _amount(model: nn.Module, measure: str) -> int:
    if measure == "channels":
        return sum(m.num_features for m in model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))
    if measure == "params":
        return count_params(model)
    return count_flops(model, model.input_shape())


def match_compression(model: SlimmableNet, measure: str, fraction: float,
                      round_to: int = 1) -> Match:
    """Torch-Pruning's pruning of a copy of ``model`` with the smallest ratio whose ``measure``
    ("channels", "params" or "flops") falls to ``fraction`` of the original or below.

    The ratio is searched in whole channels (a ratio of k channels out of n prunes k), first on
    a coarse grid, then by bisection. Removing more channels need not shrink the network here:
    Torch-Pruning skips a layer whose every channel ranks below the cut, so the coarse grid finds
    the first ratio that fits before the bisection narrows it.
    """
    total, before = _amount(model, "channels"), _amount(model, measure)
    limit = (total - int((1.0 - fraction) * total + 1e-9) if measure == "channels"
             else fraction * before)
    tried: dict[int, Match] = {}

    def fits(removed: int) -> bool:
        if removed not in tried:
            ratio = 0.0 if removed == 0 else (removed - 0.5) / total  # TP prunes exactly k
            small = copy.deepcopy(model)
            pruner = bnscale_pruner(small, ratio=ratio, round_to=round_to)
            pruner.step()
            tried[removed] = Match(small, pruner, removed, ratio,
                                   _amount(small, measure) / before)
        return tried[removed].reached * before <= limit

    if measure == "channels":  # Torch-Pruning's own ratio first: it removes that many channels
        exact = total - int(limit)
        if fits(exact) and (exact == 0 or not fits(exact - 1)):
            return tried[exact]
    grid = sorted({round(i * (total - 1) / COARSE_STEPS) for i in range(COARSE_STEPS + 1)})
    low, high = -1, None  # a count known not to fit, the first known to fit
    for removed in grid:
        if fits(removed):
            high = removed
            break
        low = removed
    if high is None:
        best = min(m.reached for m in tried.values())
        raise TargetUnreachable(f"Torch-Pruning cannot bring the {measure} to {fraction:.1%} of "
                                f"the original at any ratio (reached {best:.1%} at best); ask "
                                f"for less")
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return tried[high]


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
