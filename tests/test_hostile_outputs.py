"""Issue 25, sections 3 and 6: nothing is lost or replaced without asking, and every refusal
comes before anything is written, with advice that can be followed.

Classes: (A) a command writing into a live run's folder or a subfolder of it, (B) a file that
ncslim did not write at export's output, (C) a real full disk (tests/test_full_disk.py), (D)
values that could only fail late, and advice that must work when taken.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from conftest import hold_lock, write_fashion

import ncslim
from ncslim.cli import main
from ncslim.models.export import SIGNATURE, own_export
from ncslim.report.rundata import read_metrics

ARCH = ["--arch", "vgg", "--depth", "11", "--width", "0.0625"]


def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fashion-MNIST-shaped IDX files (64 training, 32 test images) and the flags reading them."""
    write_fashion(tmp_path / "data" / "fashion-mnist", monkeypatch)
    return ["--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), *ARCH,
            "--batch-size", "32", "--device", "cpu"]


def one_line_error(argv: list[str], capsys) -> str:
    """Exit 2 and, as the last stderr line, the error: one line, no traceback before it."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert sum("error:" in line for line in lines) == 1 and "error:" in lines[-1]
    return lines[-1]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def saved(path: Path, **kwargs) -> Path:
    ncslim.save_model(ncslim.build_model("vgg", depth=11, width=0.0625, num_classes=10,
                                         in_channels=1, **kwargs), path)
    return path


# ---- (A) a live run's folder and its subfolders --------------------------------------------

def live_run(tmp_path: Path) -> Path:
    """A run folder as ``ncslim run`` has it mid training: a partial checkpoint being written."""
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "finetune").mkdir()
    (run / "config.json").write_text('{"command": "run"}\n')
    (run / "train" / "last.pt").write_bytes(b"epoch 1")
    (run / "train" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return run


def writing(run: Path) -> None:
    """The live run's checkpoint of epoch 2, half written (after its claim cleaned old ones)."""
    (run / "train" / ".last.pt.0badf00d.tmp").write_bytes(b"epoch 2, half written")


def refused_beside_a_live_run(run: Path, held: Path, argv: list[str], capsys) -> tuple[str, int]:
    """The one-line error of ``argv`` while another process holds ``held`` (in or at ``run``,
    whose partial checkpoint is being written), and that process's pid; ``run`` is unchanged."""
    holder = hold_lock(held)
    writing(run)
    before = snapshot(run)
    try:
        err = one_line_error(argv, capsys)
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(run) == before  # the live run's partial checkpoint is still there
    return err, holder.pid


SWEEP = 'preset = "demo"\nout = "{out}"\nseeds = [0]\nratios = [0.5]\n[base]\n' \
        'dataset = "fashion-mnist"\ndata_dir = "{data}"\ndepth = 11\nwidth = 0.0625\n' \
        'batch_size = 32\nepochs = 1\nfinetune_epochs = 1\ndevice = "cpu"\n[[grid]]\n' \
        'penalty = "l1"\n'

INTO_A_LIVE_RUN = {  # argv writing into RUN (held by another process) or below it
    "prune-train": ["prune", "--checkpoint", "{full}", "--ratio", "0.5", "--out", "{run}/train"],
    "prune-deeper": ["prune", "--checkpoint", "{full}", "--out", "{run}/finetune/p"],
    "prune-overwrite": ["prune", "--checkpoint", "{full}", "--out", "{run}/train",
                        "--overwrite"],
    "finetune": ["finetune", "--checkpoint", "{full}", "--out", "{run}/finetune"],
    "finetune-resume": ["finetune", "--checkpoint", "{full}", "--out", "{run}/train",
                        "--resume"],
    "train": ["train", *ARCH, "--out", "{run}/train"],
    "train-resume": ["train", *ARCH, "--out", "{run}/train", "--resume"],
    "run-below": ["run", *ARCH, "--out", "{run}/train/again"],
    "export-onnx": ["export", "{full}", "-o", "{run}/train/m.onnx", "--no-check"],
    "export-ts": ["export", "{full}", "--format", "torchscript", "-o", "{run}/m.ts",
                  "--no-check"],
    "report": ["report", "{runs}", "--out", "{run}/train/report"],
    "sweep": ["sweep", "{sweep}"],
}


