from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ncslim
from ncslim.cli import main
from ncslim.report import report
from ncslim.run import sweep

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed")

BASE = """
[base]
dataset = "fashion-mnist"
arch = "vgg"
depth = 11
width = 0.0625
limit_train = 128
limit_test = 64
batch_size = 32
epochs = 1
finetune_epochs = 1
lam = 1e-3
device = "cpu"
"""


def write_sweep(tmp_path: Path, grid: str, seeds: str = "[0]", ratios: str = "[0.3, 0.6]") -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(f'out = "{tmp_path / "runs"}"\nseeds = {seeds}\nratios = {ratios}\n'
                    f"{BASE}\n{grid}")
    return path


def test_expand_names_and_shards_cover_the_grid_once(tmp_path):
    path = write_sweep(tmp_path, '[[grid]]\npenalty = "none"\n\n[[grid]]\npenalty = ["l1", "tl1"]'
                                 '\nmode = ["subgradient", "proximal"]\n', seeds="[0, 1]")
    runs = sweep.expand(sweep.read_preset(str(path)))
    assert len(runs) == 10  # (1 + 2 x 2) settings x 2 seeds
    assert "tl1_proximal_s1" in {r.name for r in runs}
    assert all(r.ratios == (0.3, 0.6) for r in runs)
    halves = [sweep.shard_runs(runs, (i, 2)) for i in (1, 2)]
    names = [r.name for half in halves for r in half]
    assert sorted(names) == sorted(r.name for r in runs) and len(set(names)) == len(names)
    thirds = [r.name for i in (1, 2, 3) for r in sweep.shard_runs(runs, (i, 3))]
    assert sorted(thirds) == sorted(r.name for r in runs)


