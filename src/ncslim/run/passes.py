"""Multi-pass slimming (network slimming, Liu et al. 2017, section 4.4): train with the penalty,
prune, fine-tune, then train the pruned network with the penalty again, prune and fine-tune it,
and so on.

    ncslim run --passes 2 --max-layer-ratio 0.5 --ratio 0.5 --out runs/two-passes

Pass k lives in ``OUT/passk/`` (``train/``, ``pruned.pt``, ``finetune/``, ``final.pt`` and its
own ``results.json``, which measures it against the model it started with); pass k + 1 trains
pass k's fine-tuned model. ``OUT/final.pt`` is the last pass's model and ``OUT/results.json``
measures it against the original full model, with a ``passes`` list. With ``passes = 1`` a run
is :func:`ncslim.run.pipeline.run`, files and all.

``pass_target`` says what the pruning rule measures: ``each`` (the default): every pass prunes
``ratio`` of the channels it starts with (keeps ``target_flops`` / ``target_params`` of the
model it starts with); ``total``: the final model meets the target against the original, pass k
taking an even geometric share of what is left (:func:`pass_config`). A threshold applies in
every pass. ``--lam auto`` aims each pass at that pass's own target. ``--penalty vcp`` has no
multi-pass form (its sigmas do not survive pruning) and is refused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..data import ImageData
from ..models import SlimmableNet
from ..models.files import load_model, save_model
from ..models.measure import latency_warnings
from ..prune import prune_model
from ..report.summary import SUMMARY_FILE, format_results
from ..util import distributed
from ..util.files import atomic_write_text
from ..util.progress import RunProgress
from ..util.regular import JSON_RECORD_LIMIT, read_text
from . import pipeline
from .prunerule import SHORTFALL
from .steps import steps_per_epoch

log = logging.getLogger("ncslim")

MEASURES = ("channels", "params", "flops")  # what a pass's share of the target is counted in
WHOLE = {measure: 1.0 for measure in MEASURES}  # what the model pass 1 starts with keeps


def pass_dir(out: Path, index: int) -> Path:
    """The folder of pass ``index`` (counted from 1)."""
    return Path(out) / f"pass{index}"


def pass_config(cfg: Config, index: int, kept: Mapping[str, float] = WHOLE) -> Config:
    """The configuration that pass ``index`` (from 1) trains for and prunes by.

    ``kept`` holds the shares of the original model's prunable channels, parameters and FLOPs
    that the model the pass starts with still has. With ``pass_target = "total"`` a pass keeps
    ``(target / kept) ** (1 / passes left)`` of what it starts with: an even geometric share of
    the way left, so ``target_params = 0.3`` over 2 passes keeps sqrt(0.3) of the parameters in
    each when the first pass meets its share, and the last pass always aims at the target
    itself. ``each`` and a threshold: ``cfg`` unchanged.
    """
    if cfg.passes == 1 or cfg.pass_target == "each" or cfg.threshold is not None:
        return cfg
    left = cfg.passes - index + 1
    budget = cfg.prune_rule().budget
    if budget is not None:
        measure, fraction = budget
        share = min(1.0, (fraction / kept[measure]) ** (1.0 / left))
        return replace(cfg, **{f"target_{measure}": share})
    keep = min(1.0, (1.0 - cfg.ratio) / kept["channels"]) ** (1.0 / left)
    return replace(cfg, ratio=1.0 - keep)


def measure(model: SlimmableNet) -> dict[str, float]:
    """The prunable channels, parameters and FLOPs of ``model``, as pruning counts them."""
    report = prune_model(model, ratio=0.0)[1]
    return {"channels": float(sum(layer.total for layer in report.layers)),
            "params": float(report.params_before), "flops": float(report.flops_before)}


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """``ncslim run``: :func:`ncslim.run.pipeline.run` for one pass, else ``cfg.passes`` of them.
    Returns (and writes to ``results.json``) what :func:`run_passes` measured."""
    if cfg.passes == 1:
        return pipeline.run(cfg, resume)
    started = time.perf_counter()
    out = Path(cfg.out)
    pipeline.check_out(out, resume)
    data = pipeline.load_data(cfg, pipeline.setup_device(cfg))
    pipeline.check_model(cfg, data)
    with pipeline.claim(out, fresh=not resume, resume=resume):
        pipeline.write_config(cfg, out, "run", data.info.fingerprint)
        stages = cfg.epochs + pipeline.finetune_epochs(cfg)
        progress = RunProgress(cfg.passes * stages * steps_per_epoch(data, cfg),
                               enabled=distributed.is_main())
        first = replace(pass_config(cfg, 1), out=str(pass_dir(out, 1)))
        full, sparse_acc = pipeline.sparsity_stage(first, data, pass_dir(out, 1) / "train",
                                                   resume, progress)
        if distributed.is_main():
            save_model(full, pass_dir(out, 1) / "train" / "model.pt")
        results = run_passes(cfg, data, out, full, sparse_acc, resume, started, progress)
        if distributed.is_main():
            atomic_write_text(out / SUMMARY_FILE, format_results(results) + "\n")
        return results


def run_passes(cfg: Config, data: ImageData, out: Path, full: SlimmableNet, sparse_acc: float,
               resume: bool = False, started: float | None = None,
               progress: RunProgress | None = None) -> dict[str, Any]:
    """Every pass after pass 1's sparsity training (``full``, of test accuracy ``sparse_acc``):
    pass 1 prunes and fine-tunes ``full``, each later pass trains the one before's model with
    the penalty again, prunes and fine-tunes it. A resumed run skips the passes whose
    ``results.json`` is written and continues the first that is not, where it stopped.

    Writes the pass folders and ``final.pt``, ``results.json`` into ``out``; under torchrun
    every process trains, only rank 0 writes and returns the results ({} elsewhere).
    """
    started = time.perf_counter() if started is None else started
    device = data.train_images.device
    original = measure(full) if cfg.pass_target == "total" else None
    model, acc, outcomes = full, sparse_acc, []
    for index in range(1, cfg.passes + 1):
        folder = pass_dir(out, index)
        kept = WHOLE if original is None or index == 1 else {
            key: value / original[key] for key, value in measure(model).items()}
        pass_cfg = replace(pass_config(cfg, index, kept), out=str(folder))
        if resume and (folder / "results.json").is_file():  # a finished pass
            model = load_model(folder / "final.pt", device,  # its own --model: consented
                               trust_code=cfg.model.split(":")[0] if cfg.model else None)
            outcomes.append(json.loads(read_text(folder / "results.json", limit=JSON_RECORD_LIMIT,
                                                 fix="start the run afresh in another --out")))
            if progress is not None:
                progress.skip(_steps(cfg, data, index))
            continue
        log.info("pass %d of %d: %s", index, cfg.passes, _rule_text(pass_cfg))
        if index > 1:
            model, acc = pipeline.sparsity_stage(pass_cfg, data, folder / "train", resume,
                                                 progress, model=model)
            if distributed.is_main():
                save_model(model, folder / "train" / "model.pt")
        outcome, model = pipeline.prune_and_finetune(model, acc, data, pass_cfg, folder, resume,
                                                     started, progress)
        outcomes.append(outcome)
    if not distributed.is_main():
        return {}
    results = combine(cfg, outcomes, full, model, device, started)
    save_model(model, out / "final.pt")
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def _steps(cfg: Config, data: ImageData, index: int) -> int:
    """The training steps of a finished pass that a resumed run skips (pass 1's sparsity
    training is resumed, and counted, before the passes)."""
    epochs = pipeline.finetune_epochs(cfg) + (cfg.epochs if index > 1 else 0)
    return epochs * steps_per_epoch(data, cfg)


def _rule_text(cfg: Config) -> str:
    return cfg.prune_rule().label(".4g")


def combine(cfg: Config, outcomes: list[dict[str, Any]], full: SlimmableNet,
            final: SlimmableNet, device: torch.device, started: float) -> dict[str, Any]:
    """The run's results: the final model against the original full one (pass 1's), each
    pass's in ``passes``; |gamma| and the pruning cut are the last pass's."""
    first, last = outcomes[0], outcomes[-1]
    totals = {c["layer"]: c["total"] for c in first["channels"]}
    channels = [{"layer": c["layer"], "kept": c["kept"], "total": totals.get(c["layer"],
                                                                              c["total"])}
                for c in last["channels"]]
    sizes = {key: (first[key]["original"], last[key]["pruned"]) for key in ("params", "flops")}
    results = {
        "config": cfg.to_dict(),
        "version": pipeline.code_version(),
        "accuracy": {"sparse": first["accuracy"]["sparse"],
                     "pruned": last["accuracy"]["pruned"],
                     "finetuned": last["accuracy"]["finetuned"]},
        **pipeline.size_summary(sizes["params"], sizes["flops"]),
        "latency": pipeline.latency_results(cfg, full, final, device),
        "prune": _overall_prune(cfg, outcomes, channels, sizes),
        "channels": channels,
        "gamma": last["gamma"],
        "gamma_values": last["gamma_values"],
        "device": str(device),
        "seconds": time.perf_counter() - started,
        "passes": [_pass_entry(index, outcome) for index, outcome in
                   enumerate(outcomes, 1)],
    }
    results["warnings"] = latency_warnings(results["latency"]) + [
        f"pass {index}: {warning}" for index, outcome in enumerate(outcomes, 1)
        for warning in outcome.get("warnings", []) if warning.startswith(SHORTFALL)]
    return results


def _overall_prune(cfg: Config, outcomes: list[dict[str, Any]], channels: list[dict[str, Any]],
                   sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The ``prune`` field of a run's results: the last pass's pruning report with the run's
    rule (``ratio``: the configured one), its channels, parameters and FLOPs removed against the
    original, and every layer any pass held at the floor or the cap."""
    prune = dict(outcomes[-1]["prune"])
    prune["ratio"] = cfg.prune_rule().as_dict().get("ratio")
    prune["removed_fraction"] = 1.0 - (sum(c["kept"] for c in channels)
                                       / sum(c["total"] for c in channels))
    for key, (before, after) in sizes.items():
        prune.update({f"{key}_before": before, f"{key}_after": after,
                      f"{key}_removed": 1.0 - after / before})
    prune.update(macs_before=sizes["flops"][0] // 2, macs_after=sizes["flops"][1] // 2)
    for held in ("floored", "capped"):
        if held in prune:
            prune[held] = sorted({name for o in outcomes for name in o["prune"].get(held, [])})
    return prune


def _pass_entry(index: int, outcome: dict[str, Any]) -> dict[str, Any]:
    """One pass in the run's ``passes`` list: its rule, its three accuracies, the size of the
    model it ends with, and its pruning report (against the model it started with)."""
    return {"pass": index, "rule": Config(**outcome["config"]).prune_rule().as_dict(),
            "accuracy": outcome["accuracy"],
            "params": outcome["params"]["pruned"], "flops": outcome["flops"]["pruned"],
            "channels": sum(c["kept"] for c in outcome["channels"]),
            "prune": outcome["prune"]}
