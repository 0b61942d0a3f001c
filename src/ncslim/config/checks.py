"""The checks of a :class:`~ncslim.config.Config`: types, choices, ranges, data and the
combinations of flags; each failure is a ValueError naming the flag and what it allows."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from ..sparsity.registry import method_fields, method_spec

AUTO = "auto"  # lam = "auto": the lambda controller (ncslim.sparsity.controller) chooses it
MAX_PASSES = 20  # the paper stops at three; more is a typo more likely than a plan
TARGETS = ("ratio", "threshold", "target_flops", "target_params")  # one pruning target each


def one_target(values: dict[str, Any], where: str = "") -> None:
    """Refuse two pruning targets set in one place (the flags, a preset, a sweep table): the
    pruning would follow one and drop the other. ``None`` (``off``) sets none."""
    given = [key for key in TARGETS if values.get(key) is not None]
    if len(given) > 1:
        flags = " and ".join(f"--{_flag(key)}" for key in given)
        raise ValueError(f"{where}{flags} are two pruning targets at once; the pruning follows "
                         f"one: give only one of --{', --'.join(map(_flag, TARGETS))}")


def layer_targets(lower: dict[str, Any], upper: dict[str, Any]) -> dict[str, Any]:
    """``lower`` with ``upper`` on top, where a pruning target set in ``upper`` replaces every
    target of ``lower`` (a flag's --ratio replaces the preset's threshold). A ratio is kept as
    it was: it has a default, and any other target is followed before it."""
    if any(upper.get(key) is not None for key in TARGETS):
        lower = {key: value for key, value in lower.items() if key not in TARGETS[1:]}
    return {**lower, **upper}


def check_config(cfg: Any) -> None:
    """Every check, in order: types first (a later check may rely on them)."""
    _check_types(cfg)
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_data(cfg)
    _check_combinations(cfg)


def _check_combinations(cfg: Any) -> None:
    one_target({key: getattr(cfg, key) for key in TARGETS[1:]})  # ratio has a default
    method = method_spec(cfg.penalty)
    if method.no_sync_bn and cfg.sync_bn:
        raise ValueError(f"--penalty {method.name} {method.no_sync_bn} and does not work with "
                         f"--sync-bn; leave --sync-bn out")
    if cfg.lam == AUTO and (not method.takes_lambda or cfg.threshold is not None
                             or (cfg.ratio is None and cfg.target_flops is None
                                 and cfg.target_params is None)):
        from ..sparsity.penalties import PENALTIES

        raise ValueError(f"--lam auto adapts a penalty's lambda to a pruning target: give "
                         f"--penalty {'/'.join(PENALTIES)} and --ratio, --target-flops or "
                         f"--target-params (not --threshold)")
    if cfg.cost_weighted and (method.own_rule or cfg.prune_rule().budget is None):
        raise ValueError("--cost-weighted weighs channels by what they save of a budget: "
                         "give --target-flops or --target-params (not --ratio or "
                         "--threshold, and not --penalty vcp, which prunes by its own rule)")
    if cfg.amp_dtype != "auto" and not cfg.amp:
        raise ValueError(f"--amp-dtype {cfg.amp_dtype} sets the precision of --amp, which is "
                         f"off: add --amp (or leave --amp-dtype out)")
    if cfg.passes > 1 and method.no_passes:
        raise ValueError(f"--passes > 1 retrains with a penalty on |gamma|; --penalty "
                         f"{method.name} has no multi-pass form ({method.no_passes}): use "
                         f"--passes 1")
    if cfg.passes > 1 and cfg.pass_target == "total" and cfg.threshold is not None:
        raise ValueError("--pass-target total splits a --ratio, --target-flops or "
                         "--target-params over the passes; a --threshold cuts |gamma| the same "
                         "way in every pass: use --pass-target each")
    if cfg.teacher is not None and not cfg.distill:
        raise ValueError("--teacher is the model that --distill distils from; add --distill, or "
                         "leave --teacher out")
    if cfg.model is not None:
        from ..models.imported import resolve_builder

        resolve_builder(cfg.model)
        if cfg.compensate:
            raise ValueError("--compensate works for ncslim's own architectures (--arch), "
                             "not for --model networks; leave it out")
    if method.takes_lambda:
        from ..sparsity.penalties import make_penalty

        make_penalty(cfg.penalty, cfg.start_lam(), **cfg.penalty_params())



def _check_choices(cfg: Any) -> None:
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        choices = choices() if callable(choices) else choices
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:  # None: unset, typed
            raise ValueError(f"--{_flag(f.name)} must be one of {', '.join(choices)}, "
                             f"got {value!r}")


_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _check_types(cfg: Any) -> None:
    """Each value has its field's type: in a preset or sweep file a string is not a boolean and
    a number is not a path (flags are parsed to the type already)."""
    check_value_types({f.name: getattr(cfg, f.name) for f in fields(cfg)},
                      {f.name: f.type for f in fields(cfg)})


def check_value_types(values: dict[str, Any], types: dict[str, Any]) -> None:
    """:func:`_check_types` for some fields' ``values`` (``types``: every field's annotation),
    e.g. a preset's before flags override it."""
    for name, value in values.items():
        kinds = [kind.strip() for kind in str(types[name]).split("|")]
        if value is None and "None" in kinds:
            continue
        if not any(_TYPE_CHECKS[kind][0](value) for kind in kinds if kind in _TYPE_CHECKS):
            wanted = " or ".join(_TYPE_CHECKS[k][1] for k in kinds if k in _TYPE_CHECKS)
            if "None" in kinds:
                wanted += " (or left out)"
            raise ValueError(f"--{_flag(name)} must be {wanted}, got {value!r} "
                             f"({type(value).__name__})")


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _check_ranges(cfg: Any) -> None:
    rules: list[tuple[str, bool, str]] = [
        ("width", _finite(cfg.width) and cfg.width > 0, "a number > 0"),
        ("epochs", isinstance(cfg.epochs, int) and cfg.epochs >= 0, "an integer >= 0"),
        ("finetune_epochs", cfg.finetune_epochs is None or (
            isinstance(cfg.finetune_epochs, int) and cfg.finetune_epochs >= 0), "an integer >= 0"),
        ("batch_size", isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, "an integer >= 1"),
        ("lr", _finite(cfg.lr) and cfg.lr > 0, "a number > 0"),
        ("finetune_lr", cfg.finetune_lr is None or (_finite(cfg.finetune_lr)
                                                    and cfg.finetune_lr > 0), "a number > 0"),
        ("momentum", _finite(cfg.momentum) and 0 <= cfg.momentum < 1, "in [0, 1)"),
        ("weight_decay", _finite(cfg.weight_decay) and cfg.weight_decay >= 0, "a number >= 0"),
        ("lam", cfg.lam == AUTO or (_finite(cfg.lam) and cfg.lam >= 0),
         "a finite number >= 0 or auto"),
        ("ratio", cfg.ratio is None or (_finite(cfg.ratio) and 0 <= cfg.ratio < 1), "in [0, 1)"),
        ("threshold", cfg.threshold is None or (_finite(cfg.threshold) and cfg.threshold >= 0),
         "a number >= 0"),
        ("target_flops", cfg.target_flops is None or (
            _finite(cfg.target_flops) and 0 < cfg.target_flops <= 1), "in (0, 1]"),
        ("target_params", cfg.target_params is None or (
            _finite(cfg.target_params) and 0 < cfg.target_params <= 1), "in (0, 1]"),
        ("min_channels", isinstance(cfg.min_channels, int) and cfg.min_channels >= 1,
         "an integer >= 1"),
        ("round_to", isinstance(cfg.round_to, int) and cfg.round_to >= 1, "an integer >= 1"),
        ("max_layer_ratio", cfg.max_layer_ratio is None or (
            _finite(cfg.max_layer_ratio) and 0 < cfg.max_layer_ratio <= 1), "in (0, 1]"),
        ("passes", isinstance(cfg.passes, int) and 1 <= cfg.passes <= MAX_PASSES,
         f"an integer in [1, {MAX_PASSES}]"),
        ("seed", isinstance(cfg.seed, int) and 0 <= cfg.seed < 2**32, "an integer in [0, 2^32)"),
        ("device", re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", cfg.device) is not None,
         "cpu, cuda, cuda:N or auto (ncslim runs on CPUs and CUDA GPUs)"),
        ("latency_threads", isinstance(cfg.latency_threads, int)
         and 0 <= cfg.latency_threads <= (os.cpu_count() or 1),
         f"an integer in [0, {os.cpu_count() or 1}] (the CPUs this machine has)"),
        ("limit_train", cfg.limit_train is None or (
            isinstance(cfg.limit_train, int) and cfg.limit_train >= 1), "an integer >= 1"),
        ("limit_test", cfg.limit_test is None or (
            isinstance(cfg.limit_test, int) and cfg.limit_test >= 1), "an integer >= 1"),
        ("distill_temperature", _finite(cfg.distill_temperature) and cfg.distill_temperature > 0,
         "a number > 0"),
        ("distill_weight", _finite(cfg.distill_weight) and 0 <= cfg.distill_weight <= 1,
         "in [0, 1]"),
    ] + [(f.name, f.valid(getattr(cfg, f.name)), f.allowed) for f in method_fields()]
    for name, ok, allowed in rules:
        if not ok:
            raise ValueError(f"--{_flag(name)} must be {allowed}, got {getattr(cfg, name)!r}")
    from ..models import check_arch

    try:
        check_arch(cfg.arch, cfg.depth, cfg.width)  # the spec only: no module is built
    except ValueError as err:
        raise ValueError(f"--arch {cfg.arch} --depth {cfg.depth} --width {cfg.width:g}: "
                         f"{err}") from None


def _check_data(cfg: Any) -> None:
    """--input-size in range and for a folder dataset only; --download not for a folder
    (--data-dir is checked when the data is read: prune needs none)."""
    from ..data import DATASETS, FOLDER
    from ..data.folder import MAX_SIZE, MIN_SIZE

    size = cfg.input_size
    if size is not None and not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"--input-size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got "
                         f"{size!r}")
    if cfg.dataset == FOLDER and cfg.download:
        raise ValueError(f"--download fetches the built-in datasets; --dataset {FOLDER} reads "
                         f"--data-dir only; leave --download out")
    own = DATASETS[cfg.dataset].image_size if cfg.dataset in DATASETS else size
    if size is not None and size != own:
        raise ValueError(f"--input-size resizes image folders (--dataset {FOLDER}) only; "
                         f"{cfg.dataset} images are {own}x{own}; leave --input-size out")


def _flag(name: str) -> str:
    return name.replace("_", "-")
