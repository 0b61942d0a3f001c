"""The penalty registry: every penalty in ``PENALTIES`` builds, round-trips and validates its
input, and a penalty registered by a test alone works everywhere a name is read: configuration,
command line, ``make_penalty``, sweeps and reports."""

from __future__ import annotations

import math
import re

import pytest
import torch
from test_penalties import case

from ncslim.config import Config, config_fields, field_choices, load_config
from ncslim.report.make import _penalty_label
from ncslim.run import sweep
from ncslim.sparsity.penalties import L1, MCP, PENALTIES, SCAD, TL1, Lp, Penalty, make_penalty
from ncslim.sparsity.penalty_registry import (
    param_default,
    param_defaults,
    param_help,
    param_names,
    param_unset,
    resolve_params,
    stray_params,
)


@pytest.mark.parametrize("name", PENALTIES)
def test_registry_and_roundtrip(name: str) -> None:
    cls = PENALTIES[name]
    assert cls.name == name and issubclass(cls, Penalty)
    pen = make_penalty(name, 1e-4)
    assert type(pen) is cls and pen.params() == {"lam": 1e-4, **param_defaults(cls)}
    again = make_penalty(pen.name, **pen.params())
    assert type(again) is type(pen) and again.params() == pen.params()
    assert repr(pen).startswith(type(pen).__name__ + "(lam=0.0001")
    assert type(make_penalty(f" {name.upper()} ", 0.1)) is cls


def test_the_defaults_are_the_literatures() -> None:
    assert [param_defaults(c) for c in (L1, Lp, TL1, MCP, SCAD)] == [
        {}, {"p": 0.5}, {"a": 1.0}, {"gamma": 3.0}, {"a": 3.7}]
    assert repr(make_penalty("lp", 1e-4, p=0.75)) == "Lp(lam=0.0001, p=0.75)"


@pytest.mark.parametrize("name", PENALTIES)
def test_every_penalty_rejects_bad_input(name: str) -> None:
    cls = PENALTIES[name]
    for lam in (-1.0, math.nan, math.inf, "x", True):
        with pytest.raises(ValueError, match=rf"^{cls.name}: lam must be a finite number >= 0"):
            make_penalty(name, lam)
    for pname, bad in case(name).bad.items():
        allowed = re.escape(cls.PARAM_HELP[pname])
        for value in (bad, math.nan, math.inf, True, "x"):
            with pytest.raises(ValueError, match=rf"^{cls.name}: {pname} must be {allowed}, got"):
                make_penalty(name, 1e-4, **{pname: value})
    accepted = ", ".join(("lam", *cls.PARAM_NAMES))
    with pytest.raises(ValueError, match=rf"^{cls.name}: unknown parameter\(s\) zeta; "
                                         rf"accepted parameters: {accepted}$"):
        make_penalty(name, 1e-4, zeta=1.0)
    pen = make_penalty(name, 1.0)
    for step in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=rf"^{cls.name}: step must be a finite number > 0"):
            pen.prox(torch.ones(2), step)
        with pytest.raises(ValueError, match=rf"^{cls.name}: step must be"):
            pen.threshold(step)
    with pytest.raises(TypeError, match="floating-point"):
        pen.prox(torch.ones(3, dtype=torch.int64), 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        pen.value([1.0, 2.0])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_penalty("l1", -1.0), r"l1: lam must be a finite number >= 0, got -1"),
        (lambda: make_penalty("lp", 1e-4, p=1.5), r"lp: p must be in \(0, 1\), got 1\.5"),
        (lambda: make_penalty("scad", 1e-4, a=2.0), r"scad: a must be > 2, got 2\.0"),
        (lambda: make_penalty("l2", 1e-4),
         rf"unknown penalty 'l2'; known penalties: {re.escape(', '.join(sorted(PENALTIES)))}"),
        (lambda: make_penalty("scda", 1e-4), r"did you mean 'scad'"),
        (lambda: make_penalty("l1", 1e-4, p=0.5), r"l1: unknown parameter.*p.*accepted.*lam"),
        (lambda: make_penalty("mcp", 1e-4, a=3), r"mcp: unknown.*accepted parameters: lam, gamma"),
    ],
)
def test_invalid_input_raises_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


