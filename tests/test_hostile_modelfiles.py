"""A model file never runs code, whatever it names (classes 1 and 2 of issue 25 section 1;
3 and 4 are in ``test_hostile_modelrecords.py``).

(1) A file whose spec names a builder module imports it only with the user's consent
(``--trust-model-code MODULE`` / ``trust_code=``), and never from the current folder or the
file's folder on its own; (2) a builder that exits or raises at import, build or forward is one
line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ncslim
from ncslim.cli import main
from ncslim.models import build_model
from ncslim.models.imported import require_consent

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
FASHION = Path("/usr/share/datasets/fashion-mnist")
NET = '''
from torch import nn


def small(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''
MARKER = 'open({marker!r}, "w").write("imported")\n'


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "\x1b" not in err
    return err


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A model file naming ``evilmod:small``; ``evilmod.py`` writes ``marker`` when imported.
    The file was made from the same network in ``goodnet``, a module on sys.path."""
    good = tmp_path / "good"
    good.mkdir()
    (good / "goodnet.py").write_text(NET)
    monkeypatch.syspath_prepend(str(good))
    model = build_model("imported", 10, 1, channels={"builder": "goodnet:small"})
    files = tmp_path / "files"
    files.mkdir()
    ncslim.save_model(model, files / "model.pt")
    payload = torch.load(files / "model.pt", weights_only=True)
    payload["config"]["channels"]["builder"] = "evilmod:small"
    torch.save(payload, files / "model.pt")
    marker = tmp_path / "MARKER"
    source = MARKER.format(marker=str(marker)) + NET
    for name in ("evilmod", "goodnet"):
        sys.modules.pop(name, None)
    yield {"file": files / "model.pt", "files": files, "marker": marker, "source": source,
           "cwd": tmp_path / "cwd"}
    sys.modules.pop("evilmod", None)
    sys.modules.pop("goodnet", None)


COMMANDS = {
    "info": lambda f: ["info", "--checkpoint", f],
    "prune": lambda f: ["prune", "--checkpoint", f, "--ratio", "0.5", "--out", f + ".out"],
    "finetune": lambda f: ["finetune", "--checkpoint", f, "--out", f + ".ft"],
    "export": lambda f: ["export", f, "--format", "torchscript"],
}


