"""Export to ONNX (run in ONNX Runtime) and TorchScript, for full and pruned models."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import spread_bn
from torch import nn

import ncslim
from ncslim.cli import main
from ncslim.models import export as E

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

VGG = {"width": 0.125, "depth": 11}
CASES = [("vgg", VGG, False), ("vgg", VGG, True), ("densenet", {"width": 0.34, "depth": 10}, True),
         ("resnet", {"width": 0.25, "depth": 11}, True)]


def tiny(arch: str, kwargs: dict, pruned: bool) -> ncslim.SlimmableNet:
    model = spread_bn(ncslim.build_model(arch, **kwargs)).eval()
    return ncslim.prune_model(model, ratio=0.5)[0].eval() if pruned else model


@pytest.mark.parametrize(("arch", "kwargs", "pruned"), CASES,
                         ids=[f"{a}-{'pruned' if p else 'full'}" for a, _, p in CASES])
def test_onnx_in_onnx_runtime_matches_pytorch(tmp_path, arch, kwargs, pruned):
    model = tiny(arch, kwargs, pruned)
    path = E.export_model(model, tmp_path / "m.onnx")
    session = E.onnx_session(path)
    for batch in (1, 3, 8):  # the batch dimension stays dynamic
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize(("arch", "kwargs", "pruned"), CASES,
                         ids=[f"{a}-{'pruned' if p else 'full'}" for a, _, p in CASES])
def test_torchscript_matches_pytorch(tmp_path, arch, kwargs, pruned):
    model = tiny(arch, kwargs, pruned)
    path = E.export_model(model, tmp_path / "m.ts", format="torchscript")
    loaded = torch.jit.load(str(path))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)


def test_fixed_batch_and_opset(tmp_path):
    import onnx

    path = E.export_model(tiny(*CASES[0]), tmp_path / "m.onnx", input_shape=(4, 3, 32, 32),
                          fixed_batch=True, opset=18)
    graph = onnx.load(str(path))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert any(op.domain in ("", "ai.onnx") and op.version == 18 for op in graph.opset_import)


def test_export_leaves_the_model_alone_and_nothing_half_written(tmp_path, monkeypatch):
    model = tiny(*CASES[1]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    E.export_model(model, tmp_path / "m.ts", format="torchscript")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    def broken(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        E.export_model(model, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ts"]


def test_models_that_are_not_ours_need_an_input_shape(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(2))
    model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="input_shape is required to export a Sequential"):
        E.export_model(model, tmp_path / "m.onnx")
    path = E.export_model(model.eval(), tmp_path / "m.onnx", input_shape=(1, 3, 16, 16))
    assert E.check_export(model, path, "onnx", (1, 3, 16, 16)) < 1e-5


@pytest.mark.parametrize(("shape", "message"), [
    ((1, 3, 32), "input_shape must be 4 positive ints"),
    ((1, 3, 0, 32), "input_shape must be 4 positive ints"),
    ((1, 1, 32, 32), r"does not take inputs of shape \(1, 1, 32, 32\): .*3 channels"),
])
def test_bad_input_shapes(tmp_path, shape, message):
    with pytest.raises(ValueError, match=message):
        E.export_model(tiny(*CASES[0]), tmp_path / "m.onnx", input_shape=shape)
    assert not list(tmp_path.iterdir())


def test_cli_export_writes_checks_and_reports(tmp_path, capsys):
    model = tmp_path / "final.pt"
    ncslim.save_model(tiny(*CASES[2]), model)
    assert main(["export", str(model)]) == 0
    out = capsys.readouterr().out
    assert f"onnx: {tmp_path / 'final.onnx'}" in out
    assert re.search(r"checked in ONNX Runtime: outputs within \S+ of PyTorch's", out)
    assert main(["export", str(model), "--format", "torchscript",
                 "-o", str(tmp_path / "t.ts")]) == 0
    assert "checked in TorchScript" in capsys.readouterr().out
    assert (tmp_path / "t.ts").is_file()


@pytest.mark.parametrize(("extra", "message"), [
    (["--input-shape", "1,3,x,32"], "--input-shape must be B,C,H,W integers"),
    (["--input-shape", "1,3,32"], "--input-shape must be 4 positive integers"),
    (["--output", "{model}"], "would overwrite the model itself"),
    (["--format", "tflite"], "invalid choice: 'tflite'"),
    (["--opset", "11"], "--opset 11: this torch.s ONNX exporter wrote opset \\d+ instead, so "
                        "nothing was written"),
    (["--opset", "99"], "--opset 99: .* wrote opset \\d+ instead"),
    (["--format", "torchscript", "--opset", "17"], "--opset is for ONNX; torchscript has no"),
])
def test_cli_export_errors_are_one_line(tmp_path, capsys, extra, message):
    model = tmp_path / "m.pt"
    ncslim.save_model(tiny(*CASES[0]), model)
    try:
        code = main(["export", str(model), *[a.format(model=model) for a in extra]])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # nothing written


def test_missing_onnx_packages_are_named_with_the_install_command(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.pt"
    ncslim.save_model(tiny(*CASES[0]), model)
    real = E.importlib.util.find_spec
    monkeypatch.setattr(E.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert main(["export", str(model)]) == 2
    err = capsys.readouterr().err
    assert "needs the package(s) onnxscript: pip install 'ncslim[export]'" in err


RESULT = [r"onnx: \S+final\.onnx \(\d+\.\d\d MiB\)",
          r"checked in ONNX Runtime: outputs within \S+ of PyTorch's"]


@pytest.mark.parametrize("capture", ["capsys", "capfd"])
def test_cli_export_prints_its_result_and_the_exporters_log_only_with_verbose(
        tmp_path, request, caplog, capture):
    capture = request.getfixturevalue(capture)  # capfd: also what is written to fd 1 and 2
    caplog.set_level(logging.INFO)  # as the CLI's own logging.basicConfig sets it
    model = tmp_path / "final.pt"
    ncslim.save_model(tiny(*CASES[0]), model)
    assert main(["export", str(model)]) == 0
    out, err = capture.readouterr()
    assert len(out.splitlines()) == len(RESULT) and err == ""
    assert all(re.fullmatch(p, line) for p, line in zip(RESULT, out.splitlines(), strict=True))
    assert not [r for r in caplog.records if not r.name.startswith("ncslim")]
    assert main(["export", str(model), "--verbose"]) == 0
    out, _ = capture.readouterr()
    assert "[torch.onnx] Optimize the ONNX graph... ✅" in out.splitlines()
    assert re.fullmatch(RESULT[0], out.splitlines()[-2]) and re.fullmatch(RESULT[1],
                                                                         out.splitlines()[-1])
    assert any(r.name.startswith("onnx") for r in caplog.records)  # onnxscript's, onnx_ir's


def test_cli_export_as_a_command_prints_two_lines(tmp_path):
    model = tmp_path / "final.pt"
    ncslim.save_model(tiny(*CASES[0]), model)
    run = subprocess.run([sys.executable, "-m", "ncslim", "export", str(model)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert all(re.fullmatch(p, line)
               for p, line in zip(RESULT, run.stdout.splitlines(), strict=True))


@pytest.mark.parametrize("fails", [False, True], ids=["succeeds", "fails"])
def test_the_exporters_output_is_replayed_only_when_it_fails(tmp_path, monkeypatch, capfd,
                                                            caplog, fails):
    caplog.set_level(logging.INFO)
    torchs = logging.getLogger("torch.onnx")  # it has its own handlers and does not propagate
    assert torchs.handlers and not torchs.propagate
    seen: list[str] = []
    recorder = logging.Handler()
    recorder.emit = lambda record: seen.append(record.getMessage())
    monkeypatch.setattr(torchs, "handlers", [recorder])

    def chatty(model, args, path, **kwargs):
        print("[torch.onnx] Obtain model graph...")
        print("a note on stderr", file=sys.stderr)
        logging.getLogger("onnxscript.optimizer").info("Removed 74 unused nodes")
        logging.getLogger("torch.onnx").warning("torch's own logger, with its own handler")
        warnings.warn("a deprecation", FutureWarning, stacklevel=1)
        if fails:
            raise RuntimeError("exporter failed")
        import onnx  # an empty but valid graph: export signs what the exporter wrote

        graph = onnx.helper.make_graph([], "empty", [], [])
        onnx.save(onnx.helper.make_model(graph), str(path))

    monkeypatch.setattr(torch.onnx, "export", chatty)
    if fails:
        with pytest.raises(RuntimeError, match="exporter failed"), pytest.warns(FutureWarning):
            E.export_model(tiny(*CASES[0]), tmp_path / "m.onnx")
    else:
        E.export_model(tiny(*CASES[0]), tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert ("[torch.onnx] Obtain model graph..." in out) is fails
    assert ("a note on stderr" in err) is fails
    assert (seen == ["torch's own logger, with its own handler"]) is fails
    assert ("Removed 74 unused nodes" in caplog.text) is fails
    assert torchs.handlers == [recorder] and not torchs.propagate  # restored


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_exported_files_get_the_mode_open_gives(tmp_path, umask):
    model = tmp_path / "m.pt"
    old = os.umask(umask)
    try:
        ncslim.save_model(tiny(*CASES[0]), model)
        (tmp_path / "plain.txt").write_text("x")
        for fmt in ("onnx", "torchscript"):
            assert main(["export", str(model), "--format", fmt, "--no-check"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["m.pt", "plain.txt", "m.onnx", "m.ts"], 0o666 & ~umask)
