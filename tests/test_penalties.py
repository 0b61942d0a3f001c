"""Tests for ncslim.sparsity.penalties: every prox against brute-force minimisation, gradients
against autograd, thresholds, symmetry, dtypes and parameter validation.

Every generic test runs on each penalty in ``PENALTIES`` with the values of its line in
``TABLE``: a new penalty is its class, its entry in ``PENALTIES`` and one line here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ncslim.sparsity.penalties import L1, MCP, PENALTIES, SCAD, TL1, Lp, Penalty, make_penalty
from ncslim.sparsity.penalty_registry import param_defaults

F64 = torch.float64


@dataclass(frozen=True)
class Case:
    """What the generic tests need to know about one penalty: its line in ``TABLE``."""

    params: tuple[dict[str, float], ...] = ({},)  # checked against brute force, autograd, ...
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # for random draws
    bad: dict[str, float] = field(default_factory=dict)  # an invalid value of each parameter
    kinks: Callable[[Penalty], list[float]] = lambda pen: []  # |x| > 0 where value has a kink
    steps: Callable[[Penalty], list[float]] = lambda pen: []  # steps where the prox switches


def each(pname: str, *values: float) -> tuple[dict[str, float], ...]:
    return tuple({pname: v} for v in values)


# One line per registered penalty, with the parameter values the paper's variants span and the
# steps that switch tl1 (either side of step * lam = a^2 / (2 (a + 1))), mcp (firm, boundary,
# hard thresholding) and scad between their regimes.
TABLE: dict[str, Case] = {
    "l1": Case(),
    "lp": Case(each("p", 0.1, 0.3, 0.5, 0.75, 0.9), {"p": (0.05, 0.95)}, {"p": 1.0}),
    "tl1": Case(each("a", 0.1, 1.0, 10.0), {"a": (0.05, 20.0)}, {"a": 0.0}, steps=lambda pen: [
        s * pen.a * pen.a / (2.0 * (pen.a + 1.0)) / pen.lam for s in (0.5, 1.0, 3.0)]),
    "mcp": Case(each("gamma", 1.5, 3.0, 10.0), {"gamma": (1.05, 20.0)}, {"gamma": 1.0},
                kinks=lambda pen: [pen.gamma * pen.lam],
                steps=lambda pen: [0.7 * pen.gamma, pen.gamma, 2.0 * pen.gamma]),
    "scad": Case(each("a", 2.5, 3.7, 10.0), {"a": (2.05, 20.0)}, {"a": 2.0},
                 kinks=lambda pen: [pen.lam, pen.a * pen.lam], steps=lambda pen: [
                     0.5 * (pen.a - 1.0), pen.a - 1.0, 1.5 * (pen.a - 1.0),
                     pen.a * pen.a / (pen.a - 1.0) + 1.0, 30.0]),
}


def case(name: str) -> Case:
    """The penalty's line (defaults only where it has none: test_every_penalty_has_its_line)."""
    return TABLE.get(name, Case())


CASES = [(name, kw) for name in PENALTIES for kw in case(name).params]
CASE_IDS = [name + "".join(f"-{k}{v}" for k, v in kw.items()) for name, kw in CASES]
LAMS = (1.0, 0.03)


def steps_for(name: str, kw: dict[str, float], lam: float = 1.0) -> list[float]:
    """Step sizes: generic ones plus those where the penalty's prox changes regime."""
    return [0.05, 0.5, 1.0, 4.0, *case(name).steps(make_penalty(name, lam, **kw))]


def kinks(pen: Penalty) -> list[float]:
    """|x| where ``value`` is not differentiable: 0 and the table's kinks."""
    return [0.0, *case(pen.name).kinks(pen)]


def breakpoints(pen: Penalty, step: float) -> list[float]:
    """|y| values where the prox changes formula (besides the threshold): each kink k and the
    y that the prox maps to it, k + step * value'(k)."""
    points: list[float] = []
    for k in kinks(pen)[1:]:
        slope = float(pen.grad(torch.tensor(k, dtype=F64)))
        points += [p for p in (k, k + step * slope) if p not in points]
    return points