@pytest.mark.parametrize("where", ["cwd", "file's folder"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_file_naming_a_module_imports_nothing_without_consent(evil, monkeypatch, capsys,
                                                                 where, command):
    evil["cwd"].mkdir()
    folder = evil["cwd"] if where == "cwd" else evil["files"]
    (folder / "evilmod.py").write_text(evil["source"])
    monkeypatch.chdir(evil["cwd"])
    err = one_line_error(capsys, main(COMMANDS[command](str(evil["file"]))))
    assert "would import the module evilmod" in err and "--trust-model-code evilmod" in err
    assert not evil["marker"].exists() and "evilmod" not in sys.modules
    assert sorted(p.name for p in evil["files"].iterdir()) == sorted(
        ["model.pt", *(["evilmod.py"] if where != "cwd" else [])])  # nothing written
    with pytest.raises(ncslim.ModelFileError, match="pass --trust-model-code evilmod"):
        ncslim.load_model(evil["file"], trust_code="goodnet")  # consent for another module
    assert not evil["marker"].exists()


def test_python_dash_m_in_the_folder_of_the_module_imports_nothing(evil):
    """``python -m ncslim`` puts the current folder first on sys.path: still no import."""
    (evil["files"] / "evilmod.py").write_text(evil["source"])
    env = {**os.environ, "PYTHONPATH": str(Path(ncslim.__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "ncslim", "info", "--checkpoint", "model.pt"],
                          cwd=evil["files"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "would import the module evilmod" in done.stderr and not evil["marker"].exists()


def test_consent_imports_from_the_current_folder_only_and_for_that_import_alone(
        evil, monkeypatch, capsys):
    (evil["files"] / "evilmod.py").write_text(evil["source"])
    evil["cwd"].mkdir()
    monkeypatch.chdir(evil["cwd"])  # the module lies beside the file only: never searched there
    code = main(["info", "--trust-model-code", "evilmod", "--checkpoint", str(evil["file"])])
    assert "cannot import evilmod" in one_line_error(capsys, code)
    assert not evil["marker"].exists()
    (evil["cwd"] / "evilmod.py").write_text(evil["source"])
    model = ncslim.load_model(evil["file"], trust_code="evilmod")  # consent, and it is here
    assert evil["marker"].exists() and model.title() == "evilmod:small (--model)"
    assert str(evil["cwd"]) not in sys.path  # no later import can pick up a file lying here


@pytest.mark.parametrize("trust", ["evil mod", "evilmod;rm", "a..b", "", "1x", "evilmod:small"])
def test_a_consent_that_names_no_module_is_one_line(evil, capsys, trust):
    err = one_line_error(capsys, main(["info", "--trust-model-code", trust, "--checkpoint",
                                       str(evil["file"])]))
    assert "--trust-model-code must name a module or package" in err
    assert not evil["marker"].exists()


def test_the_standard_library_is_refused_even_with_consent(evil, capsys):
    payload = torch.load(evil["file"], weights_only=True)
    for builder in ("os:system", "subprocess:run", "shutil:rmtree"):
        payload["config"]["channels"]["builder"] = builder
        torch.save(payload, evil["file"])
        module = builder.split(":")[0]
        err = one_line_error(capsys, main(["info", "--trust-model-code", module,
                                           "--checkpoint", str(evil["file"])]))
        assert f"{module} is part of Python's standard library" in err


modules = st.from_regex(r"[a-z_][a-z0-9_]{0,6}(\.[a-z_][a-z0-9_]{0,6}){0,2}", fullmatch=True)


@SETTINGS
@given(module=modules, trust=st.lists(modules, max_size=3))
def test_consent_covers_exactly_the_named_modules_and_their_packages(module, trust):
    covered = any(module == t or module.startswith(t + ".") for t in trust)
    before = set(sys.modules)
    try:
        require_consent(f"{module}:build", trust, "m.pt")
        allowed = True
    except ValueError as err:
        allowed = False
        assert (f"--trust-model-code {module}" in str(err)
                or "standard library" in str(err)), err
    top = module.split(".")[0]
    assert allowed == (covered and top not in sys.stdlib_module_names)
    assert set(sys.modules) == before  # deciding never imports


@SETTINGS
@given(builder=st.text(min_size=1, max_size=3000))
def test_a_hostile_builder_string_is_one_printable_bounded_line(tmp_path_factory, builder):
    model = build_model("vgg", 10, 1, width=0.0625, depth=11)
    path = tmp_path_factory.mktemp("b") / "m.pt"
    payload = ncslim.models.files.model_payload(model)
    payload["config"] = {**payload["config"], "arch": "imported",
                         "channels": {"builder": builder, "pruned": []}}
    torch.save(payload, path)
    with pytest.raises(ncslim.ModelFileError) as caught:
        ncslim.load_model(path)
    text = str(caught.value)
    assert text.isprintable() and len(text) < 600 + len(str(path)), text


# --- 2. builders that exit or raise while importing, building or running --------------------

FAILING = {
    "import-exit": "import sys\nsys.exit(3)\n",
    "import-exit-text": "raise SystemExit('bye\\x1b[2J')\n",
    "import-base": "class Odd(BaseException):\n    pass\nraise Odd('odd')\n",
    "build-exit": NET.replace("    return nn.Sequential", "    raise SystemExit(0)\n    return "
                                                         "nn.Sequential"),
    "build-base": NET.replace("    return nn.Sequential", "    raise GeneratorExit('g')\n"
                                                         "    return nn.Sequential"),
    "forward-exit": NET + "\n\nclass Out(nn.Module):\n    def __init__(self):\n"
                          "        super().__init__()\n        self.bn = nn.BatchNorm2d(1)\n"
                          "    def forward(self, x):\n        raise SystemExit(4)\n\n\n"
                          "def small2(num_classes, in_channels):\n    return Out()\n",
}


@pytest.fixture
def failing(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in FAILING:
        sys.modules.pop(f"fail_{name.replace('-', '_')}", None)


@pytest.mark.parametrize("case", sorted(FAILING))
def test_a_builder_that_exits_or_raises_is_one_line(failing, case):
    module = f"fail_{case.replace('-', '_')}"
    (failing / f"{module}.py").write_text(FAILING[case])
    function = "small2" if case == "forward-exit" else "small"
    with pytest.raises(ValueError) as caught:
        build_model("imported", 10, 1, channels={"builder": f"{module}:{function}"})
    text = str(caught.value)
    assert text.startswith(f"--model {module}:{function}") and text.isprintable()
    assert ("exited (SystemExit" in text) == ("exit" in case), text


def test_a_builder_that_exits_at_import_is_one_line_from_the_command_line(failing, capsys):
    (failing / "fail_import_exit.py").write_text(FAILING["import-exit"])
    out = failing / "run"
    code = main(["train", "--model", "fail_import_exit:small", "--out", str(out)])
    assert "importing fail_import_exit failed: it exited" in one_line_error(capsys, code)
    assert not out.exists()


def test_ctrl_c_in_a_builder_still_interrupts(failing):
    (failing / "fail_ctrl_c.py").write_text(NET.replace(
        "    return nn.Sequential", "    raise KeyboardInterrupt\n    return nn.Sequential"))
    with pytest.raises(KeyboardInterrupt):
        build_model("imported", 10, 1, channels={"builder": "fail_ctrl_c:small"})
    sys.modules.pop("fail_ctrl_c", None)