@pytest.mark.parametrize("case", sorted(INTO_A_LIVE_RUN))
def test_no_command_writes_into_a_live_run_or_below_it(tmp_path, monkeypatch, capsys, case):
    flags = tiny_data(tmp_path, monkeypatch)
    run, full = live_run(tmp_path), saved(tmp_path / "full.pt")
    runs = tmp_path / "runs" / "a"  # a finished run somewhere else, for report
    runs.mkdir(parents=True)
    (runs / "results.json").write_text("{}")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(SWEEP.format(out=run / "train", data=tmp_path / "data"))
    argv = [a.format(run=run, full=full, runs=tmp_path / "runs", sweep=sweep)
            for a in INTO_A_LIVE_RUN[case]]
    if argv[0] in ("train", "run"):
        argv += flags
    err, pid = refused_beside_a_live_run(run, run, argv, capsys)
    assert f"inside {run.resolve()}, a run in progress (another ncslim process (pid " \
           f"{pid}))" in err and "outside it" in err


@pytest.mark.parametrize("argv", [
    ["run", *ARCH, "--out", "{run}", "--resume"],
    ["train", *ARCH, "--out", "{run}", "--resume"],
    ["prune", "--checkpoint", "{full}", "--out", "{run}", "--overwrite"],
])
def test_a_folder_holding_a_live_run_below_it_is_refused(tmp_path, monkeypatch, capsys, argv):
    """The other way round: ``prune --out RUN/train`` is alive and a command claims RUN."""
    flags = tiny_data(tmp_path, monkeypatch)
    run, full = live_run(tmp_path), saved(tmp_path / "full.pt")
    (run / "config.json").write_text('{"command": "train"}\n')
    argv = [a.format(run=run, full=full) for a in argv] + (flags if argv[0] != "prune" else [])
    err, pid = refused_beside_a_live_run(run, run / "train", argv, capsys)
    assert f"holds {(run / 'train').resolve()}, in use by another running ncslim process " \
           f"(pid {pid})" in err


def test_once_the_live_run_has_ended_its_subfolder_is_free(tmp_path, capsys):
    run, full = live_run(tmp_path), saved(tmp_path / "full.pt")
    holder = hold_lock(run)
    writing(run)
    holder.kill()
    holder.wait()  # SIGKILLed: the kernel dropped its lock; its .lock file stays, harmless
    assert main(["prune", "--checkpoint", str(full), "--out", str(run / "finetune" / "p")]) == 0
    assert (run / "finetune" / "p" / "pruned.pt").is_file()


class Hung(BaseException):
    """Raised by the alarm: no ``except ValueError``/``OSError`` of the CLI can swallow it."""


def _hung(*_):
    raise Hung("the command hung")


NOT_A_LOCK = {  # what OUT/.lock is, and how it is named in the refusal; "outside" is a user file
    "link-to-a-file": ("a symbolic link", lambda lock, outside: lock.symlink_to(outside)),
    "dangling-link": ("a symbolic link", lambda lock, outside: lock.symlink_to(outside.parent
                                                                               / "nowhere")),
    "fifo": ("a FIFO", lambda lock, outside: os.mkfifo(lock)),
    "hard-link": ("a hard link to another file (2 names)", lambda lock, outside: os.link(outside,
                                                                                       lock)),
    "directory": ("a directory", lambda lock, outside: lock.mkdir()),
}


@pytest.mark.parametrize("case", sorted(NOT_A_LOCK))
def test_a_lock_file_that_is_not_ncslims_is_refused_and_nothing_is_written(tmp_path, capsys,
                                                                           case):
    import signal

    kind, make = NOT_A_LOCK[case]
    out, outside, full = tmp_path / "p", tmp_path / "notes.txt", saved(tmp_path / "m.pt")
    out.mkdir()
    outside.write_bytes(b"my notes\n\x00\xff")
    make(out / ".lock", outside)
    before = set(tmp_path.rglob("*"))
    old = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(60)  # a FIFO opened blocking would wait for a writer forever
    try:
        err = one_line_error(["prune", "--checkpoint", str(full), "--out", str(out)], capsys)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert err.endswith(f"{out / '.lock'} is {kind}, not ncslim's lock file; remove it or "
                        f"choose another --out")
    assert outside.read_bytes() == b"my notes\n\x00\xff"  # no pid written through the link
    assert set(tmp_path.rglob("*")) == before  # the dangling link's target is not created


