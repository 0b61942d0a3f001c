"""benchmarks/fair_comparison.py: how a peer's point is matched along ncslim's frontier."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "fair_comparison.py"
spec = importlib.util.spec_from_file_location("fair_comparison", PATH)
fair = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fair)

POINTS = [(60.0, 90.0), (80.0, 88.0), (95.0, 84.0)]


@pytest.mark.parametrize("x, expected", [
    (40.0, 90.0),     # below the first point: the first removes more at that accuracy
    (60.0, 90.0),
    (70.0, 89.0),     # linear between 60 and 80
    (87.5, 86.0),     # linear between 80 and 95
    (95.0, 84.0),
    (95.0 + fair.TOLERANCE, 84.0),
    (95.0 + fair.TOLERANCE + 0.01, None),  # never extrapolated past the tolerance
])
def test_interpolated(x, expected):
    got = fair.interpolated(list(reversed(POINTS)), x)
    assert got == pytest.approx(expected) if expected is not None else got is None


def group(final, params, flops):
    return {"seeds": 3, "sparse": final, "pruned": final, "final": final, "final_std": 0.1,
            **{f"{f}_std": 0.0 for f in ("sparse", "pruned", "params_removed",
                                            "flops_removed")},
            "params_removed": params, "flops_removed": flops}


def test_frontier_matches_each_peer_point_and_says_where_nothing_reaches():
    groups = {("l1 proximal", "ratio 0.5"): group(89.0, 70.0, 50.0),
              ("l1 proximal", "ratio 0.7"): group(87.0, 90.0, 70.0),
              ("tl1 proximal", "ratio 0.5"): group(88.0, 70.0, 50.0),
              (fair.NONE, "ratio 0.5"): group(88.5, 80.0, 55.0),
              (fair.NONE, "ratio 0.85"): group(80.0, 97.0, 90.0)}
    rows = fair.frontier(groups, fair.NONE, "params_removed")[2:]
    assert rows[0] == ("| ratio 0.5 | 80.0 | 88.50 ± 0.10 | l1 proximal | 88.00 | -0.50 "
                       "| 1 |")  # tl1's one point (70 %) reaches 71 % at most
    assert "no setting reaches it" in rows[1]
    assert fair.tp_envelope(groups) == {}


def test_torch_pruning_is_shown_at_its_best_reg_per_target():
    groups = {(f"{fair.TP} reg 0.001", "ratio 0.5"): group(89.4, 75.0, 72.0),
              (f"{fair.TP} reg 0.0001", "ratio 0.5"): group(86.9, 74.4, 74.6),
              (f"{fair.TP} reg 0.0001", "ratio 0.85"): group(82.2, 98.0, 95.3)}
    envelope = fair.tp_envelope(groups)
    assert sorted(envelope) == [(fair.TP_BEST, "ratio 0.5 (reg 0.001)"),
                                (fair.TP_BEST, "ratio 0.85 (reg 0.0001)")]
    assert envelope[fair.TP_BEST, "ratio 0.5 (reg 0.001)"]["final"] == 89.4
