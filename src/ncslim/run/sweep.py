"""Sweeps: a grid of penalties x parameters x lam x seeds, each pruned at several ratios.

    ncslim sweep configs/sweep-fashion-vgg19.toml --dry-run
    ncslim sweep configs/sweep-fashion-vgg19.toml --shard 1/2     # on one machine
    ncslim sweep configs/sweep-fashion-vgg19.toml --shard 2/2     # on another

A sweep file::

    preset = "demo"                  # where every run starts (preset name or .toml path)
    out = "runs/sweep"               # one directory per training run below this
    seeds = [0, 1]
    ratios = [0.5, 0.7]              # each trained model is pruned (and fine-tuned) at each

    [base]                           # Config keys shared by every run
    epochs = 6

    [[grid]]                         # one block per family of runs; list values multiply
    penalty = "lp"
    p = [0.5, 0.75]
    mode = ["subgradient", "proximal"]

A training run is the unit of work (its ratios reuse the trained model). Finished pieces are
skipped and an interrupted one resumes, so rerunning a killed sweep loses nothing. A run that
diverges is set aside and the others go on; it is tried again once its settings change. With
``passes = N`` (N > 1) each ratio is its own chain of passes (:mod:`ncslim.run.passes`): pass 1
prunes the shared trained model, and ``ratio-R/`` holds ``pass1/`` ... ``passN/``, the final
model and its results. ``--shard I/N``
takes every N-th training run, so N machines split a sweep with no coordinator.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import AUTO, Config, load_config, read_preset
from ..config.checks import layer_targets, one_target
from ..data import ImageData
from ..models.files import run_lock
from ..sparsity.penalty_registry import stray_params
from ..sparsity.registry import field_owner, method_spec
from . import diverged
from .device import resolve_device
from .passes import pass_config, run_passes
from .pipeline import check_model, load_data, prune_and_finetune, sparsity_stage, write_config
from .rundir import check_same_run
from .train import TrainingDiverged

log = logging.getLogger("ncslim")
SWEEP_KEYS = {"preset", "out", "seeds", "ratios", "base", "grid"}
SET_BY_SWEEP = {"seed", "out"}  # per run, by the sweep: never in [base] or [[grid]]
MAX_RUNS = 10_000
DIVERGED_ADVICE = ("set aside; the sweep goes on: lower its lr (or change its settings) in the "
                   "sweep file and run the sweep again, which moves it to {aside}N/ and starts "
                   "it afresh")


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep and the prune ratios applied to its model."""

    name: str
    config: Config
    ratios: tuple[float | None, ...]  # (None,) for VCP: its own rule decides

    @property
    def dir(self) -> Path:
        return Path(self.config.out)

    def ratio_dir(self, ratio: float | None) -> Path:
        if ratio is None:  # the run's own rule: its method's (VCP's), or --lam auto's target
            own = method_spec(self.config.penalty).own_rule
            return self.dir / (f"{self.config.penalty}-rule" if own else "target")
        return self.dir / f"ratio-{ratio:g}"

    def status(self) -> str:
        done = sum((self.ratio_dir(r) / "results.json").exists() for r in self.ratios)
        if done == len(self.ratios):
            return "done"
        if diverged.holds_one(self.dir):
            return "diverged"
        return "partial" if done or (self.dir / "train").exists() else "new"

    def settings_changed(self) -> bool:
        """Whether the sweep file now asks other settings of the run than its folder records
        (a diverged run is tried again only then: the same settings diverge again): what a
        resume would refuse (:func:`~ncslim.run.rundir.check_same_run`). A ``config.json`` that
        cannot be read (a FIFO, too large, damaged) counts as changed: the run is set aside
        whole and starts afresh."""
        try:
            check_same_run(self.config, self.dir / "config.json", "sweep")
        except (OSError, ValueError):
            return True
        return False


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _run_name(values: dict[str, Any], seed: int, penalty: str | None) -> str:
    """``penalty``, the other grid values (mode last) and the seed: ``lp_p0.75_proximal_s0``."""
    parts = [] if penalty is None else [str(penalty)]
    for key in sorted(k for k in values if k not in ("penalty", "mode")):
        short, value = key.removeprefix(f"{field_owner(key)}_"), values[key]  # vcp_mu: mu
        if isinstance(value, bool):  # cost_weighted = true: "cost-weighted"
            parts.append(short.replace("_", "-") if value else f"no-{short.replace('_', '-')}")
        else:
            parts.append(f"{short}{value:g}" if isinstance(value, float) else f"{short}{value}")
    if "mode" in values:
        parts.append(str(values["mode"]))
    return "_".join(parts + [f"s{seed}"])


