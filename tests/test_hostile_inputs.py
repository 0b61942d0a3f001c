"""Issue 25, sections 2 and 5: nothing hangs on a special file, no worker outlives a killed
command, and data that cannot be what the user meant is refused (two pruning targets:
test_hostile_targets.py)."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_folder import TINY, make_folder
from test_report import write_fashion

from ncslim.cli import main
from ncslim.config import load_config
from ncslim.data import DataError, catalog, foldercache, load_dataset, scan_folder
from ncslim.report import collect, rundata
from ncslim.run import checkpoint, rundir

TRAIN = ["--arch", "vgg", "--depth", "11", "--width", "0.125", "--epochs", "1", "--batch-size",
         "8", "--device", "cpu"]  # TINY without what only run takes
KINDS = {"fifo": "is a FIFO", "socket": "is a socket", "device": "is a device file",
         "directory": "is a directory", "loop": "symbolic links|symlink loop"}


def make_special(path: Path, kind: str) -> Path:
    """A FIFO, socket, device (a link to /dev/null), directory or self-link at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        here = os.getcwd()
        os.chdir(path.parent)  # a relative name: socket paths are limited to 108 bytes
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(path.name)
        finally:
            os.chdir(here)
    elif kind == "device":
        path.symlink_to("/dev/null")
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(path.name)
    return path


def bounded(call: Callable[[], Any], tree: Path, seconds: float = 30) -> Any:
    """``call()``'s result or exception; a call still blocked after ``seconds`` fails the test
    (and is freed: a writer is opened on every FIFO below ``tree``)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # noqa: BLE001  handed to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in (p for p in tree.rglob("*") if p.is_fifo()):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"blocked for over {seconds} s")
    return box


def _cli(argv: list[str], capsys) -> Callable[[], str]:
    def call() -> str:
        assert main(argv) == 2
        return capsys.readouterr().err.strip()
    return call


def _place(name: str, tmp: Path, capsys) -> tuple[Path, Callable[[], Any]]:
    """Where a special file goes, and the call that reads that place."""
    if name == "image":
        root = make_folder(tmp / "d", train=3, val=1)
        return root / "train" / "cat" / "odd.png", lambda: load_dataset("folder", root)
    if name == "results.json":
        return tmp / "runs" / "a" / "results.json", lambda: collect(tmp / "runs")
    if name == "sweep file":
        path = tmp / "s.toml"
        return path, _cli(["sweep", str(path), "--dry-run"], capsys)
    if name == "preset":
        path = tmp / "p.toml"
        return path, _cli(["run", "--config", str(path), "--out", str(tmp / "o")], capsys)
    if name == "model file":
        path = tmp / "m.pt"
        return path, _cli(["info", "--checkpoint", str(path)], capsys)
    if name == "metrics.jsonl (resume)":
        path = tmp / "run" / "metrics.jsonl"
        return path, lambda: checkpoint.read_metrics(path, keep=1)
    if name == "metrics.jsonl (report)":
        path = tmp / "run" / "metrics.jsonl"
        return path, lambda: rundata.read_metrics(path)
    if name == "config.json (resume)":
        path = tmp / "run" / "config.json"
        return path, lambda: rundir.write_config(load_config("demo"), path.parent, "train")
    path = tmp / "run" / "last.pt"
    return path, lambda: checkpoint.load_checkpoint(path)


PLACES = ["image", "results.json", "sweep file", "preset", "model file", "metrics.jsonl (resume)",
          "metrics.jsonl (report)", "config.json (resume)", "last.pt"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("place", PLACES)
def test_a_special_file_where_ncslim_reads_is_named_not_opened(tmp_path, capsys, monkeypatch,
                                                               place, kind):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path, call = _place(place, tmp_path, capsys)
    make_special(path, kind)
    box = bounded(call, tmp_path)
    if place == "image" and kind == "directory":  # a subfolder, searched for images (none)
        assert len(box["value"].train_labels) == 6
        return
    message = box["value"] if "value" in box else str(box["error"])
    assert "error" not in box or isinstance(box["error"], (ValueError, FileNotFoundError)), box
    assert str(path) in message and "\n" not in message
    assert any(word in message for word in KINDS[kind].split("|")), message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "loop"])
def test_special_files_in_place_of_dataset_files_or_the_cache_are_passed_over(
        tmp_path, monkeypatch, kind):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        make_special(tmp_path / "fm" / name, kind)
    box = bounded(lambda: load_dataset("fashion-mnist", tmp_path / "fm"), tmp_path)
    assert isinstance(box.get("error"), DataError) and "data not found" in str(box["error"])
    cache = make_special(tmp_path / "cache.pt", kind)
    assert bounded(lambda: foldercache.read_cache(cache, "k", (1, 1), 8), tmp_path) == {
        "value": None}


@pytest.mark.parametrize("argv", [["report", "{d}/runs"], ["sweep", "{d}/s.toml", "--dry-run"],
                                  ["run", "--dataset", "folder", "--data-dir", "{d}/img",
                                   "--out", "{d}/o", *TINY]], ids=["report", "sweep", "run"])
def test_the_cli_ends_in_bounded_time_on_a_fifo(tmp_path, argv):
    make_folder(tmp_path / "img", train=3, val=1)
    for fifo in ("runs/a/results.json", "s.toml", "img/train/dog/x.jpg"):
        make_special(tmp_path / fifo, "fifo")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "ncslim", *(a.format(d=tmp_path) for a in argv)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is a FIFO, not a regular file" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


POOL_OWNER = """
import os, sys, time
from ncslim.data import decode, orphan
if sys.argv[1] == "watchdog":
    orphan._prctl_death_signal = lambda: False
    orphan.POLL_SECONDS = 0.1
