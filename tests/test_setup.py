"""scripts/setup.sh, demo.sh and test.sh: the environment they choose, what they install, their
one-line errors (with stub executables first on the PATH), and the whole demo from a clean clone
in a minimal environment (`env -i`, only the system's python3)."""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# One stub program for every faked command; it records its argv and acts on FAKE_* variables.
STUB = r'''
import json, os, sys
from pathlib import Path

prog, args, env = sys.argv[0], sys.argv[1:], os.environ
name = os.path.basename(prog)
with open(env["STUB_LOG"], "a") as log:
    log.write(json.dumps({"prog": prog, "args": args}) + "\n")
state = Path(env["STUB_STATE"])

if name == "id":
    print(env.get("FAKE_UID", "0") if "-u" in args else "uid=" + env.get("FAKE_UID", "0"))
elif name == "sudo":
    os.execvp(args[0], args)
elif name == "apt-get":
    if "install" in args and "python3-venv" in args:
        (state / "ensurepip").touch()
    sys.exit(int(env.get("FAKE_APT_RC", "0")))
elif name == "nvidia-smi":
    sys.exit(int(env.get("FAKE_GPU_RC", "0")))
elif name == "ncslim":
    pass
elif name in ("python", "python3"):
    prefix = Path(prog).parent.parent
    if args[0] == "-c":
        code = args[1]
        if "direct_url" in code:                       # is ncslim installed here?
            sys.exit(0 if env.get("FAKE_INSTALLED") == "1" else 1)
        if "find_spec" in code:                        # version, ensurepip, pip
            ensurepip = env.get("FAKE_ENSUREPIP", "1") == "1" or (state / "ensurepip").exists()
            print(env.get("FAKE_PY_VERSION", "3.11"), int(ensurepip), 1)
        elif "torch.__version__" in code:              # is torch importable?
            sys.exit(int(env.get("FAKE_TORCH_RC", "1")))
        else:
            sys.exit(99)
    elif args[:2] == ["-m", "venv"]:
        (Path(args[-1]) / "bin").mkdir(parents=True, exist_ok=True)
        (Path(args[-1]) / "bin" / "python").symlink_to(__file__)
    elif args[:3] == ["-m", "pip", "index"]:
        print(env.get("FAKE_INDEX", ""))
    elif args[:3] == ["-m", "pip", "install"]:
        if env.get("FAKE_PIP_FAIL") and env["FAKE_PIP_FAIL"] in " ".join(args):
            sys.exit(1)
        if "-e" in args and not (prefix / "bin" / "ncslim").exists():
            (prefix / "bin" / "ncslim").symlink_to(__file__)
    elif args[:2] in (["-m", "ruff"], ["-m", "pytest"]):
        pass
    else:
        sys.exit(99)
else:
    sys.exit(99)
'''
INDEX = ("torch (2.14.1)\nAvailable versions: 2.14.1, 2.13.0+cpu, 2.13.0, 2.10.0+cpu, "
         "2.9.0+cpu, 2.9.0")
# What the scripts may call besides the stubs (no sudo, apt-get, python3 or nvidia-smi here).
TOOLS = ["bash", "env", "dirname", "mktemp", "rm", "sort", "tail", "head", "grep", "sed", "tr",
         "cat", "date"]