def expand(spec: dict[str, Any], source: str = "sweep") -> list[SweepRun]:
    """Every training run of a sweep spec, sorted by name (the order shards split)."""
    check_spec(spec, source)
    ratios = tuple(float(r) for r in _as_list(spec.get("ratios", [0.5])))
    seeds = _as_list(spec.get("seeds", [0]))
    out = Path(spec.get("out", "runs/sweep"))
    runs: dict[str, SweepRun] = {}
    for block in spec["grid"]:
        keys = sorted(block)
        for combo in itertools.product(*(_as_list(block[k]) for k in keys)):
            values = dict(zip(keys, combo))
            for seed in seeds:
                run = _sweep_run(spec, values, seed, ratios, out, source)
                if run.name in runs and runs[run.name].config != run.config:
                    raise ValueError(f"{source}: two grid points are both named {run.name} "
                                     f"(their values print alike); make the values differ "
                                     f"visibly or split them into sweeps with another out")
                runs[run.name] = run
    return [runs[name] for name in sorted(runs)]


def check_spec(spec: dict[str, Any], source: str = "sweep") -> None:
    """The sweep file's own keys, their types and the grid's size, before anything expands."""
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown sweep key(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(SWEEP_KEYS))}")
    if not spec.get("grid"):
        raise ValueError(f"{source}: no [[grid]] block: nothing to run")
    number = (int, float)
    checks = [
        ("preset", isinstance(spec.get("preset", ""), str), "a preset name or a .toml path"),
        ("out", isinstance(spec.get("out", ""), str), "a folder path (a string)"),
        ("seeds", all(type(v) is int and 0 <= v < 2**32 for v in _as_list(spec.get("seeds", 0))),
         "integers in [0, 2^32)"),
        ("ratios", all(isinstance(v, number) and not isinstance(v, bool) and 0 <= v < 1
                       for v in _as_list(spec.get("ratios", 0.5))), "numbers in [0, 1)"),
        ("base", isinstance(spec.get("base", {}), dict), "a table ([base])"),
        ("grid", isinstance(spec["grid"], list) and all(isinstance(b, dict) for b in spec["grid"]),
         "an array of tables ([[grid]] blocks)"),
    ]
    for key, ok, wanted in checks:
        if not ok:
            raise ValueError(f"{source}: {key} must be {wanted}, got {spec.get(key)!r}")
    for where, table in [("[base]", spec.get("base", {}))] + [
            (f"[[grid]] block {i}", block) for i, block in enumerate(spec["grid"], 1)]:
        owned = set(table) & SET_BY_SWEEP
        if owned:
            raise ValueError(f"{source}: {where} sets {', '.join(sorted(owned))}, which the sweep "
                             f"sets for each run (seeds = [...], out = ...); remove it there")
        nested = [k for k, v in table.items() if isinstance(v, dict) or (
            where != "[base]" and isinstance(v, list) and any(isinstance(x, (list, dict))
                                                              for x in v))]
        if nested:
            raise ValueError(f"{source}: {where}: {', '.join(nested)} must be a value or a list "
                             f"of values")
    size = len(_as_list(spec.get("seeds", [0]))) * sum(
        math.prod(len(_as_list(v)) for v in block.values()) for block in spec["grid"])
    if size > MAX_RUNS:
        raise ValueError(f"{source}: the grid holds {size:,} training runs, more than "
                         f"{MAX_RUNS:,}; split it into several sweep files")