def probe_points(pen: Penalty, step: float, seed: int) -> torch.Tensor:
    """Signed y values: around the threshold, around breakpoints, and random."""
    gen = torch.Generator().manual_seed(seed)
    tau = pen.threshold(step)
    near = torch.tensor([0.0, 0.3, 0.9, 1.0 - 1e-7, 1.0, 1.0 + 1e-7, 1.0 + 1e-4, 1.01, 1.1,
                         1.5, 2.0, 3.0, 6.0, 20.0], dtype=F64) * tau
    brk = torch.tensor(breakpoints(pen, step), dtype=F64)
    brk = (brk[:, None] * torch.tensor([0.97, 1.0, 1.03], dtype=F64)).flatten()
    scale = max([tau, *breakpoints(pen, step)])
    rand = torch.rand(24, generator=gen, dtype=F64) * 4.0 * scale
    y = torch.cat([near, brk, rand])
    signs = torch.randint(0, 2, y.shape, generator=gen).to(F64) * 2.0 - 1.0
    return y * signs


def objective(pen: Penalty, x: torch.Tensor, y: torch.Tensor, step: float) -> torch.Tensor:
    return 0.5 * (x - y).square() + step * pen.value(x)


def brute_force(pen: Penalty, y: torch.Tensor, step: float, n: int = 4001, levels: int = 3):
    """Grid minimisation of the prox objective for each y (float64), refined locally.

    Returns the best x found, its objective, a tolerance for the argmin (how far from it the
    objective stays within rounding noise of the best, plus the final spacing) and whether the
    minimiser is unique: the coarse grid's second-best local minimum is clearly worse than the
    best (by more than the coarse grid's error).
    """
    ay = y.abs()[:, None]
    half = ay * 1.1 + 1e-3 * (1.0 + ay)
    grid = half * torch.linspace(-1.0, 1.0, n, dtype=F64)
    grid[:, n // 2] = 0.0  # the kink at 0 exactly on the grid
    f = objective(pen, grid, y[:, None], step)
    local_min = (f[:, 1:-1] <= f[:, :-2]) & (f[:, 1:-1] <= f[:, 2:])
    minima = torch.where(local_min, f[:, 1:-1], torch.full_like(f[:, 1:-1], math.inf))
    second = minima.topk(2, dim=1, largest=False).values[:, 1]
    fb, idx = f.min(dim=1, keepdim=True)
    xb = grid.gather(1, idx)
    h = 2.0 * half / (n - 1)
    seen = [(grid, f)]
    for _ in range(levels):
        fine = xb + 2.0 * h * torch.linspace(-1.0, 1.0, 401, dtype=F64)
        ff = objective(pen, fine, y[:, None], step)
        seen.append((fine, ff))
        fmin, j = ff.min(dim=1, keepdim=True)
        better = fmin < fb
        xb = torch.where(better, fine.gather(1, j), xb)
        fb = torch.where(better, fmin, fb)
        h = 4.0 * h / 400
    # Every evaluated point within rounding noise of the best is an equally good argmin.
    noise = 1e-12 * y.square()[:, None]
    xtol = 2.0 * h[:, 0]
    for pts, vals in seen:
        flat = torch.where(vals <= fb + noise, (pts - xb).abs(), torch.zeros_like(vals))
        xtol = torch.maximum(xtol, flat.max(dim=1).values + 2.0 * h[:, 0])
    unique = second - fb[:, 0] > 1e-5 * y.square()
    return xb[:, 0], fb[:, 0], xtol, unique


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_prox_matches_brute_force(name: str, kw: dict[str, float]) -> None:
    checked_argmin = total = 0
    for lam in LAMS:
        pen = make_penalty(name, lam, **kw)
        for k, step in enumerate(steps_for(name, kw, lam)):
            y = probe_points(pen, step, seed=k)
            ours = pen.prox(y, step)
            xb, fb, xtol, unique = brute_force(pen, y, step)
            f_ours = objective(pen, ours, y, step)
            # Brute force only ever overestimates the minimum, so this is one-sided and strict.
            worse = f_ours > fb + 1e-12 * y.square()
            assert not worse.any(), (pen, step, y[worse], ours[worse], xb[worse])
            bad = unique & ((ours - xb).abs() > xtol)
            assert not bad.any(), (pen, step, y[bad], ours[bad], xb[bad], xtol[bad])
            checked_argmin += int(unique.sum())
            total += y.numel()
    assert checked_argmin >= 0.8 * total  # the argmin check is not vacuous


def test_half_thresholding_matches_newton() -> None:
    gen = torch.Generator().manual_seed(0)
    for step in (0.01, 1.0, 7.0):
        pen = Lp(0.3, p=0.5)
        tau = pen.threshold(step)
        y = torch.cat([tau * (1.0 + torch.logspace(-9, 3, 200, dtype=F64)),
                       10 * tau * torch.randn(200, generator=gen, dtype=F64)])
        for dtype, rtol in ((F64, 1e-12), (torch.float32, 2e-6)):
            yd = y.to(dtype)
            half, newton = pen._prox_half(yd, step), pen._prox_newton(yd, step)
            torch.testing.assert_close(half, newton, rtol=rtol, atol=rtol * tau)
        assert torch.equal(pen.prox(y, step), pen._prox_half(y, step))


def test_newton_converges_for_extreme_p() -> None:
    # Residual of the stationarity equation after the fixed number of Newton steps.
    for p in (1e-3, 0.05, 0.6, 0.97, 0.999):
        for step in (1e-3, 1.0, 50.0):
            pen = Lp(0.2, p=p)
            big_l, tau = step * pen.lam, pen.threshold(step)
            y = tau * (1.0 + torch.logspace(-12, 8, 500, dtype=F64))
            x = pen.prox(y, step)
            residual = x + big_l * p * x.pow(p - 1.0) - y
            assert (residual.abs() <= 1e-14 * y).all(), (p, step)
            assert (x >= pen._beta(step) * (1 - 1e-15)).all()


def test_scad_step_one_matches_textbook() -> None:
    for a in (2.5, 3.7, 10.0):
        for lam in (1.0, 0.02):
            pen = SCAD(lam, a=a)
            y = torch.linspace(-1.2 * a * lam, 1.2 * a * lam, 2001, dtype=F64)
            ay, sg = y.abs(), y.sign()
            expected = torch.where(
                ay <= 2 * lam, sg * (ay - lam).clamp(min=0.0),
                torch.where(ay <= a * lam, ((a - 1) * y - sg * a * lam) / (a - 2), y))
            torch.testing.assert_close(pen.prox(y, 1.0), expected, rtol=1e-12, atol=1e-14)
            assert pen.threshold(1.0) == lam


def test_mcp_firm_and_hard_thresholding() -> None:
    pen = MCP(0.5, gamma=3.0)
    y = torch.linspace(-4.0, 4.0, 801, dtype=F64)
    ay, sg = y.abs(), y.sign()
    for t in (0.5, 1.0, 2.0):
        lam_t, gamma_t = t * pen.lam, pen.gamma / t
        firm = torch.where(ay <= lam_t, torch.zeros_like(y),
                           torch.where(ay <= gamma_t * lam_t,
                                       sg * (ay - lam_t) / (1 - 1 / gamma_t), y))
        torch.testing.assert_close(pen.prox(y, t), firm, rtol=1e-12, atol=1e-14)
    for t in (3.0, 5.0):  # step >= gamma: hard thresholding at sqrt(t gamma) lam
        tau = math.sqrt(t * pen.gamma) * pen.lam
        assert pen.threshold(t) == pytest.approx(tau, rel=1e-15)
        expected = torch.where(ay > tau, y, torch.zeros_like(y))
        assert torch.equal(pen.prox(y, t), expected)


def test_soft_and_tl1_reference_values() -> None:
    y = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0], dtype=F64)
    expected = torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0], dtype=F64)
    assert torch.equal(L1(0.5).prox(y, 2.0), expected)
    # tl1 with a = 1, L = 1 (the L > a^2 / (2(a+1)) branch): tau = 2 - 1/2; at |y| = 3 the
    # stationarity equation x - 3 + 2 / (1 + x)^2 = 0 holds.
    pen = TL1(1.0, a=1.0)
    assert pen.threshold(1.0) == pytest.approx(1.5, rel=1e-15)
    x = float(pen.prox(torch.tensor(3.0, dtype=F64), 1.0))
    assert x - 3.0 + 2.0 / (1.0 + x) ** 2 == pytest.approx(0.0, abs=1e-13)
    assert TL1(1.0, a=1.0).threshold(0.2) == pytest.approx(0.4, rel=1e-15)  # L (a+1) / a


