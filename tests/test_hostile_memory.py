"""Bounded memory and time for any network (issue 25, section 4): a network larger than the
machine, a small model file that claims a large one, and a latency timing that would not fit or
not end are each refused in one line, before the allocation (images: test_hostile_images.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_hostile import _exit_2_one_line

import ncslim
from ncslim.cli import main
from ncslim.models import memory
from ncslim.report import summary

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- networks


GIB = 2**30
FAMILIES = {"vgg": [11, 13, 16, 19], "resnet": [20, 56, 110, 164, 1001],
            "densenet": [40, 100, 190]}


def _skeleton(arch: str, depth: int, width: float) -> torch.nn.Module:
    with torch.device("meta"):
        return ncslim.build_model(arch, width=width, depth=depth)


def _meta_bytes(arch: str, depth: int, width: float) -> tuple[int, int]:
    """(parameters, bytes of parameters and buffers), counted here on the meta device."""
    model = _skeleton(arch, depth, width)
    tensors = [*model.parameters(), *model.buffers()]
    return (sum(p.numel() for p in model.parameters()),
            sum(t.numel() * t.element_size() for t in tensors))


@pytest.fixture
def real_builds(monkeypatch) -> list[str]:
    """The families whose networks were built for real (not on the meta device) meanwhile."""
    from ncslim.models import base, densenet, resnet, vgg

    built = []

    def init(model: torch.nn.Module) -> None:
        if not next(model.parameters()).is_meta:
            built.append(type(model).__name__)
        base.init_weights(model)

    for family in (vgg, resnet, densenet):
        monkeypatch.setattr(family, "init_weights", init)
    return built


@st.composite
def networks(draw) -> tuple[str, int, float]:
    arch = draw(st.sampled_from(sorted(FAMILIES)))
    return arch, draw(st.sampled_from(FAMILIES[arch])), draw(st.sampled_from(
        [2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]))


@SETTINGS
@given(net=networks(), command=st.sampled_from(["info", "run"]))
def test_a_network_larger_than_the_memory_is_refused_before_it_is_built(
        tmp_path, capsys, monkeypatch, real_builds, net, command):
    arch, depth, width = net
    params, need = _meta_bytes(arch, depth, width)
    assume(need > 128 << 20)  # 64 of the 84 networks drawn from
    monkeypatch.setattr(memory, "available_memory", lambda: 256 << 20)  # 128 MiB allowed
    out = tmp_path / f"run-{arch}-{depth}-{width}"
    argv = [command, "--arch", arch, "--depth", str(depth), "--width", str(width)]
    argv += ["--out", str(out)] if command == "run" else ["--batch-size", "1"]
    err = _exit_2_one_line(argv, capsys)
    assert (f"{arch}: a network of {params:,} parameters would take {memory.gib(need)} of "
            f"memory, more than the 128 MiB allowed here (50% of the 256 MiB available); "
            f"choose a smaller --width or --depth") in err
    assert not out.exists() and not real_builds


SMALL = r"""
import os, re, subprocess, sys, time
from ncslim.cli import main
from ncslim.models import memory
if os.environ.get("AVAILABLE_MIB"):  # the memory a smaller machine would have
    memory.available_memory = lambda: int(os.environ["AVAILABLE_MIB"]) << 20
started = time.perf_counter()
code = main(sys.argv[1:])
peak = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1]) // 1024
print("result", code, peak, round(time.perf_counter() - started, 1))
"""


def _bounded(argv: list[str], most_mib: int = 1024, available_mib: int | None = None) -> str:
    """The one-line error of ``ncslim ARGV`` in a fresh process whose peak RSS (VmHWM) stays
    under ``most_mib`` and which ends within a minute; ``available_mib``: the memory the
    process counts on (default: this machine's)."""
    env = {**os.environ, "AVAILABLE_MIB": str(available_mib or "")}
    done = subprocess.run([sys.executable, "-c", SMALL, *argv], capture_output=True, text=True,
                          timeout=120, env=env)
    code, peak, seconds = done.stdout.split()[-3:]
    err = done.stderr.strip()
    assert int(code) == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert int(peak) < most_mib and float(seconds) < 60, (peak, seconds)
    return err


@pytest.mark.parametrize("argv", [
    ["info", "--arch", "vgg", "--depth", "19", "--width", "16"],  # 19 GiB
    ["info", "--arch", "densenet", "--depth", "190", "--width", "16"],  # 25 GiB
    ["info", "--arch", "resnet", "--depth", "2000", "--width", "16"],  # 19 GiB
])
def test_the_reported_cases_are_refused_in_bounded_memory(argv):
    """On a machine of 24 GiB, as the one they were reported on (a larger one may build them)."""
    assert _meta_bytes(argv[2], int(argv[4]), float(argv[6]))[1] > memory.MEMORY_SHARE * (24 << 30)
    err = _bounded(argv, available_mib=24 << 10)
    assert "would take" in err and "GiB of memory" in err and "choose a smaller --width" in err


def _view_file(path: Path, arch: str, width: float, input_size: int = 32) -> Path:
    """A model file whose tensors are expanded views of one number: a few KB that claim a
    network of ``width`` (hundreds of MB)."""
    from ncslim.models.files import FORMAT, FORMAT_VERSION

    with torch.device("meta"):
        skeleton = ncslim.build_model(arch, width=width, input_size=input_size)
    state = {name: torch.zeros((), dtype=t.dtype).expand(t.shape)
             for name, t in skeleton.state_dict().items()}
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "config": skeleton.config(),
                "state_dict": state}, path)
    assert path.stat().st_size < 1_000_000
    return path


