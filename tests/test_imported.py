"""--model package.module:function: the user's own CNN through train, prune, finetune, run,
export and sweep, rebuilt from its import path and recorded prunings; and square inputs of
any size for the reference families."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import ncslim
from ncslim.cli import main
from ncslim.models import build_model, model_names
from ncslim.models.scales import find_scales

pytest.importorskip("torch_pruning")

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed")

MODELS = '''
import torch
from torch import nn


class Block(nn.Module):
    """A residual block with a projection shortcut and a depthwise convolution."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.dw = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.dw(y)) + self.short(x))


class SmallNet(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = Block(8, 16, 2)
        self.b2 = Block(16, 16, 1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.b2(self.b1(self.stem(x))).mean((2, 3)))


def small_net(num_classes, in_channels):
    return SmallNet(num_classes, in_channels)


class Flat(nn.Module):
    """Its classifier reads a hard-coded width: no graph can prune the last conv."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)).reshape(-1, 8))


def no_bn(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))


def not_a_module(num_classes, in_channels):
    return [num_classes, in_channels]


def positional_only(classes):
    return SmallNet(classes, 3)


def broken(num_classes, in_channels):
    raise RuntimeError("out of coffee")


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """A module ``usermodels`` on sys.path, as a user's own file would be."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "usermodels.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("usermodels", None)
    yield folder
    sys.modules.pop("usermodels", None)


def spread(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gamma in find_scales(model).values():
            gamma.copy_(torch.rand(gamma.shape, generator=gen) + 0.01)
    return model


def test_a_pruned_imported_model_rebuilds_exactly_from_its_spec(user_models, tmp_path):
    model = spread(build_model("imported", 10, 3, channels={"builder": "usermodels:small_net"},
                               input_size=20)).eval()
    once, first = ncslim.prune_model(model, ratio=0.5)
    twice, second = ncslim.prune_model(spread(once, 1), ratio=0.3)
    assert first.params_after < first.params_before and second.params_after < first.params_after
    assert len(twice.channels["pruned"]) == 2  # two prunings, recorded in order
    assert all(not name.startswith("net.") for step in twice.channels["pruned"]
               for name, _ in step)
    assert twice.pruned_from["params"] == first.params_before
    ncslim.save_model(twice, tmp_path / "m.pt")
    back = ncslim.load_model(tmp_path / "m.pt", trust_code="usermodels")
    x = torch.randn(4, 3, 20, 20)
    assert torch.equal(back(x), twice.eval()(x))
    assert back.config() == twice.config() and back.input_size == 20
    assert ncslim.count_params(back) == second.params_after


def test_a_model_file_never_makes_ncslim_call_what_it_names(tmp_path, user_models):
    model = build_model("imported", 10, 3, channels={"builder": "usermodels:small_net"})
    ncslim.save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    cases = {
        "os:system": "os is part of Python's standard library",
        "shutil:rmtree": "shutil is part of Python's standard library",
        "usermodels:broken": "failed: RuntimeError: out of coffee",
        "nosuchmodule:f": "cannot import nosuchmodule",
        "x; import os": "must be package.module:function",
    }
    for builder, message in cases.items():  # with consent for the modules it names
        payload["config"]["channels"] = {"builder": builder, "pruned": []}
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(ncslim.ModelFileError, match=message):
            ncslim.load_model(tmp_path / "bad.pt", trust_code=["usermodels", "nosuchmodule"])
    for pruned, message in (([[["b1.conv1", 99]]], "keeps 99 channels of b1.conv1, which has 16"),
                            ([[["b1.bn1", 4]]], "not a convolution or linear layer"),
                            ([[["nowhere", 4]]], "not a convolution or linear layer"),
                            ([[["b1.conv1", 0]]], "list of \\[layer name, channels kept\\]"),
                            ([["b1.conv1"]], "list of \\[layer name, channels kept\\]")):
        payload["config"]["channels"] = {"builder": "usermodels:small_net", "pruned": pruned}
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(ncslim.ModelFileError, match=message):
            ncslim.load_model(tmp_path / "bad.pt", trust_code="usermodels")


@pytest.mark.parametrize(("builder", "message"), [
    ("usermodels", "must be package.module:function"),
    ("usermodels:small_net()", "must be package.module:function"),
    ("json:loads", "json is part of Python's standard library"),
    ("nosuchmodule:f", "cannot import nosuchmodule"),
    ("usermodels:missing", "usermodels has no missing"),
    ("usermodels:NOT_CALLABLE", "is a int, not a function"),
    ("usermodels:broken", "failed: RuntimeError: out of coffee"),
    ("usermodels:not_a_module", "returned a list, not a torch.nn.Module"),
    ("usermodels:positional_only", "failed: TypeError"),
    ("usermodels:no_bn", "has no BatchNorm with scaling factors"),
    ("usermodels:Flat", "fails in layer net \\(Flat\\): shape '\\[-1, 8\\]' is invalid"),
])
@needs_fashion
def test_a_model_ncslim_cannot_use_is_one_line_before_anything_is_written(
        user_models, tmp_path, capsys, builder, message):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "fashion-mnist", "--limit-train", "64", "--limit-test",
                 "32", "--batch-size", "32", "--epochs", "1", "--model", builder,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_model_and_arch_are_exclusive_and_compensate_is_for_arch(user_models, capsys):
    assert main(["train", "--model", "usermodels:small_net", "--width", "0.5"]) == 2
    assert "--model builds your own network; leave out --width" in capsys.readouterr().err
    assert main(["run", "--model", "usermodels:small_net", "--compensate"]) == 2
    assert "--compensate works for ncslim's own architectures" in capsys.readouterr().err
    cfg = ncslim.config.load_config("demo", {"model": "usermodels:small_net", "lam": "auto"})
    assert not cfg.compensates()  # on by default with --lam auto for --arch families only
    assert "imported" not in model_names()  # not an --arch choice


def test_a_model_run_with_lam_auto_resumes(user_models, tmp_path):
    """Its compensation is unset, so off: the resume check must say the same of its record
    (it once took every unset --lam auto record for compensated, and refused the resume)."""
    from ncslim.run.rundir import check_same_run, write_config

    cfg = ncslim.config.load_config("demo", {"model": "usermodels:small_net", "lam": "auto",
                                             "penalty": "l1"})
    write_config(cfg, tmp_path, "run")
    check_same_run(cfg, tmp_path / "config.json", "run")
    on = ncslim.config.load_config("demo", {"lam": "auto", "penalty": "l1"})
    write_config(on, tmp_path / "arch", "run")
    check_same_run(on, tmp_path / "arch" / "config.json", "run")
    with pytest.raises(ValueError, match=r"--compensate False \(the run has True\)"):
        check_same_run(replace(on, compensate=False), tmp_path / "arch" / "config.json", "run")


@needs_fashion
def test_every_command_works_on_an_imported_model(user_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(user_models)
    monkeypatch.setattr("ncslim.models.measure._time_one",
                        lambda model, x: 1e-6 * ncslim.count_params(model) * x.shape[0])
    tiny = ["--dataset", "fashion-mnist", "--limit-train", "128", "--limit-test", "64",
            "--batch-size", "32", "--device", "cpu"]
    run = tmp_path / "run"
    assert main(["run", *tiny, "--model", "usermodels:small_net", "--epochs", "1",
                 "--penalty", "l1", "--mode", "proximal", "--lam", "auto", "--ratio", "0.5",
                 "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["model"] == "usermodels:small_net"
    assert results["params"]["pruned"] < results["params"]["original"]
    trust = ["--trust-model-code", "usermodels"]  # a file's builder is imported with consent
    final = ncslim.load_model(run / "final.pt", trust_code="usermodels")
    assert final.title() == "usermodels:small_net (--model)"
    assert ncslim.count_params(final) == results["params"]["pruned"]
    assert main(["prune", *trust, "--checkpoint", str(run / "train" / "model.pt"), "--ratio", "0.3",
                 "--evaluate", "--limit-test", "64", "--out", str(tmp_path / "pruned")]) == 0
    pruned = ncslim.load_model(tmp_path / "pruned" / "pruned.pt", trust_code="usermodels")
    assert len(pruned.channels["pruned"]) == 1
    assert main(["finetune", *trust, "--checkpoint", str(tmp_path / "pruned" / "pruned.pt"), *tiny,
                 "--epochs", "1", "--out", str(tmp_path / "ft")]) == 0
    assert ncslim.load_model(tmp_path / "ft" / "model.pt", trust_code="usermodels").config() == (
        pruned.config())
    assert main(["export", *trust, str(run / "final.pt"), "--format", "torchscript",
                 "-o", str(tmp_path / "m.ts")]) == 0
    capsys.readouterr()
    assert main(["info", *trust, "--checkpoint", str(run / "final.pt"), "--batch-size", "2"]) == 0
    assert "usermodels:small_net (--model): 10 classes, 1 input channels, 32x32 images" in (
        capsys.readouterr().out)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'out = "{tmp_path / "sweep"}"\nratios = [0.4]\n[base]\n'
                     f'model = "usermodels:small_net"\ndataset = "fashion-mnist"\n'
                     f'limit_train = 64\nlimit_test = 32\nbatch_size = 32\nepochs = 1\n'
                     f'finetune_epochs = 1\ndevice = "cpu"\n[[grid]]\nlam = [1e-4]\n')
    assert main(["sweep", str(sweep)]) == 0
    found = list((tmp_path / "sweep").rglob("results.json"))
    assert len(found) == 1
    assert json.loads(found[0].read_text())["config"]["model"] == "usermodels:small_net"


def test_the_console_script_finds_a_module_in_the_current_folder(user_models, tmp_path):
    """``ncslim`` (not ``python -m``) does not put the current folder on sys.path; the model's
    import does, searched last."""
    code = ("import sys; from ncslim.models.imported import resolve_builder; "
            "sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            "print(resolve_builder('usermodels:small_net').__name__)")
    env = {"PYTHONPATH": str(Path(ncslim.__file__).resolve().parents[1]), "PATH": "/usr/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=user_models, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "small_net", done.stderr


@pytest.mark.parametrize("arch", ["vgg", "resnet", "densenet"])
@pytest.mark.parametrize("size", [16, 28, 32, 48])
def test_reference_families_take_square_inputs_of_any_size(arch, size):
    depth = {"vgg": 11, "resnet": 20, "densenet": 10}[arch]
    model = spread(build_model(arch, 7, 3, width=0.125, depth=depth, input_size=size)).eval()
    x = torch.randn(2, 3, size, size)
    assert model(x).shape == (2, 7)
    assert model.input_shape() == (3, size, size)
    small, report = ncslim.prune_model(model, ratio=0.5)
    assert small(x).shape == (2, 7) and small.input_size == size
    assert report.flops_before == ncslim.count_flops(model, (3, size, size))


def test_input_size_is_checked_and_recorded(tmp_path):
    with pytest.raises(ValueError, match="input_size 8 is too small for its 4 downsamplings"):
        build_model("vgg", input_size=8)
    with pytest.raises(ValueError, match="input_size must be an integer in \\[1, 4096\\]"):
        build_model("resnet", depth=20, input_size=0)
    model = build_model("vgg", depth=11, width=0.125)
    assert model.config()["input_size"] == 32
    ncslim.save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["config"]["input_size"]  # a file from before inputs had a size: 32
    torch.save(payload, tmp_path / "old.pt")
    assert ncslim.load_model(tmp_path / "old.pt").input_size == 32


@needs_fashion
def test_a_run_from_before_input_sizes_were_recorded_resumes(tmp_path):
    """A checkpoint whose model config has no input_size is a 32x32 model: it resumes."""
    flags = ["train", "--dataset", "fashion-mnist", "--arch", "vgg", "--depth", "11",
             "--width", "0.0625", "--limit-train", "64", "--limit-test", "32", "--batch-size",
             "32", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(flags) == 0
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["model"]["config"]["input_size"]
    torch.save(state, last)
    assert main([*flags, "--resume"]) == 0