def test_a_claim_removes_only_ncslims_own_partial_files(tmp_path):
    out, elsewhere, full = tmp_path / "d", tmp_path / "elsewhere", saved(tmp_path / "m.pt")
    stale = [out / ".prune.json.1a2b3c4d.tmp", out / "train" / ".last.pt.0badf00d.tmp",
             out / "ratio-0.5" / "pass2" / "finetune" / ".best.pt.5e6f7a8b.tmp"]
    users = [out / ".notes.tmp", out / "x" / ".notes.tmp", out / ".draft.1234567.tmp",
             out / ".a.1A2B3C4D.tmp", out / "notes.1a2b3c4d.tmp", out / ".a.1a2b3c4d.tmp.bak",
             out / ".git" / ".index.1a2b3c4d.tmp", out / "a" / "b" / "c" / "d" / ".m.1a2b3c4d.tmp",
             elsewhere / ".last.pt.1a2b3c4d.tmp"]
    for path in stale + users:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"some bytes")
    (out / "linked").symlink_to(elsewhere)  # a link to a folder is never followed
    (out / ".model.pt.2b3c4d5e.tmp").symlink_to(users[0])  # named like a partial, but a link
    assert main(["prune", "--checkpoint", str(full), "--out", str(out)]) == 0
    assert [p for p in stale if p.exists()] == []  # a killed run's half-written files: cleaned
    assert [p for p in users if p.read_bytes() != b"some bytes"] == []
    assert (out / ".model.pt.2b3c4d5e.tmp").is_symlink() and (out / "pruned.pt").is_file()
    from ncslim.util.files import _create_beside
    from ncslim.util.liverun import PARTIAL_NAME

    assert PARTIAL_NAME.fullmatch(_create_beside(out / "m.pt").name)  # as atomic_path names them


# ---- (B) export's output: only its own earlier exports are replaced -------------------------

def foreign_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "theirs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))


def foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:  # a zip, as TorchScript is, but not ncslim's
        archive.writestr("x/extra/notes.txt", "hello")