@pytest.mark.parametrize(("arch", "width", "command"), [
    ("vgg", 3.0, "info"), ("resnet", 6.0, "prune"), ("densenet", 6.0, "export")])
def test_a_small_file_of_expanded_views_is_refused_in_bounded_memory(tmp_path, arch, width,
                                                                       command):
    path = _view_file(tmp_path / "views.pt", arch, width)
    argv = {"info": ["info", "--checkpoint", str(path)],
            "prune": ["prune", "--checkpoint", str(path), "--out", str(tmp_path / "p")],
            "export": ["export", str(path), "--format", "torchscript"]}[command]
    err = _bounded(argv, most_mib=512)  # the network it claims: 0.5-0.7 GiB
    assert "bytes but hold" in err and "expanded views, not weights" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["views.pt"]


# ----------------------------------------------------------------------------- info's timing


def _tiny(tmp_path: Path, input_size: int) -> Path:
    model = ncslim.build_model("vgg", width=0.0625, depth=11, input_size=input_size)
    ncslim.save_model(model, tmp_path / f"tiny{input_size}.pt")
    return tmp_path / f"tiny{input_size}.pt"


@pytest.mark.parametrize("flags", [
    ["--batch-size", "0"], ["--batch-size", "-64"], ["--latency-threads", "-1"],
    ["--latency-threads", str((os.cpu_count() or 1) + 1)], ["--latency-threads", "1000000"],
])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_info_refuses_a_batch_or_thread_count_before_reading_a_model(
        tmp_path, capsys, monkeypatch, flags, checkpoint):
    read = []
    monkeypatch.setattr("ncslim.cli.load_model", lambda *a: read.append(a))
    monkeypatch.setattr("ncslim.cli.build_model", lambda *a: read.append(a))
    argv = ["info", *flags] + (["--checkpoint", str(tmp_path / "m.pt")] if checkpoint else [])
    err = _exit_2_one_line(argv, capsys)
    name = flags[0]
    assert f"{name} " in err and "must be an integer" in err and not read
    if name == "--latency-threads":
        assert f"this machine has {os.cpu_count()} CPUs" in err


@SETTINGS
@given(batch=st.integers(1, 10**9), size=st.sampled_from([32, 256, 1024, 4096]))
def test_info_refuses_a_timing_whose_activations_would_not_fit(tmp_path, capsys, monkeypatch,
                                                                batch, size):
    """The input size is the model file's own; batch x activations against the memory."""
    path = tmp_path / f"tiny{size}.pt"
    if not path.exists():
        _tiny(tmp_path, size)
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * GIB)
    monkeypatch.setattr(summary, "latency_rows", lambda *a: pytest.fail("timed"))
    model = ncslim.load_model(path)
    # the first conv's output alone (4 channels, float32), in and out, for every image
    floor = batch * 4 * size * size * 4
    if floor <= GIB:
        return
    err = _exit_2_one_line(["info", "--checkpoint", str(path), "--batch-size", str(batch)],
                           capsys)
    assert (f"timing vgg at batch {batch} on {size}x{size} images would take " in err
            and "lower --batch-size" in err)
    need = batch * memory.forward_cost(model)[0]
    assert memory.gib(need) in err and need >= floor


def test_info_refuses_a_timing_that_would_not_end(capsys, monkeypatch, real_builds):
    """Its fewest passes at a quarter of this CPU's matrix-product rate: over 120 s."""
    monkeypatch.setattr("ncslim.models.measure.cpu_flops_per_s", lambda threads: 4e9)
    err = _exit_2_one_line(["info", "--arch", "vgg", "--width", "4"], capsys)
    flops = 64 * memory.forward_cost(_skeleton("vgg", 19, 4.0))[1]
    assert (f"timing vgg at batch 64 on 32x32 images would take about {4 * flops / 1e9:,.0f} s "
            f"({flops:,} FLOPs a pass, this CPU does ~1 GFLOP/s on convolutions), more than "
            f"120 s; lower --batch-size") in err
    assert not real_builds


def test_a_slow_model_is_warmed_up_once_and_timed_a_few_times():
    from ncslim.models.measure import SLOW_REPEATS, time_forward

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(time.sleep(0.02)))
    (timing,) = time_forward([model], (3, 8, 8), warmup=3, min_repeats=5, max_repeats=30,
                             budget_s=0.01)
    assert timing.runs == SLOW_REPEATS and len(calls) == 1 + SLOW_REPEATS


@pytest.mark.parametrize(("one", "batch", "refused"), [(1.0, 64, True), (0.5, 61, True),
                                                       (0.5, 60, False), (0.001, 64, False)])
def test_info_times_a_batch_only_if_its_time_at_batch_1_says_it_ends(capsys, monkeypatch, one,
                                                                     batch, refused):
    """The larger batch's fewest passes (1 + SLOW_REPEATS), extrapolated from one image's time
    at batch 1, must stay within 120 s; it is not timed otherwise."""
    from ncslim.models.measure import Latency

    timed = []

    def rows(models, shape, device, batches, threads):
        timed.extend(batches)
        return {f"batch_{b}": [Latency(one * b, one * b, one * b, 5, 1)] for b in batches}

    monkeypatch.setattr(summary, "latency_rows", rows)
    argv = ["info", "--arch", "vgg", "--depth", "11", "--width", "0.0625", "--batch-size",
            str(batch)]
    if not refused:
        assert main(argv) == 0 and timed == [1, batch]
        return
    err = _exit_2_one_line(argv, capsys)
    assert (f"timing vgg at batch {batch} would take about {4 * one * batch:,.0f} s (one "
            f"image: {1e3 * one:,.0f} ms), more than 120 s; lower --batch-size") in err
    assert timed == [1]
