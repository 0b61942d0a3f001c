from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys

import pytest
import torch
from conftest import TINY_IDS, TINY_MODELS, spread_bn

import ncslim
from ncslim.models.files import atomic_write_text, run_lock
from ncslim.util.liverun import _claim


@pytest.mark.parametrize(("arch", "kwargs"), TINY_MODELS, ids=TINY_IDS)
@pytest.mark.parametrize("pruned", [False, True])
def test_round_trip_reproduces_outputs_exactly(arch, kwargs, pruned, tmp_path, images):
    model = spread_bn(ncslim.build_model(arch, num_classes=4, in_channels=1, **kwargs)).eval()
    if pruned:
        model, _ = ncslim.prune_model(model, ratio=0.5, compensate=True)
    path = tmp_path / "m.pt"
    ncslim.save_model(model, path)
    loaded = ncslim.load_model(path)
    assert type(loaded) is type(model) and loaded.channels == model.channels
    assert not loaded.training
    x = images(2, 1)
    assert torch.equal(loaded(x), model(x))
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in model.parameters()]
    assert loaded.pruned_from == model.pruned_from and (model.pruned_from is not None) == pruned


def test_file_holds_plain_data_only(tmp_path):
    model, _ = ncslim.prune_model(spread_bn(ncslim.build_model("densenet", width=0.25, depth=10)),
                                  ratio=0.4)
    ncslim.save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["format"] == "ncslim.model" and payload["config"]["arch"] == "densenet"
    assert payload["config"]["channels"]["select"]  # the kept indices travel with the weights


def test_no_temporary_files_left(tmp_path):
    ncslim.save_model(ncslim.build_model("vgg", width=0.125, depth=11), tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ncslim.load_model(tmp_path / "absent.pt")


def test_corrupt_and_truncated_files(tmp_path):
    good = tmp_path / "m.pt"
    ncslim.save_model(ncslim.build_model("vgg", width=0.125, depth=11), good)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(b"\x00not a model at all" * 50)
    for path in (truncated, garbage):
        with pytest.raises(ncslim.ModelFileError, match="not a readable ncslim file"):
            ncslim.load_model(path)


def test_foreign_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(ncslim.build_model("vgg", width=0.125, depth=11).state_dict(), path)
    with pytest.raises(ncslim.ModelFileError, match="not an ncslim model file"):
        ncslim.load_model(path)


def test_weights_that_do_not_fit_the_spec(tmp_path):
    path = tmp_path / "m.pt"
    model = ncslim.build_model("vgg", width=0.125, depth=11)
    ncslim.save_model(model, path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["channels"][0] = 5
    torch.save(payload, path)
    with pytest.raises(ncslim.ModelFileError, match="do not fit together"):
        ncslim.load_model(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["features.0.weight", "features.1.running_var",
                                   "classifier.bias"])
def test_a_model_with_nan_or_inf_is_never_written_nor_read(tmp_path, bad, where):
    model = ncslim.build_model("vgg", width=0.125, depth=11)
    path = tmp_path / "m.pt"
    ncslim.save_model(model, path)
    good = path.read_bytes()
    with torch.no_grad():
        model.state_dict()[where].view(-1)[0] = bad
    named = f"NaN or infinite values \\({where}\\)"
    with pytest.raises(ValueError, match=f"{named} and is not written"):
        ncslim.save_model(model, path)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    payload = torch.load(path, weights_only=True)
    payload["state_dict"][where].view(-1)[0] = bad
    torch.save(payload, path)
    with pytest.raises(ncslim.ModelFileError, match=f"holds {named}"):
        ncslim.load_model(path)


@pytest.mark.parametrize("record", [{"params": 10}, {"params": -1, "flops": 1, "channels": 1},
                                    "big", {"params": 1.5, "flops": 1, "channels": 1}])
def test_a_bad_pruned_from_record_is_refused(tmp_path, record):
    path = tmp_path / "m.pt"
    ncslim.save_model(ncslim.prune_model(ncslim.build_model("vgg", width=0.125, depth=11),
                                         ratio=0.3)[0], path)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "pruned_from": record}, path)
    with pytest.raises(ncslim.ModelFileError, match="'pruned_from' must hold positive"):
        ncslim.load_model(path)