def _sweep_run(spec: dict[str, Any], values: dict[str, Any], seed: int,
               ratios: tuple[float, ...], out: Path, source: str) -> SweepRun:
    """The run of one grid point, validated at each ratio; named after the penalty it trains
    with (the grid's, else the base's or the preset's)."""
    name = _run_name(values, seed, values.get("penalty"))
    try:
        base = spec.get("base", {})
        one_target(base, "[base]: ")
        cfg = load_config(spec.get("preset"), {**layer_targets(base, values), "seed": seed})
        name = _run_name(values, seed, cfg.penalty)
        stray = stray_params(cfg.penalty, values)
        if stray:
            raise ValueError(f"{', '.join(stray)} does not act on --penalty {cfg.penalty} "
                             f"(its parameters: {', '.join(cfg.penalty_params()) or 'none'}); "
                             f"give it in a [[grid]] block of the penalties that take it")
        # pruned by what it trained for: its method's own rule, or --lam auto's target
        own_rule = method_spec(cfg.penalty).own_rule or cfg.lam == AUTO
        for ratio in () if own_rule else ratios:
            replace(cfg, ratio=ratio).validate()
    except ValueError as err:
        raise ValueError(f"{source}: run {name}: {err}") from err
    if any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise ValueError(f"{source}: run {name}: its name would leave the sweep's folder {out} "
                         f"(a value holds a path); give paths in [base], not in [[grid]]")
    cfg = replace(cfg, out=str(out / name))
    return SweepRun(name, cfg, (None,) if own_rule else ratios)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 1 <= I <= N; None -> (1, 1)."""
    if text is None:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 1/4), got {text!r}") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard I/N needs 1 <= I <= N, got {text!r}")
    return index, count


def shard_runs(runs: list[SweepRun], shard: tuple[int, int]) -> list[SweepRun]:
    index, count = shard
    return runs[index - 1::count]


def run_sweep(path: str | Path, shard: tuple[int, int] = (1, 1),
              dry_run: bool = False) -> list[tuple[SweepRun, str]]:
    """Run (or with ``dry_run`` only list) this shard's runs; returns (run, status) pairs."""
    runs = shard_runs(expand(read_preset(str(path)), str(path)), shard)
    listing = [(run, run.status()) for run in runs]
    if dry_run:
        return listing
    cache: dict[tuple[Any, ...], ImageData] = {}
    for run, status in listing:
        if status == "done":
            log.info("sweep: %s already done, skipped", run.name)
            continue
        if status == "diverged" and not run.settings_changed():
            log.warning("sweep: %s diverged before (%s), skipped: it would again with the same "
                        "settings", run.name, run.dir / diverged.MARK)
            continue
        try:
            _execute(run, cache)
        except TrainingDiverged as err:  # one run's divergence is its own: the others go on
            log.warning("sweep: %s %s", run.name, err)
    return [(run, run.status()) for run in runs]


def cached_data(cfg: Config, cache: dict[tuple[Any, ...], ImageData]) -> ImageData:
    """``cfg``'s data on its device, loaded once for consecutive runs that share it; ``cache``
    holds one dataset at a time."""
    key = (cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.limit_test, cfg.svhn_extra,
           cfg.input_size, cfg.device)
    if key not in cache:
        cache.clear()
        cache[key] = load_data(cfg, resolve_device(cfg.device))
    return cache[key]


def _execute(run: SweepRun, cache: dict[tuple[Any, ...], ImageData]) -> None:
    cfg = run.config
    data = cached_data(cfg, cache)
    log.info("sweep: %s", run.name)
    check_model(cfg, data)
    with (run_lock(run.dir, fresh=False),  # two shards given the same run never interleave
          diverged.noted(run.dir, writes=True, advice=DIVERGED_ADVICE)):
        if diverged.holds_one(run.dir):  # diverged before, and its settings changed since
            log.info("sweep: %s diverged before; set aside in %s", run.name,
                     diverged.set_aside(run.dir))
        write_config(cfg, run.dir, "sweep", data.info.fingerprint)
        # pass 1's training (the passes' own target for --lam auto); the same for every ratio
        model, sparse_acc = sparsity_stage(pass_config(cfg, 1), data, run.dir / "train",
                                           resume=True)
        for ratio in run.ratios:
            if (run.ratio_dir(ratio) / "results.json").exists():
                continue
            ratio_cfg = (replace(cfg, out=str(run.ratio_dir(ratio))) if ratio is None else
                         replace(cfg, ratio=ratio, threshold=None, target_flops=None,
                                 target_params=None, out=str(run.ratio_dir(ratio))))
            if cfg.passes > 1:
                run_passes(ratio_cfg, data, run.ratio_dir(ratio), model, sparse_acc, resume=True)
            else:
                prune_and_finetune(model, sparse_acc, data, ratio_cfg, run.ratio_dir(ratio),
                                   resume=True)
