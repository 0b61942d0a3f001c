"""Reports and the run records they read, against hostile files (issue 25, sections 2, 3, 4 and
6): every record is read as a regular file within a size limit told before a byte is read; a
report reads and checks everything before it writes anything; it replaces only the files a
report wrote; a FIFO in a diverged sweep run hangs nothing."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import matplotlib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import _exit_2_one_line
from test_hostile_inputs import bounded, make_special
from test_report import epoch, make_run

from ncslim.cli import main
from ncslim.config import load_config
from ncslim.report import report as make_report
from ncslim.report import rundata
from ncslim.run import checkpoint, rundir, sweep
from ncslim.util import regular

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HUGE = 2 * 1024**3  # a sparse file: no disk, and nothing to read but zeros
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _sparse(path: Path, size: int = HUGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.truncate(path, size)
    return path


def _traced(call):
    """(``call()``'s result or exception, the most Python memory it held at once, in MiB)."""
    tracemalloc.start()
    try:
        try:
            outcome = call()
        except Exception as err:  # noqa: BLE001  handed to the test
            outcome = err
        return outcome, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (links and FIFOs by what they are), by relative path."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (b"link " + os.readlink(p).encode() if p.is_symlink()
                                         else p.read_bytes() if p.is_file() else b"special")
            for p in sorted(folder.rglob("*"))}


# ----------------------------------------------------------------------------- size limits

PEAK = r"""
import re, sys, time
from ncslim.cli import main
started = time.perf_counter()
code = main(sys.argv[1:])
peak = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1]) // 1024
print("result", code, peak, round(time.perf_counter() - started, 1))
"""