@pytest.mark.parametrize("drop", ["model", "optimizer", "epoch"])
def test_an_incomplete_training_checkpoint_is_named(tmp_path, drop):
    from ncslim.run.train import load_checkpoint

    state = {"format": "ncslim.checkpoint", "epoch": 1, "best_acc": 0.5, "optimizer": {},
             "scaler": {}, "model": {}}
    del state[drop]
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=f"incomplete training checkpoint \\(lacks {drop}"):
        load_checkpoint(tmp_path / "last.pt")


class CodeCarrying:
    """Unpickling this opens (creates) ``marker``: proof that code from the file ran."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(("name", "payload", "loader"), [
    ("evil.pt", {"format": "ncslim.model", "payload": None}, ncslim.load_model),
    ("last.pt", {"format": "ncslim.checkpoint", "optimizer": None},
     # --resume's path
     lambda path: importlib.import_module("ncslim.run.train").load_checkpoint(path)),
])
def test_code_in_a_checkpoint_is_never_run(tmp_path, name, payload, loader):
    marker = tmp_path / "pwned"
    key = next(k for k, v in payload.items() if v is None)
    path = tmp_path / name
    torch.save({**payload, key: CodeCarrying(marker)}, path)
    with pytest.raises(ncslim.ModelFileError):
        loader(path)
    assert not marker.exists()


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_written_files_get_the_mode_open_gives(tmp_path, umask):
    with open(tmp_path / "plain.txt", "w") as f:  # what any other tool writes
        f.write("x")
    ncslim.save_model(ncslim.build_model("vgg", width=0.0625, depth=11), tmp_path / "m.pt")
    atomic_write_text(tmp_path / "results.json", "{}")
    expected = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    for name in ("m.pt", "results.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_a_rewritten_file_keeps_its_mode_as_with_open(tmp_path, umask):
    for mode in (0o640, 0o604):
        (tmp_path / "plain.txt").write_text("x")
        atomic_write_text(tmp_path / "config.json", "{}")
        for name in ("plain.txt", "config.json"):
            os.chmod(tmp_path / name, mode)
        (tmp_path / "plain.txt").write_text("y")
        atomic_write_text(tmp_path / "config.json", "{\"a\": 1}")
        assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode
        assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "plain.txt"]


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    out = tmp_path / "run"
    with run_lock(out, fresh=True):
        assert (out / ".lock").read_text().strip() == str(os.getpid())
        (out / "results.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    with pytest.raises(ValueError, match="already holds a run"), run_lock(out, fresh=True):
        pass
    with pytest.raises(KeyError), run_lock(out, fresh=False):
        raise KeyError("the run failed")
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    (out / "results.json").unlink()
    (out / ".lock").write_text("12345\n")  # left by a SIGKILLed run: unlocked, so no run
    with run_lock(out, fresh=True):
        assert (out / ".lock").read_text().strip() == str(os.getpid())
    assert not list(out.iterdir())


def test_a_claim_cleans_only_the_partial_files_its_lock_covers(tmp_path):
    out = tmp_path / "runs"
    own = out / "train" / ".model.pt.1a2b3c4d.tmp"  # a writer of this run, cut short
    own.parent.mkdir(parents=True)
    own.write_bytes(b"half")
    live = out / "other" / "train" / ".last.pt.5e6f7a8b.tmp"  # another run, saving right now
    live.parent.mkdir(parents=True)
    live.write_bytes(b"being written")
    with run_lock(out / "other", fresh=False):
        (out / "other" / "train" / ".last.pt.5e6f7a8b.tmp").write_bytes(b"being written")
        with run_lock(out, fresh=False):
            assert not own.exists()
            assert live.read_bytes() == b"being written"  # its folder holds its own .lock


CONTENDER = """
import os, sys, time
from ncslim.models.files import run_lock
out, rounds = sys.argv[1], int(sys.argv[2])
done = 0
while done < rounds:
    try:
        with run_lock(out, fresh=False):
            count = os.path.join(out, "count")
            n = int(open(count).read()) if os.path.exists(count) else 0
            with open(os.path.join(out, "log"), "a") as log:
                log.write(f"in {os.getpid()}\\n")
                log.flush()
                time.sleep(0.001)
                log.write(f"out {os.getpid()}\\n")
            with open(count, "w") as f:
                f.write(str(n + 1))
        done += 1
    except ValueError:
        time.sleep(0.0005)
