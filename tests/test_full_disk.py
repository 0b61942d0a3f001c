"""Issue 25, section 3: a real full disk. A small tmpfs is mounted (as root; skipped, with the
reason, where mounting is not permitted) and filled for real: no save is patched. Each case:
exit 2, one line naming the file meant, nothing damaged, and the advised way on works once
space is back (``--resume`` where there is a run to resume, else the same command).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from test_hostile_outputs import one_line_error, saved, tiny_data

import ncslim
from ncslim.cli import main


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a size the test sets (``resize``), mounted at tmp_path/disk; needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    disk = tmp_path / "disk"
    disk.mkdir()

    def resize(kib: int) -> Path:
        option = f"remount,size={kib}k" if os.path.ismount(disk) else f"size={kib}k"
        args = ["mount", "-o", option, str(disk)] if os.path.ismount(disk) else [
            "mount", "-t", "tmpfs", "-o", option, "tmpfs", str(disk)]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): not permitted")
        return disk

    yield resize
    if os.path.ismount(disk):
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last page with a file; returns the file (delete it: space is back)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 16, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    with pytest.raises(OSError):  # full: not one more byte fits in a new page
        (disk / "probe").write_bytes(b"\0" * 4096)
    (disk / "probe").unlink(missing_ok=True)
    return filler


TRAIN = ["--penalty", "tl1", "--lam", "1e-3", "--seed", "3"]


def same_weights(a: Path, b: Path) -> None:
    left, right = ncslim.load_model(a).state_dict(), ncslim.load_model(b).state_dict()
    assert all(torch.equal(left[k], right[k]) for k in right)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_a_resume_finishes(tmp_path, monkeypatch,
                                                                      capsys, small_disk):
    flags = [*tiny_data(tmp_path, monkeypatch), *TRAIN, "--epochs", "3"]
    reference = tmp_path / "reference"
    assert main(["train", *flags, "--out", str(reference)]) == 0
    last, best = (-(-(reference / name).stat().st_size // 4096) for name in ("last.pt", "best.pt"))
    # room for epoch 1's files (.lock, config.json, metrics.jsonl, last.pt, best.pt) and one
    # page: not for epoch 2's first new checkpoint beside the old one
    disk = small_disk(4 * (3 + last + best + 1))
    out = disk / "run"
    err = one_line_error(["train", *flags, "--out", str(out)], capsys)
    assert err.startswith("ncslim train: error: No space left on device (") and \
        err.endswith(f"--out {out} --resume")
    assert ".pt)" in err  # names the checkpoint, not a temporary file
    epoch = ncslim.run.train.load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= epoch < 3  # the previous checkpoint, whole
    assert not list(out.rglob("*.tmp")) and not (out / "model.pt").exists()
    small_disk(16 * 1024)  # space is back
    assert main(["train", *flags, "--out", str(out), "--resume"]) == 0
    same_weights(out / "model.pt", reference / "model.pt")


def test_a_full_disk_at_a_metrics_append_is_named_and_the_torn_line_dropped(
        tmp_path, monkeypatch, capsys, small_disk):
    flags = [*tiny_data(tmp_path, monkeypatch), *TRAIN, "--epochs", "20"]  # lines cross pages
    reference = tmp_path / "reference"
    assert main(["train", *flags, "--out", str(reference)]) == 0
    disk = small_disk(16 * 1024)
    out, real, filled = disk / "run", ncslim.run.train.evaluate, []

    def fills_the_disk(*args, **kwargs):  # after the epoch's training, before its _save
        metrics = out / "metrics.jsonl"
        if not filled and metrics.exists():
            lines = metrics.read_text().splitlines()
            size, shortest = metrics.stat().st_size, min(len(line) for line in lines)
            if size + shortest - 16 > (size // 4096 + 1) * 4096:  # this line needs a new page
                filled.append(fill(disk))
        return real(*args, **kwargs)

    monkeypatch.setattr(ncslim.run.train, "evaluate", fills_the_disk)
    err = one_line_error(["train", *flags, "--out", str(out)], capsys)
    assert filled, "no metrics line crossed a page: lengthen the run"
    assert f"No space left on device ({out / 'metrics.jsonl'})" in err and "--resume" in err
    whole = ncslim.run.train.load_checkpoint(out / "last.pt")["epoch"]
    torn = (out / "metrics.jsonl").read_text()
    assert torn.count("\n") == whole and not torn.endswith("\n")  # the line it could not end
    monkeypatch.setattr(ncslim.run.train, "evaluate", real)
    filled[0].unlink()  # space is back
    assert main(["train", *flags, "--out", str(out), "--resume"]) == 0
    same_weights(out / "model.pt", reference / "model.pt")
    ours = (out / "metrics.jsonl").read_text().splitlines()
    assert len(ours) == 20 and all(line.startswith('{"epoch"') for line in ours)


def test_a_full_disk_at_a_json_write_names_it_and_a_plain_rerun_works(tmp_path, monkeypatch,
                                                                     capsys, small_disk):
    flags = [*tiny_data(tmp_path, monkeypatch), *TRAIN, "--epochs", "1"]
    disk = small_disk(2048)
    out = disk / "run"
    out.mkdir()
    (out / ".lock").write_text("0\n")  # a killed run's lock file: its page is there already
    filler = fill(disk)
    err = one_line_error(["train", *flags, "--out", str(out)], capsys)
    assert f"No space left on device ({out / 'config.json'})" in err
    assert "--resume" not in err and err.endswith("fix it and rerun")  # nothing to resume yet
    assert sorted(p.name for p in out.iterdir()) == []
    filler.unlink()
    assert main(["train", *flags, "--out", str(out)]) == 0  # the same command, as advised


def test_a_full_disk_at_prunes_output_leaves_a_rerunnable_folder(tmp_path, capsys, small_disk):
    full = saved(tmp_path / "full.pt")
    disk = small_disk(2048)
    out = disk / "p"
    out.mkdir()
    (out / ".lock").write_text("0\n")
    filler = fill(disk)
    err = one_line_error(["prune", "--checkpoint", str(full), "--out", str(out)], capsys)
    assert f"No space left on device ({out / 'prune.json'})" in err
    assert sorted(p.name for p in out.iterdir()) == []
    filler.unlink()
    assert main(["prune", "--checkpoint", str(full), "--out", str(out)]) == 0
    assert (out / "pruned.pt").is_file() and (out / "prune.json").is_file()