@pytest.mark.parametrize(("text", "match"), [
    ('colour = "red"\n[[grid]]\npenalty = "l1"\n', "unknown sweep key"),
    ('[base]\nepochs = 1\n', "no \\[\\[grid\\]\\] block"),
    ('[[grid]]\npenalty = "l1"\nlam = -1.0\n', "run l1_lam-1_s0: --lam must be"),
    ('ratios = [1.5]\n[[grid]]\npenalty = "l1"\n', "ratios must be numbers in"),
    ('[[grid]]\npenalty = "l2"\n', "run l2_s0: --penalty must be one of "),
    ('[[grid]]\npenalty = ["tl1", "l1"]\na = [1.0, 2.0]\n',  # l1_a1 = l1_a2
     "run l1_a1_s0: a does not act on --penalty l1 \\(its parameters: none\\)"),
    ('[[grid]]\npenalty = "vcp"\np = 0.5\n', "run vcp_p0.5_s0: p does not act on --penalty vcp"),
    ('[[grid]]\npenalty = "mcp"\ngamma = 0.5\n', "run mcp_gamma0.5_s0: mcp: gamma must be > 1"),
    ('seeds = ["0"]\n[[grid]]\npenalty = "l1"\n', "seeds must be integers in"),
    ('seeds = [1.5]\n[[grid]]\npenalty = "l1"\n', "seeds must be integers in"),
    ('ratios = [true]\n[[grid]]\npenalty = "l1"\n', "ratios must be numbers in"),
    ('out = 3\n[[grid]]\npenalty = "l1"\n', "out must be a folder path"),
    ('grid = {penalty = "l1"}\n', "grid must be an array of tables"),
    ('base = [1]\n[[grid]]\npenalty = "l1"\n', "base must be a table"),
    ('[base]\nseed = 3\n[[grid]]\npenalty = "l1"\n', "\\[base\\] sets seed, which the sweep"),
    ('[[grid]]\npenalty = "l1"\nout = ["a", "b"]\n', "block 1 sets out, which the sweep"),
    ('[[grid]]\npenalty = "l1"\nlam = [[1e-3]]\n', "lam must be a value or a list of values"),
    ('[[grid]]\npenalty = "l1"\nlam = [0.1234567, 0.1234568]\n',
     "two grid points are both named l1_lam0.123457_s0"),
    ('[[grid]]\npenalty = "l1"\ndata_dir = ["../elsewhere"]\n', "would leave the sweep's folder"),
    ('[[grid]]\npenalty = "l1"\namp = "yes"\n', "--amp must be true or false, got 'yes'"),
    ('seeds = [0, 1, 2, 3]\n[[grid]]\npenalty = "l1"\nlam = ' + str(list(range(3000))) + "\n",
     "the grid holds 12,000 training runs, more than 10,000"),
])
def test_bad_sweep_files(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        sweep.expand(sweep.read_preset(str(path)), str(path))


def test_a_block_without_penalty_is_named_after_the_penalty_it_trains_with():
    spec = {"base": {"penalty": "scad"}, "grid": [{"lam": [1e-4, 1e-3]}, {"penalty": "lp"}]}
    runs = sweep.expand(spec)
    assert [r.name for r in runs] == ["lp_s0", "scad_lam0.0001_s0", "scad_lam0.001_s0"]
    assert [r.config.penalty for r in runs] == ["lp", "scad", "scad"]
    assert runs[1].dir == Path("runs/sweep/scad_lam0.0001_s0")
    assert runs[0].config.penalty_params() == {"p": 0.5}
    spec = {"grid": [{"penalty": "l1", "lam": "auto", "target_flops": 0.4,
                      "cost_weighted": [True, False]}]}
    assert [r.name for r in sweep.expand(spec)] == [
        "l1_cost-weighted_lamauto_target_flops0.4_s0",
        "l1_no-cost-weighted_lamauto_target_flops0.4_s0"]


@pytest.mark.parametrize("text", ["2", "0/2", "3/2", "a/b"])
def test_bad_shard(text):
    with pytest.raises(ValueError, match="--shard"):
        sweep.parse_shard(text)


@needs_fashion
def test_killed_sweep_resumes_with_nothing_rerun_then_reports(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path, '[[grid]]\npenalty = ["l1", "tl1"]\n')
    real = sweep.prune_and_finetune
    calls = []

    def dies_on_the_third(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "prune_and_finetune", dies_on_the_third)
    assert main(["sweep", str(path)]) == 130
    runs = tmp_path / "runs"
    done = sorted(runs.rglob("results.json"))
    assert len(done) == 2
    stamps = {p: p.stat().st_mtime_ns for p in done}
    train_stamp = (runs / "l1_s0" / "train" / "last.pt").stat().st_mtime_ns
    assert main(["sweep", str(path), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "done" in listing and "partial" in listing

    monkeypatch.setattr(sweep, "prune_and_finetune", real)
    assert main(["sweep", str(path)]) == 0
    assert len(sorted(runs.rglob("results.json"))) == 4
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing rerun
    assert (runs / "l1_s0" / "train" / "last.pt").stat().st_mtime_ns == train_stamp
    for name in ("l1_s0", "tl1_s0"):
        lines = (runs / name / "train" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1  # trained once, shared by both ratios

    files = report(runs, tmp_path / "report")
    with files["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["penalty"] for r in rows} == {"l1", "tl1"}
    assert {float(r["ratio"]) for r in rows} == {0.3, 0.6}
    summary = files["markdown"].read_text()
    assert summary.count("\n| l1 subgradient |") == 2 and "tl1(a=1) subgradient" in summary
    for key in ("gamma", "pruned", "params", "flops", "curves"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert files[key].stat().st_size > 10_000
    results = json.loads(next(runs.rglob("results.json")).read_text())
    assert len(results["gamma_values"]) == sum(c["total"] for c in results["channels"])


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json below" in capsys.readouterr().err


def test_every_shipped_sweep_file_expands():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.toml"))
    assert len(files) >= 10
    for path in files:
        runs = sweep.expand(sweep.read_preset(str(path)), str(path))
        assert runs and len({r.name for r in runs}) == len(runs)


KILLER = Path(__file__).with_name("killer.py")
KILL_GRID = '[[grid]]\npenalty = ["l1", "tl1"]\n'  # 2 runs x 1 ratio; 4 steps per stage


def _outcome(runs: Path) -> dict[str, tuple]:
    """What a sweep produced, minus timings: accuracies, sizes, gammas and final weights."""
    outcome = {}
    for path in sorted(runs.rglob("results.json")):
        r = json.loads(path.read_text())
        final = ncslim.load_model(path.with_name("final.pt")).state_dict()
        outcome[str(path.relative_to(runs))] = (
            r["accuracy"], r["params"], r["flops"], r["channels"], r["gamma_values"],
            {k: v.tolist() for k, v in final.items()})
    return outcome


@pytest.fixture(scope="module")
def unbroken_sweep(tmp_path_factory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("unbroken")
    assert main(["sweep", str(write_sweep(root, KILL_GRID, ratios="[0.5]"))]) == 0
    return _outcome(root / "runs")


@needs_fashion
@pytest.mark.parametrize(("point", "at"), [("step", 6), ("step", 10), ("save", 9)])
def test_a_sigkilled_sweep_resumes_to_the_unbroken_result(tmp_path, unbroken_sweep, point, at):
    """Killed mid fine-tuning of the first run, mid training of the second, and between a
    file's temporary write and its rename; rerunning the sweep ends where an unbroken one does."""
    path = write_sweep(tmp_path, KILL_GRID, ratios="[0.5]")
    killed = subprocess.run([sys.executable, KILLER, point, str(at), "--", "sweep", str(path)],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    runs = tmp_path / "runs"
    assert len(_outcome(runs)) < 2
    for stale in runs.rglob("*.pt"):  # whatever is on disk is whole and readable
        assert isinstance(ncslim.models.files.safe_load(stale), dict)
    assert main(["sweep", str(path)]) == 0
    assert not list(runs.rglob(".*.tmp"))
    assert _outcome(runs) == unbroken_sweep


def test_a_diverged_run_is_set_aside_and_the_sweep_goes_on(tmp_path, capsys):
    """Issue 25: one run's divergence stops neither the sweep nor its rerun; the same settings
    are not tried again, changed ones move the diverged run aside and start it afresh."""
    grid = '[[grid]]\npenalty = ["l1", "tl1"]\n'
    path = write_sweep(tmp_path, grid, ratios="[0.5]")
    path.write_text(path.read_text().replace("lam = 1e-3", "lam = 1e-3\nlr = 1e30"))
    runs = tmp_path / "runs"
    assert main(["sweep", str(path)]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "2 run(s) diverged" in err and "l1_s0, tl1_s0" in err and "lower their lr" in err
    marks = {name: (runs / name / "diverged.json") for name in ("l1_s0", "tl1_s0")}
    stamps = {name: mark.stat().st_mtime_ns for name, mark in marks.items()}  # both were tried
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("diverged ") == 2
    assert main(["sweep", str(path)]) == 3  # the same settings: not tried again
    assert {name: mark.stat().st_mtime_ns for name, mark in marks.items()} == stamps
    old = (runs / "l1_s0" / "config.json").read_text()
    path.write_text(path.read_text().replace("lr = 1e30", "lr = 0.01"))
    assert main(["sweep", str(path)]) == 0
    for name in ("l1_s0", "tl1_s0"):
        assert (runs / name / "ratio-0.5" / "results.json").is_file()
        assert (runs / name / "diverged-1" / "diverged.json").is_file()  # kept, not deleted
        assert not (runs / name / "diverged.json").exists()
    assert (runs / "l1_s0" / "diverged-1" / "config.json").read_text() == old