"""


def test_contending_processes_exclude_each_other_while_the_lock_file_comes_and_goes(tmp_path):
    out, processes, rounds = tmp_path / "run", 3, 40
    out.mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(out), str(rounds)])
               for _ in range(processes)]
    assert [w.wait(timeout=300) for w in workers] == [0] * processes
    log = (out / "log").read_text().split()
    assert len(log) == 4 * processes * rounds
    for i in range(0, len(log), 4):  # each "in PID" is followed by that PID's "out"
        assert log[i] == "in" and log[i + 2] == "out" and log[i + 1] == log[i + 3], log[i:i + 4]
    assert (out / "count").read_text() == str(processes * rounds)
    assert sorted(p.name for p in out.iterdir()) == ["count", "log"]


@pytest.mark.parametrize("holder_ends", [False, True], ids=["after-open", "while-refusing"])
def test_a_lock_file_removed_under_a_claimant_is_not_trusted(tmp_path, monkeypatch, holder_ends):
    """The holder removes the file between the claimant's open and its flock (or while the
    claimant's flock is refused): the claimant must lock the file now at the path instead."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    real, calls = fcntl.flock, []

    def racing(handle, op):
        calls.append(os.fstat(handle.fileno()).st_ino)
        if len(calls) == 1:
            (out / ".lock").unlink()  # the holder, on its way out
            if holder_ends:
                raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(handle, op)

    monkeypatch.setattr(fcntl, "flock", racing)
    handle, locked = _claim(out / ".lock", out)
    try:
        assert locked and len(calls) == 2
        assert os.fstat(handle.fileno()).st_ino == (out / ".lock").stat().st_ino
    finally:
        handle.close()


HOSTILE = r"""
import re, sys, torch, ncslim
path = sys.argv[1]
try:
    ncslim.load_model(path)
except ncslim.ModelFileError as err:
    print("refused:", err)
# VmHWM is this process's own peak; ru_maxrss would carry pytest's across exec
peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1])
print("peak_mib", peak_kib // 1024)
"""


@pytest.mark.parametrize(("arch", "channels", "message"), [
    ("vgg", "first layers 60000",
     "features.0.weight has shape \\(8, 3, 3, 3\\), the spec says \\(60000, 3, 3, 3\\)"),
    ("vgg", [4, "M", 4, "M", 4, "M", 4, "M", 10**9], "a layer of 1,000,000,000 channels"),
    ("vgg", [4] * 5000 + ["M"] * 4 + [4], "5,005 layers, more than 2000"),
    ("resnet", {"stem": 4, "planes": [4, 4, 4], "blocks": [10**6, 1, 1], "mid": [[1, 1]] * 3,
                "select": {}, "stream_bias": False}, "resnet channels: stem, 3 planes"),
    ("densenet", {"stem": 4, "growth": 10**6, "layers": [100, 100, 100], "select": {},
                  "stream_bias": False}, "a layer of 300,000,004 channels"),
])
def test_a_small_file_claiming_a_huge_network_is_refused_in_bounded_memory(
        tmp_path, arch, channels, message):
    path = tmp_path / "hostile.pt"
    model = ncslim.build_model("vgg", width=0.125, depth=11)
    ncslim.save_model(model, path)
    payload = torch.load(path, weights_only=True)
    if channels == "first layers 60000":  # the file's own spec; its second conv: 130 GB
        own = payload["config"]["channels"]
        channels = [60000, own[1], 60000, *own[3:]]
    payload["config"].update(arch=arch, channels=channels)
    torch.save(payload, path)
    assert path.stat().st_size < 1_000_000  # a small file; the network it claims: gigabytes
    done = subprocess.run([sys.executable, "-c", HOSTILE, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    refused, rss = done.stdout.splitlines()
    import re

    assert re.search(message, refused)
    assert int(rss.split()[1]) < 1024  # MiB: torch itself and the file, no network
