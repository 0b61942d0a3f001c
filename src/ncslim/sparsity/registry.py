"""The sparsity methods by name: what ``--penalty`` may name, and everything else that must know
a method: its own configuration fields, how it is built for a training stage, whether it takes a
lambda (and so ``--mode``, the penalty's parameters and ``--lam auto``), what it works with, its
own pruning rule if it has one, and how reports describe it.

    register_method(MethodSpec("mine", "my method", build=lambda stage: MyMethod(stage.model)))

A new method is one module (its :class:`~ncslim.sparsity.method.SparsityMethod` subclass and its
:class:`MethodSpec`) and one import in :mod:`ncslim.sparsity`: the config's choices and fields,
its checks, the training run, the cut, sweeps and reports read the registry
(``tests/test_method_registry.py`` runs a method made up in the test through all of them).
Configs are read duck-typed here (``stage.cfg.seed``): this package sits below the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .method import SparsityMethod


@dataclass(frozen=True)
class MethodField:
    """A configuration field a method owns (a flag ``--NAME`` of the commands it lists)."""

    name: str
    default: Any
    help: str
    commands: tuple[str, ...]
    valid: Callable[[Any], bool]
    allowed: str  # what ``valid`` accepts, for the error: "a number > 0"
    type: str = "float"  # as a dataclass annotation ("float | None" where None is allowed)
    unset: str | None = None  # what None means, for --help


@dataclass(frozen=True)
class Stage:
    """What building a method for one training stage may use."""

    cfg: Any
    model: nn.Module
    n_train: int  # training images
    steps: int  # optimizer steps of the stage
    schedule: Callable[[int], float]  # the learning rate of a step


@dataclass(frozen=True)
class MethodSpec:
    """One sparsity method. ``takes_lambda``: a penalty on |gamma| (``--lam``, ``--mode``, the
    penalty's parameters, ``--lam auto``). ``no_sync_bn`` / ``no_passes``: why the method does
    not work with ``--sync-bn`` / ``--passes > 1`` (None: it does). ``pruning_scores(model,
    cfg)``: the method's own pruning rule (a channel goes where its score is <= 1), named
    ``rule_label`` in dry runs and reports; None: the config's prune rule applies.
    ``describe(cfg)``: its parameters as reports show them."""

    name: str
    help: str
    build: Callable[[Stage], SparsityMethod]
    takes_lambda: bool = False
    fields: tuple[MethodField, ...] = ()
    no_sync_bn: str | None = None
    no_passes: str | None = None
    pruning_scores: Callable[[nn.Module, Any], dict[str, torch.Tensor]] | None = None
    rule_label: str = ""
    describe: Callable[[Any], str] | None = None

    @property
    def own_rule(self) -> bool:
        return self.pruning_scores is not None


METHODS: dict[str, MethodSpec] = {}  # by name, in the order of the choices
_PENALTIES = "<penalties>"  # where the penalties stand in that order
_penalized: MethodSpec | None = None  # what each penalty of the penalty registry is


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` under its name (a name taken already, or a field another method owns, is a
    ValueError)."""
    if spec.name in METHODS or spec.name in _penalty_names():
        raise ValueError(f"a sparsity method named {spec.name!r} is registered already")
    taken = {f.name for other in METHODS.values() for f in other.fields}
    clash = [f.name for f in spec.fields if f.name in taken]
    if clash:
        raise ValueError(f"method {spec.name!r}: fields {clash} belong to another method")
    if spec.own_rule and not spec.rule_label:
        raise ValueError(f"method {spec.name!r} prunes by its own rule: give it a rule_label")
    METHODS[spec.name] = spec
    return spec


def register_penalties(spec: MethodSpec) -> None:
    """Every penalty of the penalty registry (:data:`ncslim.sparsity.penalties.PENALTIES`, read
    when asked: a penalty added there is a method at once) is a method like ``spec``."""
    global _penalized
    _penalized = spec
    METHODS[_PENALTIES] = spec


def _penalty_names() -> tuple[str, ...]:
    from .penalties import PENALTIES

    return tuple(PENALTIES) if _penalized is not None else ()


def method_names() -> tuple[str, ...]:
    return tuple(n for name in METHODS
                 for n in (_penalty_names() if name == _PENALTIES else (name,)))


def find_method(name: Any) -> MethodSpec | None:
    """The method ``name`` names, or None (not a string, or not registered)."""
    if not isinstance(name, str) or name == _PENALTIES:
        return None
    if name in _penalty_names():
        return replace(_penalized, name=name, help=f"the {name} penalty on |gamma|")  # type: ignore[arg-type]
    return METHODS.get(name)


def method_spec(name: str) -> MethodSpec:
    spec = find_method(name)
    if spec is None:
        raise ValueError(f"no sparsity method {name!r}; one of {', '.join(method_names())}")
    return spec


def takes_lambda(name: Any) -> bool:
    """Whether runs of ``name`` carry a lambda (a name not registered here, e.g. from an older
    record or another tool's run, is read as a penalty)."""
    spec = find_method(name)
    return spec is None or spec.takes_lambda


def method_fields() -> list[MethodField]:
    return [f for spec in METHODS.values() for f in spec.fields]


def field_owner(name: str) -> str | None:
    """The method that declares the configuration field ``name`` (None: a field of all)."""
    return next((spec.name for spec in METHODS.values() for f in spec.fields if f.name == name),
                None)


def own_rule_label(name: Any) -> str | None:
    """The label of the own pruning rule of the method ``name`` (None: it has none, or ``name``
    is not registered)."""
    spec = find_method(name)
    return spec.rule_label if spec is not None and spec.own_rule else None
