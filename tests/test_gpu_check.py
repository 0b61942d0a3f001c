"""scripts/gpu_check.sh: its CPU path runs every check at tiny sizes, so it cannot rot unseen."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gpu_check  # benchmarks/ is on the test path (pyproject.toml)
import pytest
import torch
from gpu_harness import CPU_SIZES, Context, Row, Skip

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def run_script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def test_the_cpu_path_runs_every_check_and_prints_a_table_and_a_json_line(tmp_path):
    done = run_script("--device", "cpu", "--work", str(tmp_path / "work"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["benchmark"] == "gpu_check" and result["device"] == "cpu"
    status = {row["check"]: row["status"] for row in result["rows"]}
    for name in ("steps float32", "steps float16+scaler", "steps bfloat16",
                 "steps channels-last", "steps compile", "resume after SIGKILL",
                 "torchrun (gloo, 2 processes)", "latency VGG-19 at 70%",
                 "latency DenseNet-40 at 40%", "latency ResNet-164 at 40%", "train VGG-19",
                 "train DenseNet-40", "train ResNet-164"):
        assert status.get(name) == "ok", (name, status)
    assert status["no-sync"] == "skipped"  # CUDA only, and named
    assert "CUDA only" in next(r["detail"] for r in result["rows"] if r["check"] == "no-sync")
    compiled = next(r for r in result["rows"] if r["check"] == "steps compile")
    assert compiled["values"]["graphs"] > 0  # really compiled, not eager under another name
    resumed = next(r for r in result["rows"] if r["check"] == "resume after SIGKILL")
    assert resumed["values"]["difference"] == 0.0
    assert any(line.startswith("check ") and "status" in line for line in lines)
    train = next(r for r in result["rows"] if r["check"] == "train VGG-19")["values"]
    assert train["epochs"] == 160 and train["run_s"] > 0 and train["loop_over_bare"] > 0


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host may have a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0_at_once():
    done = run_script(timeout=30)
    assert done.returncode == 0 and done.stderr == ""
    (line,) = done.stdout.splitlines()
    assert line.startswith("gpu_check: no GPU here") and "--device cpu" in line


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--device", "cuda:99"], "no CUDA device is usable" if not torch.cuda.is_available()
     else "--device cuda:99: this host has"),
    (["--device", "cpu", "--only", "nothing"], "--only 'nothing' names no check"),
    (["--bogus"], "unknown argument '--bogus' (flags: --device, --only, --work, --help)"),
    (["--device", "cpu", "extra"], "unknown argument 'extra'"),
    (["--device"], "--device needs a value"),
    (["--work", "--device", "cpu"], "--work needs a value, got '--device'"),
    (["--only=", "--device", "cpu"], "--only needs a value, got ''"),
    (["--only", "a b"], "--only 'a b' is not a comma-separated list of check names"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    done = run_script(*args, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("gpu_check: error:") and message in line


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage_and_exits_0_without_setting_up_anything(flag):
    done = subprocess.run(["bash", str(SCRIPT), "--device", "tpu", flag], cwd=ROOT, text=True,
                          capture_output=True, timeout=30,
                          env={**os.environ, "PYTHON": "/nonexistent/python"})
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("Usage: bash scripts/gpu_check.sh [--device")
    assert "--only" in done.stdout and "exit 2" in done.stdout


def test_a_failing_check_is_a_row_and_the_others_still_run(tmp_path):
    ctx = Context(torch.device("cpu"), CPU_SIZES, tmp_path, tmp_path)

    def broken(ctx):
        raise ValueError("the kernel returned garbage\nsecond line")

    def not_here(ctx):
        raise Skip("needs two GPUs")

    (row,) = gpu_check.run_check("broken", broken, ctx)
    assert row.status == "FAIL" and row.detail.startswith("ValueError: the kernel returned "
                                                          "garbage (test_gpu_check.py:")
    assert gpu_check.run_check("skip", not_here, ctx)[0].detail == "needs two GPUs"
    assert gpu_check.run_check("fine", lambda ctx: Row("fine", "ok", "x"), ctx)[0].status == "ok"


def test_the_generated_cifar10_files_load_through_ncslim(tmp_path):
    from ncslim.data import load_dataset

    gpu_check.write_cifar10(tmp_path, per_file=20)
    data = load_dataset("cifar10", tmp_path)
    assert data.train_images.shape == (100, 3, 32, 32) and data.test_labels.shape == (20,)
    assert int(data.train_labels.max()) <= 9