def test_a_huge_results_json_is_refused_from_its_size_in_bounded_memory(tmp_path):
    """`truncate -s 2G runs/b/results.json; ncslim report runs`: one line naming the file, its
    size and the limit, exit 2, in a fresh process whose peak memory shows it was not read."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_run(runs / "a")
    huge = _sparse(runs / "b" / "results.json")
    done = subprocess.run([sys.executable, "-c", PEAK, "report", str(runs), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    code, peak, seconds = done.stdout.split()[-3:]
    err = done.stderr.strip()
    assert int(code) == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(huge) in err and f"{HUGE:,} bytes" in err and "64 MiB" in err, err
    assert int(peak) < 1024 and float(seconds) < 30, (peak, seconds)
    assert not out.exists()


def _huge_config(tmp_path: Path) -> Path:
    return _sparse(tmp_path / "run" / "config.json")


READERS = {
    "metrics.jsonl (report)": ("run/train/metrics.jsonl", "128 MiB",
                               lambda path: rundata.read_metrics(path)),
    "metrics.jsonl (resume)": ("run/metrics.jsonl", "128 MiB",
                               lambda path: checkpoint.read_metrics(path, keep=1)),
    "config.json (resume)": ("run/config.json", "64 MiB",
                             lambda path: rundir.write_config(load_config("demo"), path.parent,
                                                              "train")),
    "results.json (a pass)": ("run/pass1/results.json", "64 MiB",
                              lambda path: regular.read_text(path,
                                                             limit=regular.JSON_RECORD_LIMIT)),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_run_record_is_refused_from_its_size_before_it_is_read(tmp_path, reader):
    name, limit, read = READERS[reader]
    path = _sparse(tmp_path / name)
    started = time.perf_counter()
    error, mib = _traced(lambda: read(path))
    assert isinstance(error, ValueError), error
    message = str(error)
    assert str(path) in message and f"{HUGE:,} bytes" in message and limit in message, message
    assert "\n" not in message and time.perf_counter() - started < 5 and mib < 16, mib


def test_a_size_limit_is_part_of_every_read():
    """read_text and read_bytes have no unbounded default: every caller names its limit."""
    for reader in (regular.read_text, regular.read_bytes):
        assert inspect.signature(reader).parameters["limit"].default is inspect.Parameter.empty


def test_a_metrics_line_longer_than_any_epoch_record_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(json.dumps(epoch(1, 0.5, 1.0)).encode() + b"\n"
                     + b'{"epoch": 2, "x": "' + b"a" * (2 << 20) + b'"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: longer than the 1 MiB")):
        rundata.read_metrics(path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2 is longer than the 1 MiB")):
        checkpoint.read_metrics(path, keep=1)


# ----------------------------------------------------------------------------- one reader

def test_the_report_and_a_resume_read_metrics_by_the_same_rules(tmp_path):
    """A torn last line (a crash mid-append) is dropped on resume, and named by the report;
    a record that is not an epoch record is refused by both, by file and line."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "test_acc": 0.5}\n\n{"epoch": 2, "te')
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 3: not JSON")):
        rundata.read_metrics(path)
    assert checkpoint.read_metrics(path, keep=1, rewrite=False) == [{"epoch": 1,
                                                                     "test_acc": 0.5}]
    path.write_text('{"epoch": 1, "test_acc": "high"}\n{"epoch": 2, "test_acc": 0.6}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 1: not an epoch record")):
        rundata.read_metrics(path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 1 is not an epoch record")):
        checkpoint.read_metrics(path, keep=2)
    path.write_bytes(b'{"epoch": 1}\n\xff\xfe\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2 is not UTF-8 text")):
        checkpoint.read_metrics(path, keep=2)


# ----------------------------------------------------------------------------- nothing written

def _bad_metrics(text: str | bytes):
    def spoil(path: Path) -> None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return spoil


BAD_METRICS = {
    "not JSON": _bad_metrics('{"epoch": 1, "test_acc": 0.5}\n{"epoch": 2, "test_acc": }\n'
                             '{"epoch": 3, "test_acc": 0.6}\n'),
    "torn last line": _bad_metrics('{"epoch": 1, "test_acc": 0.5}\n{"epoch": 2, "te'),
    "epoch a string": _bad_metrics('{"epoch": "1", "test_acc": 0.5}\n'),
    "a value not a number": _bad_metrics('{"epoch": 1, "test_acc": [0.5]}\n'),
    "not UTF-8": _bad_metrics(b'{"epoch": 1}\n\xff\xfe\n'),
    "a FIFO": lambda path: (path.unlink(), make_special(path, "fifo")),
    "a directory": lambda path: (path.unlink(), make_special(path, "directory")),
}
# (runs in the report, stage): a single run's figures read both stages, comparisons the
# training of each setting's first run
READ = [(1, "train"), (1, "finetune"), (2, "train")]


@pytest.mark.parametrize("spoil", BAD_METRICS.values(), ids=BAD_METRICS.keys())
@pytest.mark.parametrize(("count", "stage"), READ, ids=[f"{c}-run-{s}" for c, s in READ])
def test_a_bad_metrics_file_writes_nothing_in_out(tmp_path, capsys, spoil, count, stage):
    runs = tmp_path / "runs"
    for seed in range(count):
        make_run(runs / f"l1_s{seed}", seed=seed)
    earlier, fresh = tmp_path / "earlier", tmp_path / "fresh"
    make_report(runs, earlier)  # a good report: the refused one leaves it as it was
    before = _tree(earlier)
    metrics = runs / "l1_s0" / stage / "metrics.jsonl"
    spoil(metrics)
    for out in (earlier, fresh):
        box = bounded(lambda out=out: _exit_2_one_line(
            ["report", str(runs), "--out", str(out)], capsys), tmp_path, seconds=60)
        assert "error" not in box, box
        assert str(metrics) in box["value"], box["value"]
    assert _tree(earlier) == before
    assert not fresh.exists()


RESULTS_FAULTS = {
    "gamma_values strings": lambda r: r.update(gamma_values=["a", "b"]),
    "gamma_values a number": lambda r: r.update(gamma_values=3),
    "accuracy a string": lambda r: r["accuracy"].update(pruned="high"),
    "speed-up a list": lambda r: r["latency"]["cpu"]["batch_1"].update(speedup=[1]),
    "lam a list": lambda r: r["config"].update(lam=[1]),
    "removed share a string": lambda r: r["prune"].update(removed_fraction="half"),
    "a pass of no size": lambda r: r.update(passes=[{"pass": 1, "accuracy": {
        "sparse": 1, "pruned": 1, "finetuned": 1}, "params": 1, "flops": 1}] * 2, params={
            "original": 0, "removed": 0.5}),
}
# parts that only the figures of a single run draw: comparisons go through without them
RUN_FAULTS = {
    "channels without counts": lambda r: r.update(channels=[{"layer": "x", "kept": "all",
                                                             "total": 4}]),
    "channels all empty": lambda r: r.update(channels=[{"layer": "x", "kept": 0, "total": 0}]),
    "channel names numbers": lambda r: r.update(channels=[{"layer": 1, "kept": 1, "total": 2}]),
    "no arch": lambda r: r["config"].pop("arch"),
}


@pytest.mark.parametrize("fault", [*RESULTS_FAULTS, *RUN_FAULTS])
@pytest.mark.parametrize("count", [1, 2])
def test_a_results_json_a_figure_cannot_draw_writes_nothing(tmp_path, capsys, fault, count):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for seed in range(count):
        make_run(runs / f"l1_s{seed}", seed=seed)
    path = runs / "l1_s0" / "results.json"
    results = json.loads(path.read_text())
    {**RESULTS_FAULTS, **RUN_FAULTS}[fault](results)
    path.write_text(json.dumps(results))
    argv = ["report", str(runs), "--out", str(out)]
    if count == 2 and fault in RUN_FAULTS:
        assert main(argv) == 0  # nothing drawn from it
        return
    err = _exit_2_one_line(argv, capsys)
    assert str(path) in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------- nothing replaced

def _foreign_png(path: Path) -> bytes:
    """A figure of the user's own (matplotlib's, as most are) at a report's figure name."""
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path.read_bytes()


FOREIGN = {
    "summary.md": lambda path: path.write_bytes(b"# My notes on the runs\n"),
    "results.csv": lambda path: path.write_bytes(b"run,accuracy\nmine,0.9\n"),
    "run_training_curves.png": _foreign_png,
    "run_channels_kept.png": lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\nnot ncslim's"),
    "summary.md (a link)": lambda path: path.symlink_to(path.parent.parent / "elsewhere.md"),
    "results.csv (a FIFO)": lambda path: os.mkfifo(path),
    "summary.md (a folder)": lambda path: path.mkdir(),
}


@pytest.mark.parametrize("name", FOREIGN)
def test_a_file_the_report_did_not_write_is_refused_and_kept(tmp_path, capsys, name):
    runs, out = tmp_path / "runs", tmp_path / "out"
    make_run(runs / "one")
    out.mkdir()
    (tmp_path / "elsewhere.md").write_text("the link's target\n")
    (out / "notes.txt").write_text("mine\n")
    path = out / name.split()[0]
    FOREIGN[name](path)
    before, target = _tree(out), (tmp_path / "elsewhere.md").read_bytes()
    box = bounded(lambda: _exit_2_one_line(["report", str(runs), "--out", str(out)], capsys),
                  tmp_path, seconds=60)
    assert "error" not in box, box
    err = box["value"]
    assert str(path) in err and "not written by ncslim report" in err, err
    assert "choose another --out" in err and "remove the file" in err, err
    assert _tree(out) == before and (tmp_path / "elsewhere.md").read_bytes() == target


@SETTINGS
@given(text=st.binary(max_size=300))
def test_any_summary_or_table_of_the_users_own_is_refused(tmp_path, text):
    runs = tmp_path / "runs"
    if not runs.exists():
        make_run(runs / "one")
    for name, head in (("summary.md", b"| setting | lam |"), ("results.csv", b"setting,penalty,")):
        if text.startswith(head):
            continue
        out = tmp_path / f"out-{name}"
        out.mkdir(exist_ok=True)
        (out / name).write_bytes(text)
        with pytest.raises(ValueError, match="not written by ncslim report"):
            make_report(runs, out)
        assert [p.name for p in out.iterdir()] == [name] and (out / name).read_bytes() == text


def test_a_report_regenerated_into_its_own_folder_replaces_its_own_files(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs / "l1_s0")
    out = tmp_path / "report"
    first = make_report(runs, out)
    (out / "notes.txt").write_text("mine\n")
    assert make_report(runs, out) == first  # the same report again, into its own folder
    make_run(runs / "l1_s1", seed=1)  # now comparisons, into the single run's folder
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 2
    assert (out / "training_curves.png").is_file() and (out / "notes.txt").read_text() == "mine\n"
    assert main(["report", str(runs)]) == 0  # the default folder, twice
    assert main(["report", str(runs)]) == 0
    assert (runs / "report" / "summary.md").is_file()


def test_a_report_from_before_the_figure_mark_is_still_its_own(tmp_path):
    """Figures of earlier reports carry matplotlib's own Software text: in a folder whose
    results.csv is a report's, they are the report's to replace."""
    runs, out = tmp_path / "runs", tmp_path / "report"
    for seed in (0, 1):
        make_run(runs / f"l1_s{seed}", seed=seed)
    files = make_report(runs, out)
    for key in ("gamma", "curves"):
        _foreign_png(files[key])
    assert make_report(runs, out) == files
    (out / "results.csv").write_text("run,accuracy\n")  # not a report's: nor are the figures
    (out / "results.csv").unlink()
    _foreign_png(files["gamma"])
    with pytest.raises(ValueError, match=re.escape(f"{files['gamma']}: not written by ncslim")):
        make_report(runs, out)


# ----------------------------------------------------------------------------- sweep

SWEEP = """out = "{out}"
seeds = [0]
ratios = [0.5]

[base]
dataset = "fashion-mnist"
arch = "vgg"
depth = 11
width = 0.0625
epochs = 1
finetune_epochs = 1
device = "cpu"

[[grid]]
penalty = "l1"
"""


@pytest.mark.parametrize("kind", ["fifo", "huge", "directory", "device"])
def test_a_special_config_json_in_a_diverged_sweep_run_hangs_nothing(tmp_path, capsys,
                                                                      monkeypatch, kind):
    """A diverged run whose config.json is a FIFO (or a huge file, ...) has nothing readable
    to compare: the sweep tries it afresh (setting the whole folder aside) without reading it."""
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(out=tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "l1_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "diverged.json").write_text('{"diverged": "the loss is NaN"}\n')
    if kind == "huge":
        _sparse(run_dir / "config.json")
    else:
        make_special(run_dir / "config.json", kind)
    tried = []
    monkeypatch.setattr(sweep, "_execute", lambda run, cache: tried.append(run.name))
    box = bounded(lambda: main(["sweep", str(path)]), tmp_path, seconds=30)
    assert box.get("value") in (0, 3), box
    assert tried == ["l1_s0"]
    (run,) = sweep.expand(sweep.read_preset(str(path)))
    started = time.perf_counter()
    box = bounded(lambda: _traced(run.settings_changed), tmp_path, seconds=30)
    assert box["value"][0] is True and box["value"][1] < 16, box  # (MiB: nothing read)
    assert time.perf_counter() - started < 5