pool = decode._executor("processes", 2)
jobs = [pool.submit(time.sleep, 600) for _ in range(2)]
time.sleep(1)
print(" ".join(str(pid) for pid in pool._processes), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie is dead, waiting to be reaped


@pytest.mark.parametrize("how", ["prctl", "watchdog"])
def test_decoding_workers_die_with_their_sigkilled_parent(how):
    owner = subprocess.Popen([sys.executable, "-c", POOL_OWNER, how], stdout=subprocess.PIPE,
                             text=True)
    try:
        ready, _, _ = select.select([owner.stdout], [], [], 60)  # a hang fails, not blocks
        workers = [int(pid) for pid in owner.stdout.readline().split()] if ready else []
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # never leave one behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"


# ----------------------------------------------------------------------------- data not meant

LINKS = {  # where a link goes (relative to the data folder d) -> what it points to
    "class to its parent train/": ("val", "train/x", "."),
    "class to the data folder (val/ below it)": ("val", "train/x", ".."),
    "class to a test class": ("val", "train/x", "../val/cat"),
    "class to a sibling class": ("val", "train/x", "cat"),
    "test class to its train class": ("val", "val/cat", "../train/cat"),
    "val/ to train/": ("val", "val", "train"),
    "train/ to the data folder": ("val", "train", "."),
    "held-out class to the data folder": (None, "x", "."),
    "held-out class to a sibling": (None, "x", "dog"),
    "class linked to itself": ("val", "train/x", "x"),
    "class whose target is gone": ("val", "train/x", "gone"),
    "two links in a cycle": ("val", "train/x", "y"),
}


@pytest.mark.parametrize("case", LINKS)
def test_a_class_folder_that_is_another_folder_through_a_link_is_refused(tmp_path, case):
    held, where, target = LINKS[case]
    root = make_folder(tmp_path / "d", train=3, val=1, held=held)
    if held is None:  # the class folders directly in d
        for name in ("cat", "dog"):
            (root / "train" / name).rename(root / name)
        (root / "train").rmdir()
    link = root / where
    if link.exists():
        os.rename(link, tmp_path / "moved")
    link.symlink_to(target)
    if case == "two links in a cycle":
        (link.parent / "y").symlink_to("x")
    with pytest.raises(DataError) as err:
        scan_folder(root)
    assert "\n" not in str(err.value) and "link" in str(err.value)


@pytest.mark.parametrize("held", ["val", None])
def test_a_single_class_is_refused(tmp_path, held):
    root = make_folder(tmp_path / "d", classes=("cat",), train=4, val=1, held=held)
    with pytest.raises(DataError, match="one class folder .cat/.*two or more"):
        scan_folder(root)


@pytest.mark.parametrize("out", ["{d}/run", "{d}/train/cat/run", "{d}", "{link}/run"])
def test_an_out_inside_the_image_folder_is_refused_before_anything_is_written(
        tmp_path, capsys, out):
    root = make_folder(tmp_path / "d", train=3, val=1)
    (tmp_path / "link").symlink_to(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = out.format(d=root, link=tmp_path / "link")
    assert main(["train", "--dataset", "folder", "--data-dir", str(root), *TRAIN,
                 "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is inside --data-dir" in err and "--out" in err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


@pytest.mark.parametrize("given", ["empty", "other dataset", "env"])
def test_a_data_dir_without_the_data_is_an_error_not_the_system_copy(
        tmp_path, monkeypatch, given):
    monkeypatch.setattr(catalog, "DEBIAN_ROOT", tmp_path / "debian")
    write_fashion(tmp_path / "debian" / "fashion-mnist", monkeypatch)
    assert len(load_dataset("fashion-mnist").train_labels) == 64  # found there without a dir
    mine = tmp_path / "mine"
    mine.mkdir()
    if given == "other dataset":
        (mine / "cifar-10-python.tar.gz").write_bytes(b"x")
    if given == "env":
        monkeypatch.setenv("NCSLIM_DATA", str(tmp_path / "debian"))
    with pytest.raises(DataError, match="data not found") as err:
        load_dataset("fashion-mnist", mine)
    assert f"looked in {mine}, {mine / 'fashion-mnist'};" in str(err.value)


def _fingerprint(root: Path) -> str:
    return load_dataset("folder", root, input_size=16).info.fingerprint


@pytest.mark.parametrize("change", ["add", "remove", "rewrite", "rename", "relabel"])
def test_the_folder_fingerprint_follows_its_files(tmp_path, monkeypatch, change):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "d", train=3, val=1)
    first = _fingerprint(root)
    assert _fingerprint(root) == first  # nothing changed: the same
    image = root / "train" / "cat" / "0.jpg"
    if change == "add":
        (root / "train" / "dog" / "new.jpg").write_bytes(image.read_bytes())
    elif change == "remove":
        (root / "train" / "dog" / "0.jpg").unlink()
    elif change == "rewrite":  # the same bytes written again: the mtime differs
        os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    elif change == "rename":
        image.rename(image.with_name("9.jpg"))
    else:
        image.rename(root / "train" / "dog" / "cat0.jpg")
    assert _fingerprint(root) != first


def test_a_resumed_folder_run_checks_its_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "d", train=4, val=1)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "folder", "--data-dir", str(root), "--input-size", "16",
            *TRAIN, "--out", str(out)]
    assert main(argv) == 0
    record = (out / "config.json").read_bytes()
    assert json.loads(record)["data_fingerprint"] == _fingerprint(root)
    assert main([*argv, "--resume"]) == 0  # the same images: resumes (nothing left to do)
    (root / "train" / "dog" / "new.jpg").write_bytes((root / "train/cat/0.jpg").read_bytes())
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not the ones the run started with" in err
    assert (out / "config.json").read_bytes() == record
    with pytest.raises(ValueError, match="not the ones"):  # any command's resume
        rundir.write_config(load_config("demo"), out, "train", "0" * 32)

