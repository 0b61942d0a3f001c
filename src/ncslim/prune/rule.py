"""The prune rule as one value: what goes (a ratio, a threshold, or a FLOPs or parameter budget)
and how every layer is held while it goes (the floor, the cap, rounding, the ranking,
compensation).

    rule = PruneRule("target_flops", 0.4, min_channels=2)
    small, report = rule.cut(model)            # the pruned network and what was removed
    rule.label()                               # "target-flops 0.4"
    rule.check_reachable(model)                # a ValueError naming the closest reachable value

A configuration builds it once (``Config.prune_rule()``); the cut, the dry run, the lambda
controller's aim, passes, sweeps, baselines, reports and the Lightning callback read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .budget import MEASURES, prune_to_budget, sizes
from .cut import prune_model
from .report import PruneReport
from .selection import DEFAULT_MIN_CHANNELS, DEFAULT_RANKING, check_rule, resolve_ranking

KINDS = ("threshold", "target_flops", "target_params", "ratio")  # in order of precedence
VALUES: dict[str, tuple[Callable[[float], bool], str]] = {  # the values each kind accepts
    "threshold": (lambda v: v >= 0, "a finite number >= 0"),
    "target_flops": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "target_params": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
}
ALMOST_ALL = 1.0 - 1e-9  # a ratio that removes all but what the layers' floors keep


@dataclass(frozen=True)
class PruneRule:
    """``kind`` (one of :data:`KINDS`) at ``value``, with the options every pruning shares."""

    kind: str
    value: float
    min_channels: int = DEFAULT_MIN_CHANNELS
    round_to: int = 1
    max_layer_ratio: float | None = None
    ranking: str = DEFAULT_RANKING  # as given: "auto" resolves by the rule's measure
    compensate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a prune rule is one of {', '.join(KINDS)}, got {self.kind!r}")
        within, allowed = VALUES[self.kind]
        value = self.value
        if isinstance(value, bool) or not (isinstance(value, (int, float))
                                           and math.isfinite(value) and within(value)):
            raise ValueError(f"{self.kind} must be {allowed}, got {value!r}")
        threshold = self.value if self.kind == "threshold" else None
        ratio = None if threshold is not None else self.value if self.kind == "ratio" else 0.0
        check_rule(ratio, threshold, self.min_channels, self.round_to, self.max_layer_ratio,
                   self.applied_ranking)

    @property
    def measure(self) -> str | None:
        """``"flops"`` or ``"params"`` for a budget; None for a ratio or a threshold."""
        return self.kind.removeprefix("target_") if self.kind.startswith("target_") else None

    @property
    def budget(self) -> tuple[str, float] | None:
        """(measure, fraction kept), e.g. ("flops", 0.4); None for a ratio or a threshold."""
        return None if self.measure is None else (self.measure, self.value)

    @property
    def applied_ranking(self) -> str:
        """The ranking that applies (``auto``: ``layer`` for a FLOPs budget, else ``global``)."""
        return resolve_ranking(self.ranking, self.measure)

    @property
    def flag(self) -> str:
        """The command-line flag that states this rule: ``--target-flops``."""
        return "--" + self.kind.replace("_", "-")

    def label(self, spec: str = "g") -> str:
        """How reports and dry runs name the rule: "ratio 0.7", "target-flops 0.4" (the value
        formatted by ``spec``)."""
        return f"{self.kind.replace('_', '-')} {self.value:{spec}}"

    def as_dict(self) -> dict[str, float]:
        """``{kind: value}``, as run records store the rule."""
        return {self.kind: self.value}

    def with_ratio(self, ratio: float) -> PruneRule:
        """The same options, pruning ``ratio`` of the channels."""
        return replace(self, kind="ratio", value=ratio)

    def options(self) -> dict[str, Any]:
        """The selection options every pruning by this rule shares (no compensation)."""
        return {"min_channels": self.min_channels, "round_to": self.round_to,
                "max_layer_ratio": self.max_layer_ratio, "ranking": self.applied_ranking}

    def cut(self, model: nn.Module, *, scores: dict[str, torch.Tensor] | None = None,
            ranked: bool = False, compensate: bool | None = None,
            **extra: Any) -> tuple[nn.Module, PruneReport]:
        """The pruned network and its report. ``scores`` rank instead of |gamma| (``ranked``:
        they are ranked across layers already, e.g. cost-weighted); ``compensate`` overrides
        the rule's; ``extra`` goes to :func:`~ncslim.prune.cut.prune_model`
        (``example_inputs``, ``ignored_layers``)."""
        options = {**self.options(), **extra, "scores": scores,
                   "compensate": self.compensate if compensate is None else compensate}
        if ranked:
            options["ranking"] = "global"
        if self.budget is not None:
            return prune_to_budget(model, self.value, self.measure, **options)
        return prune_model(model, **{self.kind: self.value}, **options)

    def floor_hint(self) -> str:
        """What holds channels in every layer, as flags: "with each layer held by
        --min-channels 2"."""
        held = [f"--min-channels {self.min_channels}"]
        if self.max_layer_ratio is not None:
            held.append(f"--max-layer-ratio {self.max_layer_ratio:g}")
        if self.round_to > 1:
            held.append(f"--round-to {self.round_to}")
        return "with each layer held by " + " and ".join(held)

    def check_reachable(self, model: nn.Module) -> None:
        """Refuse a target the network cannot reach with the layers' floors: a ValueError in
        one line naming the closest value it can reach. A threshold names no target."""
        if self.kind == "threshold":
            return
        report = prune_model(model, ratio=ALMOST_ALL, **self.options())[1]
        if self.budget is None:
            most, channels = report.removed_fraction, sum(la.total for la in report.layers)
            if self.value > most + 1e-9:
                raise ValueError(f"--ratio {self.value:g} cannot be reached: "
                                 f"{self.floor_hint()}, at most {most:.1%} of the {channels:,} "
                                 f"channels can go; use --ratio "
                                 f"{math.floor(most * 1000) / 1000:g} or less")
            return
        after, before = sizes(report, self.measure)
        if after > self.value * before:
            least = math.ceil(after / before * 1000) / 1000
            raise ValueError(f"{self.flag} {self.value:g} cannot be reached: "
                             f"{self.floor_hint()}, the network keeps at least "
                             f"{after / before:.1%} of its {MEASURES[self.measure][0]}; use "
                             f"{self.flag} {least:g} or more")

