"""What ``PENALTIES`` says about penalty parameters, for the configuration, the command line and
sweep files. Nothing here names a penalty: a new one is its class and its entry in ``PENALTIES``.

    >>> from ncslim.sparsity.penalty_registry import param_defaults, resolve_params, stray_params
    >>> param_defaults("scad"), param_default("p"), param_default("a")  # tl1 and scad differ
    ({'a': 3.7}, 0.5, None)
    >>> resolve_params("tl1", {"a": None, "p": 0.75}), resolve_params("none", {"a": 2.0})
    ({'a': 1.0}, {})
    >>> stray_params("l1", ["a", "lam", "mode"])
    ['a']
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from .penalties import PENALTIES, Penalty

__all__ = ["param_default", "param_defaults", "param_help", "param_names", "param_unset",
           "resolve_params", "stray_params"]


def param_defaults(penalty: str | type[Penalty]) -> dict[str, Any]:
    """Each of the penalty's ``PARAM_NAMES`` with its constructor's keyword default.

    TypeError where one has no default: a penalty must build from ``lam`` alone.
    """
    cls = PENALTIES[penalty] if isinstance(penalty, str) else penalty
    signature = inspect.signature(cls).parameters
    empty = inspect.Parameter.empty
    missing = [k for k in cls.PARAM_NAMES if k not in signature or signature[k].default is empty]
    if missing:
        raise TypeError(f"{cls.__name__}: parameter(s) {', '.join(missing)} need a keyword "
                        f"default in __init__")
    return {k: signature[k].default for k in cls.PARAM_NAMES}


def param_names() -> tuple[str, ...]:
    """Every parameter name that some registered penalty takes, sorted."""
    return tuple(sorted({k for cls in PENALTIES.values() for k in cls.PARAM_NAMES}))


def resolve_params(penalty: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword parameters of ``penalty`` for ``make_penalty``: ``given[k]`` for each of its
    ``PARAM_NAMES`` where that is set (not None), else the penalty's default. Other keys of
    ``given`` are ignored; a name that is no registered penalty (``none``, ``vcp``) takes none.
    """
    if penalty not in PENALTIES:
        return {}
    defaults = param_defaults(penalty)
    return {k: default if given.get(k) is None else given[k] for k, default in defaults.items()}


def stray_params(penalty: str, keys: Iterable[str]) -> list[str]:
    """The ``keys`` that name a parameter of some registered penalty but not of ``penalty``."""
    own = PENALTIES[penalty].PARAM_NAMES if penalty in PENALTIES else ()
    return sorted((set(keys) & set(param_names())) - set(own))


def _takers(pname: str) -> list[type[Penalty]]:
    return [cls for cls in PENALTIES.values() if pname in cls.PARAM_NAMES]


def param_default(pname: str) -> Any:
    """The default of parameter ``pname`` where every penalty that takes it has the same one,
    else None: each penalty then takes its own (``resolve_params``)."""
    values = [param_defaults(cls)[pname] for cls in _takers(pname)]
    return values[0] if values and all(v == values[0] for v in values) else None


def param_help(pname: str) -> str:
    """What parameter ``pname`` is, per penalty that takes it: ``"tl1: a > 0; scad: a > 2"``."""
    return "; ".join(f"{cls.name}: {pname} {cls.PARAM_HELP.get(pname, '')}".rstrip()
                     for cls in _takers(pname))


def param_unset(pname: str) -> str:
    """Its default per penalty that takes it, ``"tl1 1, scad 3.7"``: what None stands for."""
    def text(value: Any) -> str:
        return f"{value:g}" if isinstance(value, (int, float)) else str(value)

    return ", ".join(f"{cls.name} {text(param_defaults(cls)[pname])}" for cls in _takers(pname))