class ScaledL1(Penalty):
    """A throw-away penalty, ``lam * a * |x|``: only the test below registers it."""

    name = "sl1"
    PARAM_NAMES, PARAM_HELP = ("a",), {"a": "> 0"}

    def __init__(self, lam: float, *, a: float = 2.0) -> None:
        super().__init__(lam)
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0:
            raise ValueError(f"{self.name}: a must be > 0, got {a!r}")
        self.a = float(a)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * L1(self.lam).value(x)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * L1(self.lam).grad(x)

    def _threshold(self, step: float) -> float:
        return step * self.lam * self.a

    def _prox(self, y: torch.Tensor, step: float) -> torch.Tensor:
        return L1(self.lam * self.a).prox(y, step)


def test_a_new_penalty_is_one_class_and_one_registry_entry(monkeypatch) -> None:
    """Configuration, command line, make_penalty, sweeps and reports take a penalty from the
    registry alone, its parameter defaults included."""
    monkeypatch.setitem(PENALTIES, "sl1", ScaledL1)
    assert "sl1" in field_choices("penalty") and "a" in param_names()
    assert "sl1: a > 0" in param_help("a") and "sl1 2" in param_unset("a")
    cfg = load_config(None, {"penalty": "sl1"})
    assert cfg.penalty_params() == {"a": 2.0}  # a None: the class's own default
    assert load_config(None, {"penalty": "sl1", "a": 5.0}).penalty_params() == {"a": 5.0}
    with pytest.raises(ValueError, match="sl1: a must be > 0, got -1"):
        load_config(None, {"penalty": "sl1", "a": -1.0})
    pen = make_penalty(cfg.penalty, cfg.lam, **cfg.penalty_params())
    assert type(pen) is ScaledL1 and pen.params() == {"lam": 1e-4, "a": 2.0}
    assert _penalty_label(cfg.to_dict()) == ("sl1", "a=2")
    runs = sweep.expand({"grid": [{"penalty": "sl1", "a": [1.0, 3.0]},
                                  {"penalty": ["l1", "sl1"], "mode": "proximal"}]})
    assert {r.name: r.config.penalty_params() for r in runs} == {
        "sl1_a1_s0": {"a": 1.0}, "sl1_a3_s0": {"a": 3.0}, "l1_proximal_s0": {},
        "sl1_proximal_s0": {"a": 2.0}}
    with pytest.raises(ValueError, match="run l1_a2_s0: a does not act on --penalty l1"):
        sweep.expand({"grid": [{"penalty": ["l1", "sl1"], "a": 2.0}]})


def test_a_config_field_named_like_a_penalty_parameter_is_that_parameters_flag() -> None:
    """``Config.penalty_params`` reads a field by the parameter's name: such a field must be the
    parameter's own (help and default from the registry; None: each penalty's own default)."""
    fields = {name: (default, meta) for name, default, meta in config_fields()}
    shared = [k for k in param_names() if k in fields]
    assert shared  # the flags --p, --a, --gamma
    for pname in shared:
        default, meta = fields[pname]
        assert default == param_default(pname) and meta["help"] == param_help(pname)
        assert meta["unset"] == param_unset(pname)
        takers = [cls for cls in PENALTIES.values() if pname in cls.PARAM_NAMES]
        assert default in (None, *(param_defaults(cls)[pname] for cls in takers))
    for name in PENALTIES:
        assert Config(penalty=name).penalty_params() == param_defaults(name)
    assert Config(penalty="none").penalty_params() == Config(penalty="vcp").penalty_params() == {}


def test_resolve_and_stray_params() -> None:
    assert resolve_params("lp", {"p": 0.75, "a": 9.0}) == {"p": 0.75}
    assert resolve_params("scad", {"a": None}) == param_defaults(SCAD)
    assert resolve_params("vcp", {"a": 3.0}) == {}
    assert stray_params("lp", ["p", "lam", "mode"]) == []
    assert stray_params("none", ["p", "lam", "colour"]) == ["p"]

    class NoDefault(L1):
        name, PARAM_NAMES = "nodefault", ("a",)

        def __init__(self, lam: float, *, a: float) -> None:
            super().__init__(lam)

    with pytest.raises(TypeError, match="NoDefault: parameter.*a need a keyword default"):
        param_defaults(NoDefault)