class Sandbox:
    """A copy of the scripts in REPO, stubs in BIN, and nothing else on the PATH."""

    def __init__(self, tmp: Path):
        self.tmp, self.repo, self.bin = tmp, tmp / "repo", tmp / "bin"
        self.log, self.state = tmp / "calls.jsonl", tmp / "state"
        shutil.copytree(ROOT / "scripts", self.repo / "scripts")
        shutil.copy(ROOT / "pyproject.toml", self.repo)
        (tmp / "data" / "fashion-mnist").mkdir(parents=True)  # no dataset install to decide
        for d in (self.bin, tmp / "tools", self.state, tmp / "home"):
            d.mkdir()
        self.stub = tmp / "stub.py"
        self.stub.write_text(f"#!{sys.executable}\n{STUB}")
        self.stub.chmod(0o755)
        for tool in TOOLS:
            (tmp / "tools" / tool).symlink_to(shutil.which(tool))

    def add(self, *names: str, where: Path | None = None) -> None:
        for name in names:
            (where or self.bin).joinpath(name).symlink_to(self.stub)

    def env_dir(self, name: str = "myenv", ncslim: bool = False) -> Path:
        prefix = self.tmp / name
        (prefix / "bin").mkdir(parents=True)
        self.add("python", *(["ncslim"] if ncslim else []), where=prefix / "bin")
        return prefix

    def run(self, *args: str, script: str = "setup.sh", **env: str) -> subprocess.CompletedProcess:
        base = {"HOME": str(self.tmp / "home"), "PATH": f"{self.bin}:{self.tmp / 'tools'}",
                "STUB_LOG": str(self.log), "STUB_STATE": str(self.state), "FAKE_INDEX": INDEX,
                "NCSLIM_DATA": str(self.tmp / "data")}
        return subprocess.run([shutil.which("bash"), str(self.repo / "scripts" / script), *args],
                              env={**base, **env}, capture_output=True, text=True, timeout=60)

    def calls(self, name: str | None = None) -> list[dict]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        calls = [json.loads(line) for line in lines]
        return [c for c in calls if name is None or Path(c["prog"]).name == name]

    def pip_installs(self) -> list[tuple[str, list[str]]]:
        return [(c["prog"], c["args"][3:]) for c in self.calls()
                if c["args"][:3] == ["-m", "pip", "install"]]


@pytest.fixture
def box(tmp_path) -> Sandbox:
    box = Sandbox(tmp_path)
    box.add("python3", "id", "apt-get")
    return box


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("setup.sh: error: "), done.stderr
    assert done.stdout == ""
    return errors[0]


def test_root_installs_python3_venv_with_apt_then_makes_dot_venv_with_cpu_torch(box):
    done = box.run(FAKE_UID="0", FAKE_ENSUREPIP="0")
    assert done.returncode == 0, done.stderr
    venv = box.repo / ".venv"
    assert done.stdout == f"{venv}/bin\n"
    apt = [c["args"] for c in box.calls("apt-get")]
    assert any("install" in a and "python3-venv" in a for a in apt), apt
    assert box.calls("sudo") == []
    assert [c["args"] for c in box.calls("python3") if "venv" in c["args"]] == [
        ["-m", "venv", "--clear", str(venv)]]
    python = str(venv / "bin" / "python")
    # the newest +cpu build the (fake) index offers, not the newest torch, then ncslim
    assert box.pip_installs() == [(python, ["-q", "torch==2.13.0+cpu"]),
                                  (python, ["-q", "-e", "."])]


def test_non_root_with_sudo_installs_python3_venv_through_sudo(box):
    box.add("sudo")
    done = box.run(FAKE_UID="1000", FAKE_ENSUREPIP="0")
    assert done.returncode == 0, done.stderr
    sudo = [c["args"] for c in box.calls("sudo")]
    assert any(a[-1] == "python3-venv" and "apt-get" in a and "install" in a for a in sudo), sudo
    assert (box.repo / ".venv" / "bin" / "python").exists()


def test_non_root_without_sudo_and_no_venv_module_is_a_one_line_error(box):
    done = box.run(FAKE_UID="1000", FAKE_ENSUREPIP="0")
    line = one_error_line(done)
    assert "apt-get install python3-venv" in line and "python3" in line
    assert box.calls("apt-get") == [] and box.pip_installs() == []
    assert not (box.repo / ".venv").exists()


@pytest.mark.parametrize("version", ["3.9", "2.7"])
def test_python_older_than_3_10_is_a_one_line_error(box, version):
    line = one_error_line(box.run(FAKE_PY_VERSION=version))
    assert "Python >= 3.10" in line and f"Python {version}" in line
    assert box.pip_installs() == [] and box.calls("apt-get") == []
    assert not (box.repo / ".venv").exists()


