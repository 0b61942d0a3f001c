"""Sparsity penalties on BatchNorm scaling factors: value, (sub)gradient and proximal operator.

Every penalty acts elementwise on a tensor ``x`` of BN scales and already includes its strength
``lam >= 0``. ``prox(y, step)`` solves ``argmin_x 0.5 * (x - y)**2 + step * value(x)`` exactly
(closed forms or, for general ``p`` of ``lp``, a fixed number of Newton steps), so it can run
inside a training step under ``torch.no_grad()`` on any device without a host synchronisation.

Usage::

    import torch
    from ncslim.sparsity.penalties import make_penalty

    pen = make_penalty("tl1", lam=1e-4, a=1.0)
    gammas = torch.randn(64) * 1e-3
    loss_term = pen.value(gammas).sum()        # add to the loss (or use grad() directly)
    gammas = pen.prox(gammas, step=0.1)        # proximal step with learning rate 0.1
    print(pen, pen.params())                   # TL1(lam=0.0001, a=1.0) {'lam': 0.0001, 'a': 1.0}
    print(pen.threshold(0.1))                  # prox maps |y| <= this to exactly 0
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch
from torch import Tensor

from .penalty_base import Penalty, best_of, check_tensor, keep_above, real_param

__all__ = ["L1", "MCP", "PENALTIES", "SCAD", "TL1", "Lp", "Penalty", "make_penalty"]

# Newton steps for the general-p prox of ``lp``. Started from the tangent upper bound (see
# ``Lp._prox_newton``), the worst case measured over p in [1e-4, 0.9999] and |y| from just
# above the threshold to 1e12 times it was 3 steps in float32 and 4 in float64 to reach the
# conditioning floor (a few eps * |y|); 6 leaves a margin.
NEWTON_STEPS = 6
TL1_POLISH_STEPS = 2
TL1_POLISH_BELOW = 0.5


class L1(Penalty):
    """``lam * |x|`` (the original network slimming penalty); prox is soft thresholding."""

    name = "l1"

    def value(self, x: Tensor) -> Tensor:
        return self.lam * check_tensor(self.name, x).abs()

    def grad(self, x: Tensor) -> Tensor:
        return self.lam * check_tensor(self.name, x).sign()

    def _threshold(self, step: float) -> float:
        return step * self.lam

    def _prox(self, y: Tensor, step: float) -> Tensor:
        tau = self._threshold(step)
        ay = y.abs()
        return keep_above(torch.copysign(ay - tau, y), ay, tau)


class Lp(Penalty):
    """``lam * |x|^p`` with ``0 < p < 1`` (default 0.5, the paper's l1/2; it also uses 3/4).

    The true derivative ``p lam sign(x) |x|^(p-1)`` is infinite at 0. ``grad`` returns exactly
    0 at ``x == 0`` (0 belongs to the limiting subdifferential there) and, for tiny nonzero
    ``|x|``, evaluates with ``|x|`` clamped below at ``torch.finfo(dtype).tiny`` and the result
    clamped to ``+-finfo.max``: it is finite everywhere, never inf or NaN. Prefer ``prox``
    (which needs no gradient at 0) for training with this penalty.

    ``prox`` uses the closed-form half thresholding for ``p == 0.5`` and otherwise a fixed
    number (``NEWTON_STEPS``) of Newton steps on ``x + L p x^(p-1) = |y|`` (L = step * lam).
    """

    name = "lp"
    PARAM_NAMES, PARAM_HELP = ("p",), {"p": "in (0, 1)"}
    SINGULAR_AT_ZERO = True

    def __init__(self, lam: float, *, p: float = 0.5) -> None:
        super().__init__(lam)
        self.p = real_param(self.name, "p", p, self.PARAM_HELP["p"], lambda v: 0.0 < v < 1.0)

    def value(self, x: Tensor) -> Tensor:
        return self.lam * check_tensor(self.name, x).abs().pow(self.p)

    def grad(self, x: Tensor) -> Tensor:
        check_tensor(self.name, x)
        info = torch.finfo(x.dtype)
        g = (self.p * self.lam) * x.abs().clamp(min=info.tiny).pow(self.p - 1.0)
        # Clamp before multiplying by sign(x): inf * 0 would be NaN at x == 0.
        return g.clamp(max=info.max) * x.sign()

    def _beta(self, step: float) -> float:
        """The smallest nonzero prox output, ``(2 L (1 - p))^(1 / (2 - p))``."""
        return (2.0 * step * self.lam * (1.0 - self.p)) ** (1.0 / (2.0 - self.p))

    def _threshold(self, step: float) -> float:
        # beta + L p beta^(p-1), simplified with beta^(2-p) = 2 L (1 - p).
        return self._beta(step) * (2.0 - self.p) / (2.0 * (1.0 - self.p))

    def _prox(self, y: Tensor, step: float) -> Tensor:
        if self.p == 0.5:
            return self._prox_half(y, step)
        return self._prox_newton(y, step)

    def _prox_half(self, y: Tensor, step: float) -> Tensor:
        """Half thresholding (Xu et al. 2012), written for ``(x - y)^2 + 2L |x|^(1/2)``."""
        lam2 = 2.0 * step * self.lam
        tau = self._threshold(step)
        ay = y.abs()
        ayc = ay.clamp(min=tau)  # keeps the discarded branch finite
        # (lam2 / 8) * (|y| / 3)^(-3/2) written as (c / |y|)^(3/2) to avoid overflow.
        c = 3.0 * (lam2 / 8.0) ** (2.0 / 3.0)
        phi = torch.arccos((c / ayc).pow(1.5).clamp(max=1.0))
        x = (2.0 / 3.0) * ayc * (1.0 + torch.cos((2.0 * math.pi / 3.0) - (2.0 / 3.0) * phi))
        return keep_above(torch.copysign(x, y), ay, tau)

    def _prox_newton(self, y: Tensor, step: float) -> Tensor:
        """Root of ``h(x) = x + L p x^(p-1) = |y|`` in ``[beta, |y|]`` by Newton's method.

        h is convex and increasing on [beta, inf) with h(beta) = tau and h'(beta) = 1 - p/2,
        so the tangent at beta bounds the root from above; from there Newton decreases
        monotonically to the root. A fixed step count keeps it free of host syncs.
        """
        coef = step * self.lam * self.p
        beta, tau = self._beta(step), self._threshold(step)
        ay = y.abs()
        ayc = ay.clamp(min=tau)
        x = torch.minimum(ayc, beta + (ayc - tau) / (1.0 - 0.5 * self.p)).clamp(min=beta)
        for _ in range(NEWTON_STEPS):
            f = x + coef * x.pow(self.p - 1.0) - ayc
            df = 1.0 + coef * (self.p - 1.0) * x.pow(self.p - 2.0)
            x = (x - f / df).clamp(min=beta)
        return keep_above(torch.copysign(x, y), ay, tau)


class TL1(Penalty):
    """Transformed l1, ``lam (a+1)|x| / (a+|x|)`` with ``a > 0`` (default 1.0).

    Small ``a`` approaches l0 (times lam), large ``a`` approaches l1; ``a = 1`` is the usual
    middle ground of Zhang & Xin. ``prox`` is their closed-form thresholding.
    """

    name = "tl1"
    PARAM_NAMES, PARAM_HELP = ("a",), {"a": "> 0"}

    def __init__(self, lam: float, *, a: float = 1.0) -> None:
        super().__init__(lam)
        self.a = real_param(self.name, "a", a, self.PARAM_HELP["a"], lambda v: v > 0.0)

    def value(self, x: Tensor) -> Tensor:
        ax = check_tensor(self.name, x).abs()
        return (self.lam * (self.a + 1.0)) * ax / (self.a + ax)

    def grad(self, x: Tensor) -> Tensor:
        ax = check_tensor(self.name, x).abs()
        return (self.lam * self.a * (self.a + 1.0)) * x.sign() / (self.a + ax).square()

    def _critical_l(self) -> float:
        """``L = step * lam`` above which the threshold jumps: ``a^2 / (2 (a + 1))``."""
        return self.a * self.a / (2.0 * (self.a + 1.0))

    def _threshold(self, step: float) -> float:
        big_l, a = step * self.lam, self.a
        if big_l <= self._critical_l():
            return big_l * (a + 1.0) / a
        return math.sqrt(2.0 * big_l * (a + 1.0)) - a / 2.0

    def _prox(self, y: Tensor, step: float) -> Tensor:
        big_l, a = step * self.lam, self.a
        tau = self._threshold(step)
        ay = y.abs()
        ayc = ay.clamp(min=tau)
        cos_arg = 1.0 - (27.0 * big_l * a * (a + 1.0) / 2.0) / (a + ayc).pow(3)
        phi = torch.arccos(cos_arg.clamp(-1.0, 1.0))
        x = (2.0 / 3.0) * (a + ayc) * torch.cos(phi / 3.0) - (2.0 * a / 3.0) + ayc / 3.0
        if big_l <= TL1_POLISH_BELOW * self._critical_l():
            x = self._polish(x.clamp(min=0.0), ayc, big_l)
        # Keep the tiny roots just above a continuous threshold positive, so that prox is
        # nonzero exactly where |y| > threshold.
        x = x.clamp(min=torch.finfo(y.dtype).tiny)
        return keep_above(torch.copysign(x, y), ay, tau)

    def _polish(self, x: Tensor, ay: Tensor, big_l: float) -> Tensor:
        """Newton steps on ``x + L a (a+1) / (a+x)^2 = |y|`` after the closed form.

        For ``L << a^2`` the threshold and the root are much smaller than ``a`` and the closed
        form loses digits to cancellation (absolute error ~ eps * a instead of eps * |y|: a
        relative error near 1e-3 in float32 for lam = 1e-4, lr = 0.1, a = 1, y = 1e-4). Used
        only for ``L <= TL1_POLISH_BELOW * a^2 / (2(a+1))``: there the left side is convex with
        slope >= 1 - TL1_POLISH_BELOW on x >= 0, so Newton from the nearly exact closed form
        restores full accuracy; above it |y| > a/4 and the cancellation is harmless.
        """
        k = big_l * self.a * (self.a + 1.0)
        for _ in range(TL1_POLISH_STEPS):
            d = self.a + x
            f = x + k / d.square() - ay
            df = 1.0 - 2.0 * k / d.pow(3)
            x = (x - f / df).clamp(min=0.0)
        return x


class MCP(Penalty):
    """Minimax concave penalty with ``gamma > 1`` (default 3.0).

    ``lam |x| - x^2 / (2 gamma)`` for ``|x| <= gamma lam``, constant ``gamma lam^2 / 2`` beyond.
    gamma = 3 is the value Zhang (2010) and most follow-up work use; larger gamma approaches l1.
    The prox is firm thresholding while ``step < gamma`` and hard thresholding at
    ``sqrt(step * gamma) * lam`` once ``step >= gamma`` (the inner piece of the objective is then
    concave, so its minimum sits at an end point).
    """

    name = "mcp"
    PARAM_NAMES, PARAM_HELP = ("gamma",), {"gamma": "> 1"}

    def __init__(self, lam: float, *, gamma: float = 3.0) -> None:
        super().__init__(lam)
        self.gamma = real_param(self.name, "gamma", gamma, self.PARAM_HELP["gamma"],
                                lambda v: v > 1.0)

    def value(self, x: Tensor) -> Tensor:
        ax = check_tensor(self.name, x).abs()
        inner = self.lam * ax - ax.square() / (2.0 * self.gamma)
        return torch.where(ax <= self.gamma * self.lam, inner,
                           torch.full_like(ax, 0.5 * self.gamma * self.lam**2))

    def grad(self, x: Tensor) -> Tensor:
        ax = check_tensor(self.name, x).abs()
        inner = x.sign() * (self.lam - ax / self.gamma)
        return torch.where(ax <= self.gamma * self.lam, inner, torch.zeros_like(x))

    def _threshold(self, step: float) -> float:
        if step < self.gamma:
            return step * self.lam
        return math.sqrt(step * self.gamma) * self.lam

    def _prox(self, y: Tensor, step: float) -> Tensor:
        tau = self._threshold(step)
        ay = y.abs()
        if step >= self.gamma:
            return keep_above(y.clone(), ay, tau)
        firm = (ay - tau) / (1.0 - step / self.gamma)
        x = torch.where(ay > self.gamma * self.lam, y, torch.copysign(firm, y))
        return keep_above(x, ay, tau)


class SCAD(Penalty):
    """Smoothly clipped absolute deviation with ``a > 2`` (default 3.7, Fan & Li's choice).

    ``lam |x|`` up to ``lam``, a quadratic blend up to ``a lam``, constant ``lam^2 (a+1)/2``
    beyond. The prox evaluates every piece's minimiser and the breakpoints and keeps the best,
    which is exact for any step (the objective is nonconvex once ``step > a - 1``).
    """

    name = "scad"
    PARAM_NAMES, PARAM_HELP = ("a",), {"a": "> 2"}

    def __init__(self, lam: float, *, a: float = 3.7) -> None:
        super().__init__(lam)
        self.a = real_param(self.name, "a", a, self.PARAM_HELP["a"], lambda v: v > 2.0)

    def value(self, x: Tensor) -> Tensor:
        ax = check_tensor(self.name, x).abs()
        lam, a = self.lam, self.a
        middle = (2.0 * a * lam * ax - ax.square() - lam**2) / (2.0 * (a - 1.0))
        outer = torch.full_like(ax, 0.5 * lam**2 * (a + 1.0))
        return torch.where(ax <= lam, lam * ax, torch.where(ax <= a * lam, middle, outer))

    def grad(self, x: Tensor) -> Tensor:
        ax = check_tensor(self.name, x).abs()
        lam, a = self.lam, self.a
        middle = (a * lam - ax) / (a - 1.0)
        g = torch.where(ax <= lam, torch.full_like(ax, lam),
                        torch.where(ax <= a * lam, middle, torch.zeros_like(ax)))
        return g * x.sign()

    def _threshold(self, step: float) -> float:
        # The largest |y| with 0 optimal is inf_{c>0} c/2 + step*value(c)/c. On (0, lam] the
        # infimum is step*lam (at c -> 0); on [lam, a lam] the function is concave, so only the
        # end points matter; on [a lam, inf) it is minimised at lam*sqrt(step (a+1)) if that
        # lies in the piece, else at a lam.
        lam, a = self.lam, self.a
        if math.sqrt(step * (a + 1.0)) >= a:
            outer = lam * math.sqrt(step * (a + 1.0))
        else:
            outer = 0.5 * a * lam + step * lam * (a + 1.0) / (2.0 * a)
        return min(step * lam, outer)

    def _prox(self, y: Tensor, step: float) -> Tensor:
        lam, a = self.lam, self.a
        tau = self._threshold(step)
        ay = y.abs()
        candidates = [
            (ay - step * lam).clamp(0.0, lam),
            torch.full_like(ay, lam),
            torch.full_like(ay, a * lam),
            ay.clamp(min=a * lam),
        ]
        if step < a - 1.0:  # middle piece strictly convex: its stationary point, clipped
            stat = ((a - 1.0) * ay - step * a * lam) / (a - 1.0 - step)
            candidates.append(stat.clamp(lam, a * lam))

        def objective(c: Tensor) -> Tensor:
            f = 0.5 * (c - ay).square() + step * self.value(c)
            # |y| > tau means 0 is not optimal; never let rounding pick a zero candidate.
            return torch.where(c > 0, f, torch.full_like(f, math.inf))

        x = best_of(candidates, objective)
        return keep_above(torch.copysign(x, y), ay, tau)


# The one list of penalties: everything else reads names and defaults from it (penalty_registry)
PENALTIES: dict[str, type[Penalty]] = {cls.name: cls for cls in (L1, Lp, TL1, MCP, SCAD)}


def make_penalty(name: str, lam: float, **params: Any) -> Penalty:
    """The penalty registered as ``name`` (case-insensitive) with strength ``lam``.

    ``make_penalty(p.name, **p.params())`` rebuilds ``p``. Unknown names or parameters raise
    ValueError listing what is accepted.
    """
    key = str(name).strip().lower()
    cls = PENALTIES.get(key)
    if cls is None:
        known = ", ".join(sorted(PENALTIES))
        close = difflib.get_close_matches(key, list(PENALTIES), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown penalty {name!r}; known penalties: {known}{hint}")
    unknown = sorted(set(params) - set(cls.PARAM_NAMES))
    if unknown:
        accepted = ", ".join(("lam", *cls.PARAM_NAMES))
        raise ValueError(f"{cls.name}: unknown parameter(s) {', '.join(unknown)}; "
                         f"accepted parameters: {accepted}")
    return cls(lam, **params)
