"""What every sparsity penalty shares: the :class:`Penalty` interface (value, (sub)gradient,
proximal operator, threshold) and the checks and elementwise helpers the penalties build on.
The penalties themselves, and their registry, are in :mod:`ncslim.sparsity.penalties`."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["Penalty", "best_of", "check_tensor", "keep_above", "real_param"]


def real_param(owner: str, pname: str, value: object, allowed: str,
          ok: Callable[[float], bool]) -> float:
    """``value`` as a finite float satisfying ``ok``, else a ValueError naming the parameter."""
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {pname} must be {allowed}, got {value!r}")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {pname} must be {allowed}, got {value!r}") from None
    if not (math.isfinite(v) and ok(v)):
        raise ValueError(f"{owner}: {pname} must be {allowed}, got {value!r}")
    return v


def check_tensor(owner: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def keep_above(x: Tensor, ay: Tensor, tau: float) -> Tensor:
    """``x`` where ``|y| > tau``, exactly 0 elsewhere (never -0.0)."""
    return torch.where(ay > tau, x, torch.zeros_like(x))


def best_of(candidates: Sequence[Tensor], objective: Callable[[Tensor], Tensor]) -> Tensor:
    """Elementwise the candidate with the smallest objective (first one on ties)."""
    stack = torch.stack(list(candidates))
    best = objective(stack).argmin(dim=0, keepdim=True)
    return stack.gather(0, best).squeeze(0)


class Penalty(ABC):
    """Elementwise sparsity penalty ``value(x) = lam * P(x)`` with ``lam >= 0``.

    Subclasses set ``name``, ``PARAM_NAMES`` (keyword parameters with defaults, kept as
    attributes) and ``PARAM_HELP`` (their allowed values), and implement ``value``, ``grad``,
    ``_prox``, ``_threshold``. ``prox`` and ``threshold`` validate ``step``, handle ``lam == 0``.
    """

    name: ClassVar[str]
    PARAM_NAMES: ClassVar[tuple[str, ...]] = ()
    PARAM_HELP: ClassVar[dict[str, str]] = {}
    # whether the derivative is unbounded as x -> 0 (subgradient steps near zero then overshoot)
    SINGULAR_AT_ZERO: ClassVar[bool] = False

    def __init__(self, lam: float) -> None:
        self.lam = real_param(self.name, "lam", lam, "a finite number >= 0", lambda v: v >= 0.0)

    @abstractmethod
    def value(self, x: Tensor) -> Tensor:
        """The penalty term elementwise (``lam`` included)."""

    @abstractmethod
    def grad(self, x: Tensor) -> Tensor:
        """A finite (sub)gradient of ``value`` elementwise; 0 at ``x == 0``."""

    @abstractmethod
    def _prox(self, y: Tensor, step: float) -> Tensor:
        """``prox`` for ``lam > 0`` and a validated ``step``."""

    @abstractmethod
    def _threshold(self, step: float) -> float:
        """``threshold`` for ``lam > 0`` and a validated ``step``."""

    def _step(self, step: float) -> float:
        return real_param(self.name, "step", step, "a finite number > 0", lambda v: v > 0.0)

    def prox(self, y: Tensor, step: float) -> Tensor:
        """``argmin_x 0.5 (x - y)^2 + step * value(x)`` elementwise; a new tensor like ``y``.

        Exactly 0 where ``|y| <= threshold(step)`` (compared in ``y``'s dtype), nonzero
        elsewhere. Where the minimiser is not unique (a tie at the threshold of a nonconvex
        penalty) 0 is returned.
        """
        t = self._step(step)
        check_tensor(self.name, y)
        if self.lam == 0.0:
            return y.clone()
        return self._prox(y, t)

    def threshold(self, step: float) -> float:
        """The largest ``|y|`` that ``prox(y, step)`` maps to exactly 0."""
        t = self._step(step)
        return 0.0 if self.lam == 0.0 else self._threshold(t)

    def params(self) -> dict[str, float]:
        """The parameters, ``lam`` included: ``make_penalty(self.name, **self.params())``."""
        return {"lam": self.lam, **{k: getattr(self, k) for k in self.PARAM_NAMES}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