def test_value_reference_and_continuity() -> None:
    x = torch.tensor([0.0, 0.5, -2.0], dtype=F64)
    torch.testing.assert_close(L1(2.0).value(x), torch.tensor([0.0, 1.0, 4.0], dtype=F64))
    torch.testing.assert_close(Lp(2.0, p=0.5).value(torch.tensor([0.0, 4.0], dtype=F64)),
                               torch.tensor([0.0, 4.0], dtype=F64))
    torch.testing.assert_close(TL1(1.0, a=1.0).value(x),
                               torch.tensor([0.0, 2 * 0.5 / 1.5, 4.0 / 3.0], dtype=F64))
    mcp = MCP(1.0, gamma=3.0)
    torch.testing.assert_close(mcp.value(torch.tensor([1.0, 3.0, 9.0], dtype=F64)),
                               torch.tensor([1.0 - 1.0 / 6.0, 1.5, 1.5], dtype=F64))
    scad = SCAD(1.0, a=3.0)
    torch.testing.assert_close(scad.value(torch.tensor([0.5, 2.0, 5.0], dtype=F64)),
                               torch.tensor([0.5, (12.0 - 4.0 - 1.0) / 4.0, 2.0], dtype=F64))
    for pen, knots in ((mcp, [3.0]), (scad, [1.0, 3.0])):
        for k in knots:
            pair = torch.tensor([k * (1 - 1e-12), k * (1 + 1e-12)], dtype=F64)
            v = pen.value(pair)
            assert float((v[1] - v[0]).abs()) < 1e-10


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_grad_matches_autograd(name: str, kw: dict[str, float]) -> None:
    gen = torch.Generator().manual_seed(3)
    for lam in LAMS:
        pen = make_penalty(name, lam, **kw)
        # Half the points inside the outermost kink (where the penalty is not flat), half wider.
        inner = 1.2 * kinks(pen)[-1] if len(kinks(pen)) > 1 else 2.0
        x = (torch.rand(400, generator=gen, dtype=F64) * 2.0 - 1.0) * torch.tensor(
            [inner, 2.0 * max(inner, 1.0)], dtype=F64).repeat(200)
        far = torch.stack([(x.abs() - k).abs() > 1e-6 for k in kinks(pen)]).all(dim=0)
        x = x[far].clone().requires_grad_(True)
        with torch.enable_grad():
            (auto,) = torch.autograd.grad(pen.value(x).sum(), x)
        with torch.no_grad():
            ours = pen.grad(x)
        torch.testing.assert_close(ours, auto, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize(("dtype", "tiny"), [(torch.float32, 1e-45), (F64, 1e-300)])
def test_grad_finite_at_zero_and_tiny(name: str, kw: dict[str, float], dtype: torch.dtype,
                                      tiny: float) -> None:
    info = torch.finfo(dtype)
    for lam in (1e-4, 1.0, 1e30):
        pen = make_penalty(name, lam, **kw)
        x = torch.tensor([0.0, tiny, -tiny, info.tiny, -info.tiny, 1e-20, 1.0], dtype=dtype)
        g = pen.grad(x)
        assert g.dtype == dtype
        assert torch.isfinite(g).all(), (pen, g)
        assert g[0] == 0.0
        assert g[1] >= 0 and g[2] == -g[1]
        if lam <= 1.0:  # value ~ lam^2 for mcp/scad: lam = 1e30 overflows float32 by design
            assert torch.isfinite(pen.value(x)).all()
    if name == "lp":  # the clamped gradient is huge but finite near 0, and still exact at 1
        g = Lp(1.0, **kw).grad(torch.tensor([tiny, 1.0], dtype=dtype))
        assert g[0] > 1e3
        assert g[1] == pytest.approx(kw["p"], rel=1e-6)


def _floor_ceil(value: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest dtype number <= value and the smallest >= value."""
    v = torch.tensor(value, dtype=dtype)
    lo = v if float(v) <= value else torch.nextafter(v, torch.tensor(-math.inf, dtype=dtype))
    hi = v if float(v) >= value else torch.nextafter(v, torch.tensor(math.inf, dtype=dtype))
    return lo, hi


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_threshold_is_exact(name: str, kw: dict[str, float], dtype: torch.dtype) -> None:
    for lam in LAMS:
        pen = make_penalty(name, lam, **kw)
        for step in steps_for(name, kw, lam):
            tau = pen.threshold(step)
            lo, hi = _floor_ceil(tau, dtype)
            inf = torch.tensor(math.inf, dtype=dtype)
            below = torch.stack([torch.zeros((), dtype=dtype), 0.5 * lo,
                                 torch.nextafter(lo, -inf), lo])
            above = torch.stack([torch.nextafter(hi, inf), hi * (1 + 1e-4), 2 * hi + 1])
            for sign in (1.0, -1.0):
                out_below = pen.prox(sign * below, step)
                out_above = pen.prox(sign * above, step)
                assert (out_below == 0).all(), (pen, step, below, out_below)
                assert (out_above != 0).all(), (pen, step, above, out_above)
                assert (out_above.sign() == sign).all()
                assert torch.isfinite(out_above).all()


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_prox_is_odd_and_keeps_dtype_shape(name: str, kw: dict[str, float]) -> None:
    pen = make_penalty(name, 0.3, **kw)
    gen = torch.Generator().manual_seed(5)
    for step in steps_for(name, kw, 0.3):
        y64 = torch.randn(3, 4, 5, generator=gen, dtype=F64) * 3.0 * pen.threshold(step)
        out64 = pen.prox(y64, step)
        for dtype in (torch.float32, F64):
            y = y64.to(dtype)
            before = y.clone()
            out = pen.prox(y, step)
            assert out.dtype == dtype and out.shape == y.shape and out.device == y.device
            assert torch.equal(y, before)  # the input is not modified
            assert torch.equal(pen.prox(-y, step), -out)
            assert out.data_ptr() != y.data_ptr()
            for fn in (pen.value, pen.grad):
                res = fn(y)
                assert res.dtype == dtype and res.shape == y.shape
        # float32 agrees with float64 away from jump points of the nonconvex penalties.
        out32 = pen.prox(y64.float(), step).double()
        near_jump = ((y64.abs() / pen.threshold(step)) - 1.0).abs() < 1e-3
        torch.testing.assert_close(out32[~near_jump], out64[~near_jump], rtol=2e-5, atol=1e-6)
    scalar = torch.tensor(5.0)
    assert pen.prox(scalar, 1.0).shape == ()


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_float32_prox_accurate_at_training_scale(name: str, kw: dict[str, float]) -> None:
    # lam = 1e-4 and lr = 0.1, as in training: float32 stays within a few ulps of |y| of the
    # float64 result on the same inputs (tl1 needs its Newton polish for this).
    pen = make_penalty(name, 1e-4, **kw)
    for step in (0.1, 0.01):
        tau = pen.threshold(step)
        y = torch.logspace(math.log10(tau) + 1e-3, 0.0, 400, dtype=torch.float32)
        y = torch.cat([y, -y])
        err = (pen.prox(y, step).double() - pen.prox(y.double(), step)).abs()
        assert (err <= 8 * torch.finfo(torch.float32).eps * y.double().abs()).all(), (
            pen, step, float((err / y.double().abs()).max()))


def test_works_under_no_grad_and_with_requires_grad_input() -> None:
    y = torch.randn(10, dtype=F64, requires_grad=True)
    for name, kw in CASES:
        pen = make_penalty(name, 0.1, **kw)
        with torch.no_grad():
            out = pen.prox(y, 0.5)
            g = pen.grad(y)
        assert not out.requires_grad and not g.requires_grad
        assert torch.equal(out, pen.prox(y.detach(), 0.5))


def test_runs_on_meta_device_without_reading_data() -> None:
    # Meta tensors carry no data: any .item(), bool(tensor) or other host read would raise, so
    # this shows every branch of every penalty is free of host syncs and device-agnostic.
    y = torch.empty(3, 4, device="meta", dtype=torch.float32)
    for name, kw in CASES:
        pen = make_penalty(name, 0.1, **kw)
        for step in (0.5, 30.0):  # with lam = 0.1 these reach every branch of every prox
            for out in (pen.prox(y, step), pen.grad(y), pen.value(y)):
                assert out.device.type == "meta" and out.shape == y.shape
                assert out.dtype == torch.float32


def test_lam_zero_is_identity() -> None:
    y = torch.randn(50, dtype=F64)
    for name, kw in CASES:
        pen = make_penalty(name, 0.0, **kw)
        assert pen.threshold(1.0) == 0.0
        assert torch.equal(pen.prox(y, 3.0), y)
        assert torch.equal(pen.value(y), torch.zeros_like(y))
        assert torch.equal(pen.grad(y), torch.zeros_like(y))


@settings(deadline=None, max_examples=60)
@given(
    case=st.sampled_from(CASES),
    lam=st.floats(1e-4, 10.0),
    step=st.floats(1e-3, 50.0),
    ys=st.lists(st.floats(-100.0, 100.0, allow_nan=False), min_size=2, max_size=20),
)
def test_prox_monotone_and_shrinks(case, lam: float, step: float, ys: list[float]) -> None:
    name, kw = case
    pen = make_penalty(name, lam, **kw)
    y = torch.tensor(sorted(ys), dtype=F64)
    x = pen.prox(y, step)
    # |prox(y)| <= |y|, same sign, and prox is nondecreasing (true of any 1-D prox).
    assert (x.abs() <= y.abs() * (1 + 1e-12)).all()
    assert (x * y >= 0).all()
    assert (x[1:] - x[:-1] >= -1e-12 * (1.0 + y[1:].abs())).all()
    # Never worse than the two trivial candidates 0 and y.
    f = objective(pen, x, y, step)
    scale = 1e-12 * (1.0 + y.square())
    assert (f <= objective(pen, torch.zeros_like(y), y, step) + scale).all()
    assert (f <= objective(pen, y, y, step) + scale).all()


@settings(deadline=None, max_examples=40)
@given(case=st.sampled_from(CASES), lam=st.floats(0.0, 1e3), step=st.floats(1e-6, 1e3))
def test_threshold_matches_prox_property(case, lam: float, step: float) -> None:
    name, kw = case
    pen = make_penalty(name, lam, **kw)
    tau = pen.threshold(step)
    assert tau >= 0.0 and math.isfinite(tau)
    y = torch.tensor([tau * 0.999, tau * 1.001 + 1e-300], dtype=F64)
    x = pen.prox(y, step)
    assert x[0] == 0 and x[1] != 0


# --- registry and validation --------------------------------------------------------------


def test_every_penalty_has_its_line_in_the_table() -> None:
    assert set(TABLE) == set(PENALTIES), "each penalty in PENALTIES needs one line in TABLE"
    for name, line in TABLE.items():
        cls = PENALTIES[name]
        names = set(cls.PARAM_NAMES)
        assert set(line.ranges) == names and set(line.bad) == names, name
        assert set(cls.PARAM_HELP) == names, name
        assert line.params and all(set(kw) <= names for kw in line.params), name
        assert set(param_defaults(cls)) == names  # each parameter has a default


@st.composite
def any_penalty(draw) -> Penalty:
    """Any penalty with any valid parameters, not just the tabulated cases."""
    name = draw(st.sampled_from(sorted(PENALTIES)))
    params = {k: draw(st.floats(lo, hi)) for k, (lo, hi) in sorted(case(name).ranges.items())}
    return make_penalty(name, draw(st.floats(1e-3, 5.0)), **params)


@settings(deadline=None, max_examples=80)
@given(pen=any_penalty(), step=st.floats(1e-2, 20.0),
       ys=st.lists(st.floats(-50.0, 50.0, allow_nan=False), min_size=1, max_size=8))
def test_prox_is_odd_a_grid_minimiser_and_zero_below_threshold(pen, step, ys) -> None:
    y = torch.tensor(ys, dtype=F64)
    x = pen.prox(y, step)
    assert torch.equal(pen.prox(-y, step), -x)  # odd, bit for bit
    # No point of a fine grid between 0 and y does better (the minimiser lies there).
    grid = y[:, None] * torch.linspace(0.0, 1.0, 2001, dtype=F64)[None, :]
    best = objective(pen, grid, y[:, None], step).min(1).values
    assert (objective(pen, x, y, step) <= best + 1e-9 * (1.0 + y.square())).all()
    tau = pen.threshold(step)
    assert (x[y.abs() < tau] == 0).all() and (x[y.abs() > tau] != 0).all()