@pytest.mark.parametrize("variable", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_an_active_environment_is_used_and_no_dot_venv_is_made(box, variable):
    env = box.env_dir()
    done = box.run("--dev", **{variable: str(env)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{env}/bin\n"
    assert not (box.repo / ".venv").exists()
    assert [c for c in box.calls("python3") if "venv" in c["args"]] == []
    python = str(env / "bin" / "python")
    assert box.pip_installs() == [(python, ["-q", "torch==2.13.0+cpu"]),
                                  (python, ["-q", "-e", ".[dev]"])]


def test_an_active_environment_with_an_old_python_is_a_one_line_error(box):
    line = one_error_line(box.run(VIRTUAL_ENV=str(box.env_dir()), FAKE_PY_VERSION="3.8"))
    assert "Python >= 3.10" in line and "virtual environment" in line


def test_a_torch_already_there_is_kept(box):
    done = box.run(VIRTUAL_ENV=str(box.env_dir()), FAKE_TORCH_RC="0")
    assert done.returncode == 0, done.stderr
    assert [args for _, args in box.pip_installs()] == [["-q", "-e", "."]]
    assert [c for c in box.calls() if c["args"][:3] == ["-m", "pip", "index"]] == []


def test_everything_in_place_installs_nothing(box):
    env = box.env_dir(ncslim=True)
    done = box.run(VIRTUAL_ENV=str(env), FAKE_INSTALLED="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{env}/bin\n"
    assert box.pip_installs() == [] and box.calls("apt-get") == []


def test_a_second_run_reuses_dot_venv(box):
    assert box.run().returncode == 0
    box.log.unlink()
    done = box.run(FAKE_INSTALLED="1")
    assert done.returncode == 0, done.stderr
    assert box.pip_installs() == [] and box.calls("python3") == []


@pytest.mark.parametrize(("gpu", "torch_env", "index", "expected"), [
    ("0", None, INDEX, ["torch"]),                                    # a GPU: PyPI's (CUDA) torch
    ("0", "torch --index-url https://download.pytorch.org/whl/cu126", INDEX,
     ["torch", "--index-url", "https://download.pytorch.org/whl/cu126"]),
    ("1", None, INDEX, ["torch==2.13.0+cpu"]),                        # no GPU: newest +cpu build
    (None, None, "torch (2.14.1)\nAvailable versions: 2.14.1, 2.13.0", # none: the CPU index
     ["--retries", "1", "--timeout", "15", "torch", "--index-url", CPU_INDEX]),
], ids=["gpu", "NCSLIM_TORCH", "cpu-build-from-pip-sources", "cpu-index"])
def test_which_torch_is_installed(box, gpu, torch_env, index, expected):
    if gpu is not None:
        box.add("nvidia-smi")
    env = {"FAKE_GPU_RC": gpu or "0", "FAKE_INDEX": index}
    if torch_env:
        env["NCSLIM_TORCH"] = torch_env
    done = box.run(**env)
    assert done.returncode == 0, done.stderr
    assert [args for _, args in box.pip_installs()] == [["-q", *expected], ["-q", "-e", "."]]


def test_no_cpu_torch_anywhere_is_a_one_line_error_naming_ncslim_torch(box):
    done = box.run(FAKE_INDEX="Available versions: 2.14.1", FAKE_PIP_FAIL="whl/cpu")
    line = one_error_line(done)
    assert "NCSLIM_TORCH" in line and CPU_INDEX in line
    assert [args[-1] for _, args in box.pip_installs()] == [CPU_INDEX]  # ncslim not installed


def test_demo_runs_the_environments_ncslim_with_the_extra_arguments(box):
    env = box.env_dir(ncslim=True)
    box.add("ncslim")  # another ncslim first on the PATH must not be the one that runs
    done = box.run("--epochs", "1", "--penalty", "l1", script="demo.sh", VIRTUAL_ENV=str(env),
                   FAKE_INSTALLED="1")
    assert done.returncode == 0, done.stderr
    runs = box.calls("ncslim")
    assert [c["prog"] for c in runs] == [str(env / "bin" / "ncslim")]
    args = runs[0]["args"]
    assert args[:2] == ["run", "--out"] and re.fullmatch(r"runs/demo-\d{8}-\d{6}", args[2])
    assert args[3:] == ["--epochs", "1", "--penalty", "l1"]


def test_test_sh_sets_up_the_dev_extra_then_runs_ruff_and_pytest_in_the_environment(box):
    env = box.env_dir(ncslim=True)
    done = box.run("-k", "cli", script="test.sh", VIRTUAL_ENV=str(env), FAKE_INSTALLED="1")
    assert done.returncode == 0, done.stderr
    python = str(env / "bin" / "python")
    calls = [c["args"] for c in box.calls() if c["prog"] == python]
    assert [a[-1] for a in calls if "direct_url" in a[1]] == ["dev"]  # checked with --dev
    assert calls[-2:] == [["-m", "ruff", "check", "."], ["-m", "pytest", "-q", "-k", "cli"]]


def test_dot_venv_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "-q", ".venv/bin/python"], cwd=ROOT)
    assert done.returncode == 0, ".venv/ is not in .gitignore"


# --- the whole demo, for real ---------------------------------------------------------------

def _site_dirs_of_system_python() -> dict[str, list[str]]:
    code = "import json, site; print(json.dumps(site.getsitepackages()))"
    dirs = json.loads(subprocess.run([str(SYSTEM_PYTHON), "-c", code], env={}, check=True,
                                     capture_output=True, text=True).stdout)
    return {d: sorted(os.listdir(d)) for d in dirs if os.path.isdir(d)}


def _carry_pip_configuration(home: Path) -> None:
    """Write the calling user's pip configuration (its files and PIP_* variables) into HOME.

    `env -i HOME=<tmp>` drops both, and where pip finds packages is part of the machine a user
    runs the scripts on (here, the only CPU build of torch may be in a local wheel folder).
    """
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                          text=True)
    config = configparser.ConfigParser(interpolation=None)
    entries = [re.fullmatch(r"([^=]+?)\.([^.=]+)=(.*)", line)
               for line in done.stdout.splitlines()]
    entries = sorted((m for m in entries if m), key=lambda m: m[1] == ":env:")  # env wins
    for m in entries:
        section = "global" if m[1] == ":env:" else m[1]
        config.setdefault(section, {})[m[2]] = ast.literal_eval(m[3])
    (home / ".config" / "pip").mkdir(parents=True)
    with open(home / ".config" / "pip" / "pip.conf", "w") as f:
        config.write(f)


def test_demo_from_a_clean_clone_in_a_minimal_environment(tmp_path):
    """env -i, only /usr/bin etc. on the PATH: demo.sh makes .venv/ and ends with results.json."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3")
    if not DEBIAN_FMNIST.is_dir() and not (
            shutil.which("apt-get") and (os.geteuid() == 0 or shutil.which("sudo"))):
        pytest.skip("Fashion-MNIST is not in /usr/share/datasets and apt cannot install it")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    clone, home, out = tmp_path / "clone", tmp_path / "home", tmp_path / "run"
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    _carry_pip_configuration(home)
    before = _site_dirs_of_system_python()

    start = time.monotonic()
    done = subprocess.run(
        ["env", "-i", f"HOME={home}", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "bash",
         "scripts/demo.sh", "--limit-train", "256", "--limit-test", "128", "--epochs", "1",
         "--finetune-epochs", "1", "--width", "0.0625", "--depth", "11", "--device", "cpu",
         "--out", str(out)], cwd=clone, capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"demo.sh from a clean clone: {took:.0f} s")
    assert (out / "results.json").is_file()
    assert json.loads((out / "results.json").read_text())
    assert (clone / ".venv" / "bin" / "ncslim").is_file()
    assert "externally-managed-environment" not in done.stderr
    # nothing went into the system Python: not its site-packages, not the user's site
    assert _site_dirs_of_system_python() == before
    assert not (home / ".local").exists()
    shutil.rmtree(clone / ".venv")  # 1.4 GB; pytest keeps the last runs' tmp folders
