"""Multi-pass slimming: the per-pass cap ``max_layer_ratio`` in the one pruning rule, the pass
targets, and ``ncslim run --passes N`` end to end (layout, results, --lam auto, resume, report,
sweep), on tiny generated Fashion-MNIST-shaped data."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import spread_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from test_report import write_fashion
from torch import nn

import ncslim
from ncslim.cli import main
from ncslim.config import Config, load_config
from ncslim.prune.selection import capped_keep, global_keep, layer_floor, select_channels
from ncslim.run import pipeline
from ncslim.run.passes import pass_config
from ncslim.run.train import Trainer
from ncslim.sparsity.controller import LambdaController
from ncslim.sparsity.regularizer import SparsityRegularizer

ARCH = ["--arch", "vgg", "--depth", "11", "--width", "0.0625"]
TINY = ["--dataset", "fashion-mnist", *ARCH, "--batch-size", "32", "--epochs", "1",
        "--device", "cpu", "--seed", "0"]


def most_removed(total: int, cap: float) -> int:
    return total - capped_keep(total, cap)


# --- the cap in the selection rule ---

@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=5),
       ratio=st.floats(0.0, 0.95), cap=st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.75, 1.0]),
       min_channels=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_no_layer_loses_more_than_the_cap_and_the_rest_follows_the_global_ranking(
        sizes, ratio, cap, min_channels, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.rand(n, generator=gen) for n in sizes]
    chosen = select_channels(scores, ratio, None, min_channels, 1, max_layer_ratio=cap)
    mask, _ = global_keep(torch.cat(scores), ratio, None)
    for n, layer, kept, ranked_in, capped, floored in zip(
            sizes, scores, chosen.keep, mask.split(sizes), chosen.capped, chosen.floored):
        assert n - kept.numel() <= most_removed(n, cap)
        assert capped == (int(ranked_in.sum()) < capped_keep(n, cap))
        if not (capped or floored):  # the global ranking alone
            assert kept.tolist() == ranked_in.nonzero().flatten().tolist()
        else:  # held back: its strongest channels, as many as the floor and the cap keep
            assert kept.numel() == layer_floor(n, min_channels, cap)
            strongest = layer.argsort(descending=True)[:kept.numel()]
            assert kept.tolist() == strongest.sort().values.tolist()
    uncapped = select_channels(scores, ratio, None, min_channels, 1)
    assert not any(uncapped.capped)
    for capped_kept, plain_kept, capped in zip(chosen.keep, uncapped.keep, chosen.capped):
        if not capped:  # the cap changes only the layers it holds
            assert torch.equal(capped_kept, plain_kept)


def test_a_cap_of_one_half_rounds_down_and_names_the_flag():
    assert [most_removed(n, 0.5) for n in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2]
    assert most_removed(100, 0.29) == 29  # not 28: 0.29 * 100 is 28.999...
    with pytest.raises(ValueError, match=r"--max-layer-ratio\) must be in \(0, 1\]"):
        select_channels([torch.rand(4)], 0.5, None, 1, 1, max_layer_ratio=0.0)


def vgg(seed: int = 0) -> ncslim.SlimmableNet:
    torch.manual_seed(seed)
    return spread_bn(ncslim.build_model("vgg", num_classes=10, in_channels=1, depth=11,
                                        width=0.125), seed)


def test_the_slot_pruner_caps_each_layer_and_reports_it(tmp_path, capsys):
    model = vgg()
    _, plain = ncslim.prune_model(model, ratio=0.8)
    small, report = ncslim.prune_model(model, ratio=0.8, max_layer_ratio=0.5)
    assert any(la.total - la.kept > most_removed(la.total, 0.5) for la in plain.layers)
    for layer in report.layers:
        assert layer.total - layer.kept <= most_removed(layer.total, 0.5)
    assert report.capped and report.removed_fraction < plain.removed_fraction
    assert "held at the max_layer_ratio cap (0.5" in str(report)
    assert report.to_dict()["capped"] == report.capped
    assert "capped" not in plain.to_dict() and "max_layer_ratio" not in plain.to_dict()
    # ncslim prune and its dry run take the flag
    path = tmp_path / "model.pt"
    ncslim.save_model(model, path)
    assert main(["prune", "--checkpoint", str(path), "--ratio", "0.8", "--max-layer-ratio", "0.5",
                 "--device", "cpu", "--dry-run"]) == 0
    assert "held at the max_layer_ratio cap" in capsys.readouterr().out
    assert main(["prune", "--checkpoint", str(path), "--ratio", "0.8", "--max-layer-ratio", "0.5",
                 "--device", "cpu", "--out", str(tmp_path / "p")]) == 0
    record = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert record["capped"] == report.capped and record["max_layer_ratio"] == 0.5
    assert ncslim.count_params(ncslim.load_model(tmp_path / "p" / "pruned.pt")) == \
        ncslim.count_params(small)


def test_a_budget_under_a_cap_still_fits_or_names_the_cap():
    model = vgg()
    _, report = ncslim.prune.prune_to_budget(model, 0.5, "params", max_layer_ratio=0.5)
    assert report.params_after <= 0.5 * report.params_before
    with pytest.raises(ValueError, match="or raise --max-layer-ratio"):
        ncslim.prune.prune_to_budget(model, 0.1, "params", max_layer_ratio=0.3)


def test_the_generic_pruner_applies_the_same_cap():
    pytest.importorskip("torch_pruning")
    from ncslim.prune.generic import prune_generic

    model = vgg()
    x = torch.zeros(1, *model.input_shape())
    _, ours = ncslim.prune_model(model, ratio=0.8, max_layer_ratio=0.5)
    _, groups, _, held = prune_generic(model, x, 0.8, None, 1, 1, max_layer_ratio=0.5)
    assert sorted((total, len(kept)) for _, kept, total in groups) == sorted(
        (la.total, la.kept) for la in ours.layers)
    assert len(held["capped"]) == len(ours.capped) and held["floored"] == []
    net = spread_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)))
    _, report = ncslim.prune_model(net, ratio=0.9, max_layer_ratio=0.25,
                                   example_inputs=torch.randn(1, 3, 8, 8))
    assert sorted((la.name, la.total, la.kept) for la in report.layers) == [
        ("0", 8, 6), ("3", 16, 12)]
    assert sorted(report.capped) == ["0", "3"]


def test_the_lambda_controller_never_aims_past_the_cap():
    model = vgg()
    reg = SparsityRegularizer(model, ncslim.make_penalty("l1", 1e-4))
    auto = LambdaController(reg, target=0.8, total_steps=10, max_layer_ratio=0.5)
    removable = sum(most_removed(n, 0.5) for n in reg.sizes) / sum(reg.sizes)
    assert auto.target_share == pytest.approx(removable) and removable < 0.8
    for aimed, n in zip(reg.mask.split(reg.sizes), reg.sizes):
        assert int(aimed.sum()) <= most_removed(n, 0.5)
    # what it aims at is what pruning at its share removes, once those channels are zeros
    with torch.no_grad():
        for gamma, aimed in zip(reg.gammas, reg.mask.split(reg.sizes)):
            gamma[aimed] = 0.0
    _, report = ncslim.prune_model(model, ratio=0.8, max_layer_ratio=0.5)
    assert report.removed_fraction == pytest.approx(removable)
    free = LambdaController(SparsityRegularizer(vgg(), ncslim.make_penalty("l1", 1e-4)),
                            target=0.5, total_steps=10)
    assert free.target_share == 0.5


# --- what each pass aims at ---

def test_each_pass_prunes_the_same_rule_and_total_splits_it_geometrically():
    each = load_config(None, {"passes": 2, "ratio": 0.5})
    assert pass_config(each, 1) is each and pass_config(each, 2, {"channels": 0.5}) is each
    total = replace(each, pass_target="total")
    first = pass_config(total, 1)
    assert first.ratio == pytest.approx(1 - math.sqrt(0.5))
    assert pass_config(total, 2, {"channels": math.sqrt(0.5)}).ratio == pytest.approx(
        1 - math.sqrt(0.5))
    assert pass_config(total, 2, {"channels": 0.6}).ratio == pytest.approx(1 - 0.5 / 0.6)
    assert pass_config(total, 2, {"channels": 0.4}).ratio == 0.0  # already past the target
    params = replace(total, target_params=0.3)
    assert pass_config(params, 1).target_params == pytest.approx(math.sqrt(0.3))
    assert pass_config(params, 2, {"params": 0.5}).target_params == pytest.approx(0.6)
    three = replace(params, passes=3)
    assert pass_config(three, 1).target_params == pytest.approx(0.3 ** (1 / 3))
    assert pass_config(three, 2, {"params": 0.6}).target_params == pytest.approx(0.5 ** 0.5)
    flops = replace(total, target_flops=0.4)
    assert pass_config(flops, 1).target_flops == pytest.approx(math.sqrt(0.4))
    single = replace(total, passes=1)
    assert pass_config(single, 1) is single


@pytest.mark.parametrize(("flags", "message"), [
    (["--passes", "0"], "--passes must be an integer in [1, 20]"),
    (["--max-layer-ratio", "1.5"], "--max-layer-ratio must be in (0, 1]"),
    (["--passes", "2", "--pass-target", "total", "--threshold", "0.01"],
     "--pass-target total splits"),
    (["--passes", "2", "--penalty", "vcp"], "--penalty vcp has no multi-pass form"),
])
def test_bad_pass_settings_are_one_line(flags, message, tmp_path, capsys):
    assert main(["run", *TINY, *flags, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "r").exists()


def test_pipeline_run_does_one_pass():
    with pytest.raises(ValueError, match="ncslim.run.passes.run runs --passes 2"):
        pipeline.run(Config(passes=2))


# --- ncslim run --passes end to end ---

@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    write_fashion(tmp_path / "data" / "fashion-mnist", monkeypatch)
    monkeypatch.setattr("ncslim.models.measure._time_one",  # timings: exact, and no waiting
                        lambda model, x: 1e-6 * ncslim.count_params(model) * x.shape[0])
    return tmp_path / "data"


def run(data_dir: Path, out: Path, *flags: str) -> dict:
    assert main(["run", *TINY, "--data-dir", str(data_dir), *flags, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def test_two_passes_write_a_folder_each_and_results_against_the_original(data_dir, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    results = run(data_dir, out, "--passes", "2", "--max-layer-ratio", "0.5", "--lam", "1e-3",
                  "--penalty", "tl1")
    for k in (1, 2):
        for name in ("train/metrics.jsonl", "train/model.pt", "pruned.pt", "finetune/last.pt",
                     "final.pt", "results.json"):
            assert (out / f"pass{k}" / name).is_file(), (k, name)
    assert not (out / "train").exists() and not (out / "pruned.pt").exists()
    one, two = (json.loads((out / f"pass{k}" / "results.json").read_text()) for k in (1, 2))
    # pass 2 trains pass 1's fine-tuned model: its architecture, its size
    assert ncslim.load_model(out / "pass2" / "train" / "model.pt").config() == \
        ncslim.load_model(out / "pass1" / "final.pt").config()
    assert two["params"]["original"] == one["params"]["pruned"]
    # the run: the final model against the original full one
    final = ncslim.load_model(out / "final.pt")
    assert ncslim.count_params(final) == results["params"]["pruned"] == two["params"]["pruned"]
    assert results["params"]["original"] == one["params"]["original"]
    assert results["params"]["removed"] == pytest.approx(
        1 - two["params"]["pruned"] / one["params"]["original"])
    assert results["flops"]["original"] == one["flops"]["original"]
    assert results["accuracy"] == {"sparse": one["accuracy"]["sparse"],
                                   "pruned": two["accuracy"]["pruned"],
                                   "finetuned": two["accuracy"]["finetuned"]}
    kept = {c["layer"]: c["kept"] for c in two["channels"]}
    totals = {c["layer"]: c["total"] for c in one["channels"]}
    assert results["channels"] == [{"layer": n, "kept": kept[n], "total": totals[n]}
                                   for n in kept]
    # each pass: its three accuracies, its model's size, its pruning report; capped layers
    assert [p["pass"] for p in results["passes"]] == [1, 2]
    for entry, own in zip(results["passes"], (one, two)):
        assert entry["accuracy"] == own["accuracy"] and entry["prune"] == own["prune"]
        assert entry["params"] == own["params"]["pruned"]
        assert entry["flops"] == own["flops"]["pruned"] and entry["rule"] == {"ratio": 0.5}
        for layer in own["channels"]:
            assert layer["total"] - layer["kept"] <= most_removed(layer["total"], 0.5)
    assert one["prune"]["capped"] and set(results["prune"]["capped"]) >= set(
        one["prune"]["capped"])
    # the table: a line per pass
    table = (out / "summary.txt").read_text()
    assert "\npass 1 " in table and "\npass 2 " in table
    assert "test accuracy after fine-tuning" not in table
    assert table in capsys.readouterr().out
    # the report: one row (the passes' own results are not rows), a passes column
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    row = summary.splitlines()[2].split(" | ")
    assert row[2:4] == ["0.5 per pass", "2"]
    assert "| . | 1 | " in summary and "| . | 2 | " in summary
    csv = (tmp_path / "report" / "results.csv").read_text().splitlines()
    assert len(csv) == 2 and csv[0].split(",")[6] == "passes" and csv[1].split(",")[6] == "2"
    assert (tmp_path / "report" / "run_training_curves.png").is_file()


def test_one_pass_is_the_run_of_before(data_dir, tmp_path):
    out = tmp_path / "run"
    results = run(data_dir, out)
    assert {p.name for p in out.iterdir()} == {"config.json", "train", "pruned.pt", "finetune",
                                               "final.pt", "results.json", "summary.txt"}
    assert "passes" not in results and "capped" not in results["prune"]
    assert "test accuracy after fine-tuning" in (out / "summary.txt").read_text()


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lam_auto_aims_each_pass_at_its_own_share_of_the_total(data_dir, tmp_path):
    out = tmp_path / "run"
    results = run(data_dir, out, "--passes", "2", "--pass-target", "total", "--lam", "auto",
                  "--penalty", "l1", "--ratio", "0.5")
    first, second = (p["rule"]["ratio"] for p in results["passes"])
    assert first == pytest.approx(1 - math.sqrt(0.5))
    one = results["passes"][0]["prune"]
    assert second == pytest.approx(1 - 0.5 / (1 - one["removed_fraction"]))  # the rest
    for k, ratio in ((1, first), (2, second)):
        targets = [r["target_share"] for r in metrics(out / f"pass{k}" / "train" / "metrics.jsonl")]
        assert targets == pytest.approx([ratio] * len(targets))
    # the final model keeps half the original's channels (to one channel's rounding per pass)
    total = sum(c["total"] for c in results["channels"])
    assert results["prune"]["removed_fraction"] == pytest.approx(0.5, abs=2 / total)
    assert results["prune"]["ratio"] == 0.5


def test_a_run_killed_in_pass_two_resumes_there_and_ends_as_an_uninterrupted_one(
        data_dir, tmp_path, monkeypatch, capsys):
    flags = ["--passes", "2", "--epochs", "2", "--finetune-epochs", "1", "--penalty", "tl1",
             "--lam", "1e-3", "--pass-target", "total", "--target-params", "0.4"]
    reference = run(data_dir, tmp_path / "reference", *flags)
    out = tmp_path / "killed"
    original = Trainer._run_epoch
    ran: list[tuple[str, int]] = []
    crashed = []

    def crash_in_pass_two(self, epoch):
        ran.append((str(self.dir.relative_to(out)), epoch))
        if self.dir == out / "pass2" / "train" and epoch == 1 and not crashed:
            crashed.append(epoch)
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(Trainer, "_run_epoch", crash_in_pass_two)
    argv = ["run", *TINY, "--data-dir", str(data_dir), *flags, "--out", str(out)]
    assert main(argv) == 130
    assert "continue with: ncslim run" in capsys.readouterr().err
    assert (out / "pass1" / "results.json").is_file() and not (out / "results.json").exists()
    ran.clear()
    assert main([*argv, "--resume"]) == 0
    # pass 1 is not redone; pass 2 continues at its second epoch
    assert ran == [("pass2/train", 1), ("pass2/finetune", 0)]
    resumed = json.loads((out / "results.json").read_text())
    final = ncslim.load_model(out / "final.pt").state_dict()
    for key, value in ncslim.load_model(tmp_path / "reference" / "final.pt").state_dict().items():
        assert torch.equal(final[key], value), key
    for key in ("accuracy", "params", "flops", "channels", "gamma_values"):
        assert resumed[key] == reference[key], key
    assert [p["accuracy"] for p in resumed["passes"]] == [p["accuracy"] for p in
                                                          reference["passes"]]
    test_acc = [r["test_acc"] for r in metrics(out / "pass2" / "train" / "metrics.jsonl")]
    assert test_acc == [r["test_acc"] for r in
                        metrics(tmp_path / "reference" / "pass2" / "train" / "metrics.jsonl")]


def test_a_sweep_runs_each_ratio_as_its_own_chain_of_passes(data_dir, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f"""
out = "{tmp_path / 'sweep'}"
ratios = [0.3, 0.5]
[base]
dataset = "fashion-mnist"
data_dir = "{data_dir}"
arch = "vgg"
depth = 11
width = 0.0625
batch_size = 32
epochs = 1
device = "cpu"
passes = 2
[[grid]]
penalty = "l1"
lam = 1e-3
""")
    assert main(["sweep", str(sweep)]) == 0
    run_dir = tmp_path / "sweep" / "l1_lam0.001_s0"
    assert (run_dir / "train" / "last.pt").is_file()  # pass 1's training, shared
    for ratio in ("0.3", "0.5"):
        chain = run_dir / f"ratio-{ratio}"
        assert not (chain / "pass1" / "train").exists()
        assert (chain / "pass2" / "train" / "last.pt").is_file()
        results = json.loads((chain / "results.json").read_text())
        assert len(results["passes"]) == 2 and results["prune"]["ratio"] == float(ratio)
    assert main(["report", str(tmp_path / "sweep")]) == 0
    table = (tmp_path / "sweep" / "report" / "summary.md").read_text().split("\n\n")[0]
    assert len(table.splitlines()) == 4  # head, rule, one row per ratio


FASHION = Path("/usr/share/datasets/fashion-mnist")
KILLER = Path(__file__).with_name("killer.py")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_a_run_sigkilled_in_pass_two_resumes_bit_for_bit(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setattr("ncslim.models.measure._time_one",
                        lambda model, x: 1e-6 * ncslim.count_params(model) * x.shape[0])
    flags = [*TINY, "--limit-train", "192", "--limit-test", "64", "--passes", "2",
             "--penalty", "tl1", "--lam", "1e-3", "--max-layer-ratio", "0.5"]
    assert main(["run", *flags, "--out", str(tmp_path / "reference")]) == 0
    out = tmp_path / "killed"
    # 6 steps an epoch: pass 1 trains steps 1-6 and fine-tunes 7-12; step 15 is in pass 2
    killed = subprocess.run([sys.executable, KILLER, "step", "15", "--", "run", *flags,
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert (out / "pass1" / "results.json").is_file() and not (out / "pass2" / "pruned.pt").exists()
    assert main(["run", *flags, "--out", str(out), "--resume"]) == 0
    final = ncslim.load_model(out / "final.pt").state_dict()
    for key, value in ncslim.load_model(tmp_path / "reference" / "final.pt").state_dict().items():
        assert torch.equal(final[key], value), key
    resumed, reference = (json.loads((folder / "results.json").read_text())
                          for folder in (out, tmp_path / "reference"))
    assert [p["accuracy"] for p in resumed["passes"]] == [p["accuracy"] for p in
                                                          reference["passes"]]