FOREIGN = {  # name, format, how the file is made
    "typescript": ("app.ts", "torchscript", lambda p: p.write_text("export const x = 1;\n")),
    "their-onnx": ("theirs.onnx", "onnx", foreign_onnx),
    "garbage-onnx": ("g.onnx", "onnx", lambda p: p.write_bytes(os.urandom(300))),
    "zip-ts": ("z.ts", "torchscript", foreign_zip),
    "fifo": ("pipe.onnx", "onnx", lambda p: os.mkfifo(p)),
    "dangling-link": ("gone.ts", "torchscript", lambda p: p.symlink_to(p.parent / "nowhere")),
    "a-model-file": ("other.pt", "onnx", lambda p: saved(p)),
    "notes": ("notes.txt", "torchscript", lambda p: p.write_text("my notes\n")),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_export_never_replaces_a_file_it_did_not_write(tmp_path, capsys, case):
    name, fmt, make = FOREIGN[case]
    model, target = saved(tmp_path / "m.pt"), tmp_path / name
    make(target)
    before = os.readlink(target) if target.is_symlink() else (
        target.read_bytes() if target.is_file() else None)
    err = one_line_error(["export", str(model), "--format", fmt, "-o", str(target),
                          "--no-check"], capsys)
    assert f"--output {target} exists and is not an earlier {fmt} export (" in err
    assert err.endswith("choose another, or pass --overwrite to replace it")
    after = os.readlink(target) if target.is_symlink() else (
        target.read_bytes() if target.is_file() else None)
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(("name", "fmt", "message"), [
    ("m2.onnx", "torchscript", "a torchscript file is named *.ts; name it m2.ts, or pass "
                               "--format onnx for a .onnx file"),
    ("m2.ts", "onnx", "a onnx file is named *.onnx; name it m2.onnx, or pass --format "
                      "torchscript for a .ts file"),
    ("m2.pt", "torchscript", "a torchscript file is named *.ts; name it m2.ts"),
    ("m2", "onnx", "a onnx file is named *.onnx; name it m2.onnx"),
])
def test_the_outputs_suffix_must_be_its_formats(tmp_path, capsys, name, fmt, message):
    model = saved(tmp_path / "m.pt")
    for extra in ([], ["--overwrite"]):  # --overwrite replaces files; it does not rename formats
        err = one_line_error(["export", str(model), "--format", fmt, "-o", str(tmp_path / name),
                              "--no-check", *extra], capsys)
        assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_export_replaces_its_own_exports_and_a_foreign_file_only_with_overwrite(tmp_path,
                                                                                 capsys):
    model = saved(tmp_path / "m.pt")
    ts, onnx_file = tmp_path / "m.ts", tmp_path / "m.onnx"
    for fmt, path in (("torchscript", ts), ("onnx", onnx_file)):
        for _ in range(2):  # the second replaces the first: its own, signed
            assert main(["export", str(model), "--format", fmt, "--no-check"]) == 0
            assert own_export(path, fmt) is None
    with zipfile.ZipFile(ts) as archive:
        assert any(n.endswith(f"/extra/{SIGNATURE}") for n in archive.namelist())
    app = tmp_path / "app.ts"
    app.write_text("export const x = 1;\n")
    assert main(["export", str(model), "--format", "torchscript", "-o", str(app),
                 "--overwrite"]) == 0
    assert own_export(app, "torchscript") is None
    assert "checked in TorchScript" in capsys.readouterr().out


# ---- (D) late values, and advice that works when taken ------------------------------------

@pytest.mark.parametrize(("flags", "advice"), [
    (["--passes", "2", "--target-flops", "0.03"], ["--target-flops", "0.145"]),
    (["--passes", "2", "--target-params", "0.03"], ["--target-params", "0.057"]),
    (["--passes", "2", "--target-flops", "0.03"], ["--pass-target", "total"]),
])
def test_an_unreachable_multi_pass_target_is_refused_first_and_the_advice_works(
        tmp_path, monkeypatch, capsys, flags, advice):
    data = [*tiny_data(tmp_path, monkeypatch), "--epochs", "0", "--finetune-epochs", "0",
            "--min-channels", "1"]  # the tiny network's floor of 2 would bind in one pass
    out = tmp_path / "run"
    err = one_line_error(["run", *data, *flags, "--out", str(out)], capsys)
    assert "(--pass-target each)" in err and " ".join(advice) in err
    assert not out.exists()
    retry = flags[:-2] + advice if advice[0] != "--pass-target" else flags + advice
    assert main(["run", *data, *retry, "--out", str(out)]) == 0


@pytest.mark.parametrize(("command", "flag"), [("train", "--lr"), ("run", "--lr"),
                                               ("finetune", "--lr")])
def test_a_diverged_runs_advice_works_in_the_same_out(tmp_path, monkeypatch, capsys, command,
                                                      flag):
    data = [*tiny_data(tmp_path, monkeypatch), "--epochs", "1"]
    out = tmp_path / "run"
    if command == "finetune":
        data = [a for a in data if a not in ARCH]
        data += ["--checkpoint", str(saved(tmp_path / "full.pt"))]
    else:
        data += ["--finetune-epochs", "1"] if command == "run" else []
    capsys.readouterr()
    assert main([command, *data, flag, "1e30", "--out", str(out)]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"lower {flag}" in err and "run again" in err and f"{out / 'diverged-'}N/" in err
    old = (out / "config.json").read_text()
    assert main([command, *data, flag, "0.01", "--out", str(out)]) == 0  # as advised
    assert (out / "diverged-1" / "config.json").read_text() == old  # kept, not deleted
    assert not (out / "diverged.json").exists()
    # a finished run is not diverged: the fresh command is refused again
    err = one_line_error([command, *data, flag, "0.02", "--out", str(out)], capsys)
    assert "already holds a run; pass --resume" in err


def test_resume_is_advised_only_where_there_is_a_run(tmp_path, monkeypatch, capsys):
    """Ctrl-C before anything was written: nothing to resume, so no --resume in the advice."""
    data = [*tiny_data(tmp_path, monkeypatch), "--epochs", "1"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ncslim.run.pipeline, "load_data", interrupted)
    out = tmp_path / "run"
    assert main(["train", *data, "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "ncslim train: interrupted"


@pytest.mark.parametrize(("content", "where"), [
    ('{"epoch": 1, "test_acc": 0.5}\n{"epoch": 2, "test_acc": }\n', "line 2: not JSON"),
    ('{"epoch": 1, "test_acc": 0.5}\n\n{"test_acc": 0.5}\n', "line 3: not an epoch record"),
    ('{"epoch": 1, "test_acc": "high"}\n', "line 1: not an epoch record of ncslim ('test_acc'"),
    ('[1, 2]\n', "line 1: not an epoch record"),
])
def test_report_errors_name_the_file_and_line(tmp_path, content, where):
    run = tmp_path / "runs" / "a"
    (run / "train").mkdir(parents=True)
    (run / "train" / "metrics.jsonl").write_text(content)
    with pytest.raises(ValueError, match="metrics.jsonl, " + where.replace("(", r"\(")):
        read_metrics(run / "train" / "metrics.jsonl")  # what report's curves read


def test_the_onnx_signature_is_read_without_loading_the_file(tmp_path):
    """The metadata of a real export, read field by field, is onnx's own; a huge or endless
    foreign file is judged in bounded time and memory (it is sparse: nothing is read)."""
    onnx = pytest.importorskip("onnx")
    from ncslim.models.export import _onnx_metadata

    path = tmp_path / "m.onnx"
    model = ncslim.build_model("vgg", depth=11, width=0.0625, num_classes=10)
    ncslim.export_model(model, path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert _onnx_metadata(path) == props and SIGNATURE in props
    huge = tmp_path / "huge.onnx"
    with huge.open("wb") as f:
        f.truncate(8 << 30)  # 8 GiB of zeros: field 0 is no protobuf field
    assert own_export(huge, "onnx") == "it holds no ncslim onnx signature"
    many = tmp_path / "many.onnx"
    many.write_bytes(b"\x08\x01" * 20_000)  # ir_version, again and again
    assert own_export(many, "onnx") == "it holds no ncslim onnx signature"
