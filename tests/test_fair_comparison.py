"""benchmarks/fair_comparison.py: how a peer's point is matched along ncslim's frontier."""

import importlib.util
import json
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


def test_layer_widths_set_each_peer_point_beside_the_nearest_setting_in_flops():
    groups = {("l1 proximal", "flops 0.28"): {**group(88.8, 86.0, 72.0), "kept": [7, 6, 64]},
              ("lp proximal", "ratio 0.5"): {**group(89.5, 79.0, 66.0), "kept": [6, 6, 60]},
              ("l1 proximal", "ratio 0.9"): group(80.0, 99.0, 96.0),  # no widths: skipped
              (fair.TP_BEST, "ratio 0.5 (reg 0.001)"): {**group(88.9, 75.0, 72.5),
                                                         "kept": [4, 5, 28]}}
    rows = fair.layer_widths(groups, fair.TP_BEST)[2:]
    assert rows == [
        f"| {fair.TP_BEST} ratio 0.5 (reg 0.001) | 72.5 | 75.0 | 88.90 ± 0.10 | 4 5 28 |",
        "| l1 proximal flops 0.28 | 72.0 | 86.0 | 88.80 ± 0.10 | 7 6 64 |"]


def test_widths_are_averaged_over_seeds(tmp_path):
    for seed, kept in ((0, [4, 10]), (1, [6, 11])):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps({
            "config": {"penalty": "l1", "mode": "proximal", "lam": "auto", "seed": seed,
                       "target_flops": 0.3},
            "accuracy": {"sparse": 0.9, "pruned": 0.9, "finetuned": 0.9},
            "params": {"removed": 0.8}, "flops": {"removed": 0.7},
            "prune": {"ratio": 0.6},
            "channels": [{"layer": "a", "kept": kept[0], "total": 8},
                         {"layer": "b", "kept": kept[1], "total": 16}]}))
    groups = fair.grouped(fair.load([str(tmp_path)]))
    assert groups["l1 proximal", "flops 0.3"]["kept"] == [5, 10.5]
