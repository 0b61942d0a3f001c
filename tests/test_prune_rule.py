"""One pruning rule: the modules that hold it, and ``ncslim prune`` (real and dry run) applying it.

The CLI tests prune a saved tiny VGG with spread-out BN scales; they need no data set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import spread_bn

import ncslim
from ncslim.cli import main
from ncslim.config import load_config

# --- ncslim prune, real and dry run ---

LAYER = re.compile(r"^(\S+)\s+(\d+) / (\d+)$", re.M)
SIZES = re.compile(r"^(params|FLOPs) +([\d,]+) -> ([\d,]+)", re.M)


@pytest.fixture
def model_file(tmp_path) -> Path:
    torch.manual_seed(0)
    model = spread_bn(ncslim.build_model("vgg", num_classes=10, in_channels=1, depth=11,
                                         width=0.0625))
    path = tmp_path / "model.pt"
    ncslim.save_model(model, path)
    return path


def dry_run(path: Path, capsys, *flags: str) -> list[tuple[str, str]]:
    """(label, report) of each pruning ``ncslim prune --dry-run`` prints."""
    capsys.readouterr()
    assert main(["prune", "--checkpoint", str(path), "--dry-run", "--device", "cpu",
                 *flags]) == 0
    parts = re.split(r"^--- (.+)$", capsys.readouterr().out, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def kept(report: str) -> dict[str, int]:
    return {name: int(k) for name, k, _ in LAYER.findall(report)}


def sizes(report: str) -> dict[str, tuple[int, int]]:
    return {what: (int(a.replace(",", "")), int(b.replace(",", "")))
            for what, a, b in SIZES.findall(report)}


def test_dry_run_without_ratios_reports_the_preset_ratio(model_file, capsys):
    ((label, report),) = dry_run(model_file, capsys)
    assert label == "ratio 0.5" and "compensated" not in report
    assert "threshold" in report and sizes(report)["params"][1] < sizes(report)["params"][0]


def test_dry_run_honours_threshold(model_file, capsys):
    model = ncslim.load_model(model_file)
    bns = {s.bn: dict(model.named_modules())[s.bn] for s in model.prune_slots()}
    gammas = torch.cat([bn.weight.detach().abs() for bn in bns.values()])
    cut = float(gammas.quantile(0.2))  # removes ~20 %, not the preset's 50 %
    ((label, report),) = dry_run(model_file, capsys, "--threshold", f"{cut:.6g}")
    assert label == f"threshold {float(f'{cut:.6g}'):g}"
    expected = {name: max(1, int((bn.weight.detach().abs() > float(f"{cut:.6g}")).sum()))
                for name, bn in bns.items()}
    assert kept(report) == expected
    ((_, plain),) = dry_run(model_file, capsys)
    assert kept(plain) != expected


@pytest.mark.parametrize(("flag", "what"), [("--target-flops", "FLOPs"),
                                            ("--target-params", "params")])
def test_dry_run_honours_a_size_target_and_matches_the_real_prune(model_file, capsys, tmp_path,
                                                                  flag, what):
    ((label, report),) = dry_run(model_file, capsys, flag, "0.6")
    assert label == f"{flag[2:]} 0.6"
    before, after = sizes(report)[what]
    assert 0.5 * before < after <= 0.6 * before  # the smallest ratio that fits, not any
    ((_, plain),) = dry_run(model_file, capsys)
    assert sizes(plain)[what][1] < 0.5 * before  # the preset's ratio 0.5 removes more
    # the dry run shows what the real prune does
    assert main(["prune", "--checkpoint", str(model_file), flag, "0.6", "--device", "cpu",
                 "--out", str(tmp_path / "p")]) == 0
    record = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert record[f"{what.lower()}_after"] == after
    assert kept(report) == {la["name"]: la["kept"] for la in record["layers"]}


def test_dry_run_honours_compensate_min_channels_and_round_to(model_file, capsys):
    plain = dry_run(model_file, capsys, "--ratios", "0.4,0.8")
    assert [label for label, _ in plain] == ["ratio 0.4", "ratio 0.8"]
    assert not any("compensated" in report for _, report in plain)
    both = dry_run(model_file, capsys, "--ratios", "0.4,0.8", "--compensate", "--round-to", "4")
    assert [label for label, _ in both] == ["ratio 0.4", "ratio 0.8"]
    for (_, report), (_, before) in zip(both, plain):
        assert "compensated: the mean output of the removed channels is folded" in report
        totals = {name: int(t) for name, _, t in LAYER.findall(report)}
        assert all(k % 4 == 0 or k == totals[name] for name, k in kept(report).items())
        assert kept(report) != kept(before)


def test_ratios_override_the_presets_rule_in_a_dry_run(model_file, capsys):
    ((label, report),) = dry_run(model_file, capsys, "--ratios", "0.3")  # the preset's: 0.5
    ((_, at_ratio),) = dry_run(model_file, capsys, "--ratio", "0.3")
    assert label == "ratio 0.3" and kept(report) == kept(at_ratio)


@pytest.mark.parametrize("extra, message", [
    (["--dry-run", "--target-params", "0.2"], "--ratios and --target-params are two pruning rules"),
    (["--dry-run", "--ratio", "0.2"], "--ratios and --ratio are two pruning rules"),
    ([], "add --dry-run"),
])
def test_ratios_beside_another_rule_or_without_a_dry_run_are_refused(model_file, tmp_path,
                                                                      capsys, extra, message):
    out = tmp_path / "p"
    code = main(["prune", "--checkpoint", str(model_file), "--ratios", "0.3", *extra,
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_prune_to_target_params_writes_a_model_within_the_budget(model_file, tmp_path, capsys):
    assert main(["prune", "--checkpoint", str(model_file), "--target-params", "0.5",
                 "--device", "cpu", "--out", str(tmp_path / "p")]) == 0
    full = ncslim.count_params(ncslim.load_model(model_file))
    small = ncslim.count_params(ncslim.load_model(tmp_path / "p" / "pruned.pt"))
    assert small <= 0.5 * full
    assert small > 0.4 * full  # the smallest ratio that fits, not any
    record = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert record["params_after"] == small and record["params_before"] == full


def test_an_unreachable_target_names_its_flag(model_file, capsys):
    capsys.readouterr()
    assert main(["prune", "--checkpoint", str(model_file), "--target-params", "0.01",
                 "--min-channels", "8", "--device", "cpu", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "parameters cannot fall to 1.0% of the original (--target-params)" in err


def _sparse_vgg(zero_share: float) -> torch.nn.Module:
    """A tiny VGG whose ``zero_share`` smallest BN scales are exactly 0, the rest above 0.1."""
    torch.manual_seed(0)
    model = spread_bn(ncslim.build_model("vgg", num_classes=10, in_channels=1, depth=11,
                                         width=0.0625))
    gammas = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    flat = torch.cat([g.detach().abs() for g in gammas])
    cut = flat.kthvalue(round(zero_share * flat.numel())).values
    with torch.no_grad():
        for g in gammas:
            g.copy_(torch.where(g.abs() <= cut, torch.zeros_like(g), g.abs() + 0.1))
    return model


@pytest.mark.parametrize(("lam", "ratio", "accuracies", "warned"), [
    ("auto", 0.6, (0.84, 0.10), True),    # cut live channels and lost accuracy
    ("auto", 0.4, (0.84, 0.10), False),   # pruned only what was at zero
    ("auto", 0.6, (0.84, 0.838), False),  # cut live channels that did not matter
    (1e-4, 0.6, (0.84, 0.10), False),     # a fixed lambda promised no share
])
def test_a_controller_short_of_its_target_is_named_at_pruning(lam, ratio, accuracies, warned):
    from ncslim.run.prunerule import SHORTFALL, prune, shortfall_warnings

    model = _sparse_vgg(0.5)
    cfg = load_config("demo", {"lam": lam, "ratio": ratio})
    _, report = prune(model, cfg)
    gammas = torch.cat([m.weight.detach().abs() for m in model.modules()
                        if isinstance(m, torch.nn.BatchNorm2d)])
    warnings = shortfall_warnings(gammas, cfg, report, *accuracies)
    assert len(warnings) == warned
    if warned:
        total = sum(layer.total for layer in report.layers)
        live = total - round(0.5 * total)
        cut = live - sum(layer.kept for layer in report.layers)
        assert warnings[0].startswith(SHORTFALL)
        assert "shortfall: sparsity training ended with 50.0% of the channels near zero" in \
            warnings[0]
        assert f"short of the {report.removed_fraction:.1%} pruning removed" in warnings[0]
        assert f"cut {cut} live channels" in warnings[0] and cut > 0
        assert "from 84.00% to 10.00%" in warnings[0]
