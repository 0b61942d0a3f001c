"""``ncslim report``: the figures of a single run, and no comparison with fewer than two points."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fashion

from ncslim.cli import main
from ncslim.config import Config
from ncslim.report import report as make_report
from ncslim.report.rundata import channel_bars, gamma_histogram, run_curves

PNG = b"\x89PNG\r\n\x1a\n"
RUN_FILES = {"curves": "run_training_curves.png", "gamma": "run_gamma_histogram.png",
             "channels": "run_channels_kept.png"}
COMPARISONS = ("gamma_distribution.png", "accuracy_after_pruning.png", "frontier_params.png",
               "frontier_flops.png", "training_curves.png")
# network order, which sorting the names would break (features.12 < features.5)
CHANNELS = [("features.1", 3, 4), ("features.5", 5, 8), ("features.12", 2, 16),
            ("features.16", 30, 32)]
GAMMAS = [0.0, 0.0, 2e-6, 3e-4, 0.02, 0.05, 0.3, 0.5, 0.8, 1.2]


def write_metrics(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def epoch(n: int, acc: float, loss: float, **extra: float) -> dict:
    return {"epoch": n, "lr": 0.1, "train_loss": loss, "train_acc": acc + 0.05, "test_acc": acc,
            "test_loss": loss + 0.1, "gamma_below_1e-2": 0.1 * n, "gamma_below_1e-3": 0.05 * n,
            **extra}


def make_run(run_dir: Path, seed: int = 0, ratio: float = 0.5, train_dir: Path | None = None,
             penalty: str = "l1") -> Path:
    """A run directory as ``ncslim run`` leaves it (no model files), written by hand."""
    config = Config(penalty=penalty, lam=1e-3, ratio=ratio, seed=seed).to_dict()
    results = {
        "config": config,
        "accuracy": {"sparse": 0.8, "pruned": 0.3 + ratio / 10, "finetuned": 0.78},
        "params": {"original": 1000, "pruned": 400, "removed": 0.6 - ratio / 10},
        "flops": {"original": 5000, "pruned": 2500, "removed": 0.5 - ratio / 10},
        "latency": {"cpu": {"batch_1": {"original_ms": 1.0, "pruned_ms": 0.8, "speedup": 1.25}}},
        "prune": {"threshold": 0.05, "ratio": ratio, "removed_fraction": ratio},
        "channels": [{"layer": n, "kept": k, "total": t} for n, k, t in CHANNELS],
        "gamma": {"gamma_hist": {"edges": [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0],
                                 "counts": [2, 1, 0, 1, 0, 2, 3, 1, 0]}},
        "gamma_values": GAMMAS,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    write_metrics((train_dir or run_dir) / "train" / "metrics.jsonl",
                  [epoch(n, acc, loss, penalty=pen, lam=1e-3)
                   for n, acc, loss, pen in ((1, 0.5, 1.5, 0.9), (2, 0.7, 1.0, 0.5),
                                             (3, 0.8, 0.7, 0.3))])
    write_metrics(run_dir / "finetune" / "metrics.jsonl", [epoch(1, 0.7, 0.9), epoch(2, 0.78, 0.8)])
    return run_dir


def test_single_run_report_draws_the_run_and_no_single_dot(tmp_path):
    make_run(tmp_path / "runs" / "one")
    files = make_report(tmp_path / "runs", tmp_path / "report")
    assert set(files) == {"csv", "markdown", *RUN_FILES}
    for key, name in RUN_FILES.items():
        assert files[key] == tmp_path / "report" / name
        assert files[key].read_bytes()[:8] == PNG and files[key].stat().st_size > 10_000
    assert not any((tmp_path / "report" / name).exists() for name in COMPARISONS)


def test_run_curves_put_both_stages_on_one_epoch_axis(tmp_path):
    run = make_run(tmp_path / "one")
    with (run / "train" / "metrics.jsonl").open("a") as f:  # epoch 3 again, as after a resume
        f.write(json.dumps(epoch(3, 0.82, 0.6, penalty=0.25)) + "\n")
    curves = run_curves(run, json.loads((run / "results.json").read_text()))
    assert curves.boundary == 3 and curves.acc_pruned == pytest.approx(0.35)
    assert curves.series("test_acc", "train") == ([1, 2, 3], [0.5, 0.7, 0.82])
    assert curves.series("test_acc", "finetune") == ([4, 5], [0.7, 0.78])
    assert curves.series("penalty", "finetune") == ([], [])
    assert curves.series("lam", "train") == ([1, 2], [1e-3, 1e-3])  # absent in the resumed line
    assert curves.has("lam") and not curves.has("no-such-metric")


def test_sweep_run_reads_the_shared_training_one_level_up(tmp_path):
    run = make_run(tmp_path / "l1_s0" / "ratio-0.5", train_dir=tmp_path / "l1_s0")
    assert not (run / "train").exists()
    assert run_curves(run).series("train_loss", "train") == ([1, 2, 3], [1.5, 1.0, 0.7])


def test_channel_bars_are_the_results_in_network_order(tmp_path):
    results = json.loads((make_run(tmp_path / "one") / "results.json").read_text())
    names, kept, total = channel_bars(results)
    assert names == ["features.1", "features.5", "features.12", "features.16"]
    assert kept == [3, 5, 2, 30] and total == [4, 8, 16, 32]


def test_gamma_histogram_is_log_spaced_with_the_pruning_cut(tmp_path):
    results = json.loads((make_run(tmp_path / "one") / "results.json").read_text())
    hist = gamma_histogram(results)
    edges = np.array(hist["edges"])
    assert hist["exact"] and hist["zeros"] == 2 and sum(hist["counts"]) == len(GAMMAS) - 2
    assert np.allclose(edges[1:] / edges[:-1], edges[1] / edges[0])  # equal steps in log
    assert edges[0] <= 2e-6 and edges[-1] >= 1.2
    for value in GAMMAS[2:]:  # every nonzero |gamma| in the bin around it
        assert hist["counts"][np.searchsorted(edges, value, side="right") - 1] >= 1
    assert hist["cut"] == 0.05 and edges[0] < hist["cut"] < edges[-1]

    vcp = {**results, "config": {**results["config"], "penalty": "vcp"}}
    assert gamma_histogram(vcp)["cut"] is None  # VCP's threshold is on its own scores
    nothing = {**results, "prune": {**results["prune"], "threshold": 0.0}}
    assert gamma_histogram(nothing)["cut"] is None


def test_gamma_histogram_falls_back_to_the_stored_decades(tmp_path):
    results = json.loads((make_run(tmp_path / "one") / "results.json").read_text())
    del results["gamma_values"]
    hist = gamma_histogram(results)
    assert not hist["exact"] and hist["zeros"] == 2 and hist["floor"] == 1e-6
    assert hist["edges"] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
    assert hist["counts"] == [1, 0, 1, 0, 2, 3, 1, 0]
    del results["gamma"]
    assert gamma_histogram(results) is None


@pytest.mark.parametrize(("remove", "expected"), [
    ("finetune", set(RUN_FILES)),
    ("gamma_values", set(RUN_FILES)),
    ("gamma", {"curves", "channels"}),
    ("train", set(RUN_FILES)),
    ("all metrics", {"gamma", "channels"}),
])
def test_a_run_with_missing_parts_still_reports(tmp_path, remove, expected):
    run = make_run(tmp_path / "runs" / "one")
    results = json.loads((run / "results.json").read_text())
    if remove in ("gamma_values", "gamma"):
        results.pop("gamma_values")
    if remove == "gamma":
        results.pop("gamma")
    (run / "results.json").write_text(json.dumps(results))
    for stage in {"finetune": ["finetune"], "train": ["train"],
                  "all metrics": ["train", "finetune"]}.get(remove, []):
        shutil.rmtree(run / stage)
    files = make_report(tmp_path / "runs", tmp_path / "report")
    assert set(files) - {"csv", "markdown"} == expected
    assert all(files[key].read_bytes()[:8] == PNG for key in expected)


def test_several_runs_skip_a_comparison_with_one_point(tmp_path):
    for seed in (0, 1):  # one setting, one ratio: accuracy against the ratio is a single point
        make_run(tmp_path / "seeds" / f"s{seed}", seed=seed)
    files = make_report(tmp_path / "seeds", tmp_path / "seeds-report")
    assert set(files) == {"csv", "markdown", "gamma", "params", "flops", "curves"}
    assert not (tmp_path / "seeds-report" / "accuracy_after_pruning.png").exists()

    for ratio in (0.3, 0.6):
        make_run(tmp_path / "ratios" / f"r{ratio}", ratio=ratio)
    files = make_report(tmp_path / "ratios", tmp_path / "ratios-report")
    assert set(files) == {"csv", "markdown", "gamma", "pruned", "params", "flops", "curves"}
    assert not (tmp_path / "ratios-report" / RUN_FILES["channels"]).exists()


def test_report_of_a_real_tiny_run(tmp_path, monkeypatch, capsys):
    write_fashion(tmp_path / "data" / "fashion-mnist", monkeypatch)
    run = tmp_path / "run"
    assert main(["run", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"),
                 "--arch", "vgg", "--depth", "11", "--width", "0.0625", "--batch-size", "32",
                 "--epochs", "2", "--finetune-epochs", "1", "--device", "cpu",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    printed = {Path(line.split()[-1]).name for line in capsys.readouterr().out.splitlines()}
    assert printed == {"results.csv", "summary.md", *RUN_FILES.values()}
    results = json.loads((run / "results.json").read_text())
    curves = run_curves(run, results)
    assert curves.boundary == 2 and curves.series("test_acc", "finetune")[0] == [3]
    assert curves.series("test_acc", "finetune")[1] == [results["accuracy"]["finetuned"]]
    assert sum(channel_bars(results)[2]) == len(results["gamma_values"])
    hist = gamma_histogram(results)
    assert sum(hist["counts"]) + hist["zeros"] == len(results["gamma_values"])


def test_the_summary_names_how_each_run_was_pruned(tmp_path):
    from ncslim.report import collect, summary_table

    make_run(tmp_path / "runs" / "by-ratio", ratio=0.5)
    for name, key, value in (("by-threshold", "threshold", 0.01),
                             ("by-flops", "target_flops", 0.4)):
        run = make_run(tmp_path / "runs" / name, ratio=0.5)
        results = json.loads((run / "results.json").read_text())
        results["prune"]["ratio"] = None
        results["config"][key] = value
        (run / "results.json").write_text(json.dumps(results))
    table = summary_table(collect(tmp_path / "runs"))
    rules = [line.split(" | ")[2] for line in table.splitlines()[2:]]
    assert sorted(rules) == ["0.5", "FLOPs <= 0.4", "|gamma| <= 0.01"]
    assert "VCP rule" not in table


def test_the_summary_keeps_the_two_rankings_apart(tmp_path):
    from ncslim.report import collect, summary_table

    make_run(tmp_path / "runs" / "global", ratio=0.7)  # a record from before the ranking
    run = make_run(tmp_path / "runs" / "layer", ratio=0.7)
    results = json.loads((run / "results.json").read_text())
    results["prune"]["ranking"] = "layer"
    (run / "results.json").write_text(json.dumps(results))
    table = summary_table(collect(tmp_path / "runs"))
    assert sorted(line.split(" | ")[2] for line in table.splitlines()[2:]) == [
        "0.7", "0.7 by layer"]


def test_a_report_killed_while_writing_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        make_run(runs / f"l1_s{seed}", seed=seed)
    out = tmp_path / "report"
    files = make_report(runs, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert set(before) == {path.name for path in files.values()}

    from matplotlib.figure import Figure

    real = Figure.savefig
    drawn: list[str] = []

    def killed_halfway(fig, target, *args, **kwargs):  # the second figure dies mid-write
        if drawn:
            Path(target).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt
        drawn.append(str(target))
        return real(fig, target, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", killed_halfway)
    make_run(runs / "l1_s2", seed=2)
    with pytest.raises(KeyboardInterrupt):
        make_report(runs, out)
    after = {path.name: path.read_bytes() for path in out.iterdir()}
    assert set(after) == set(before)  # no temporary file left
    pngs = [name for name in after if name.endswith(".png")]
    assert all(after[name].startswith(PNG) and after[name].endswith(b"IEND\xaeB`\x82")
               for name in pngs)  # every figure whole: the old one, or the one drawn in full
    assert sum(after[name] != before[name] for name in pngs) <= 1
    assert len(after["results.csv"].decode().splitlines()) == 1 + 3  # the new table, whole
