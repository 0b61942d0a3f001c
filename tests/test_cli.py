from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ncslim
from ncslim.cli import main
from ncslim.report import summary
from ncslim.run.rundir import check_same_run

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed")
ARCH = ["--arch", "vgg", "--depth", "11", "--width", "0.0625"]
TINY = ["--dataset", "fashion-mnist", *ARCH, "--limit-train", "192", "--limit-test", "96",
        "--batch-size", "32", "--epochs", "1", "--device", "cpu"]
FINETUNE = [flag for flag in TINY if flag not in ARCH]  # the model file has the architecture
PRUNE = ["--dataset", "fashion-mnist", "--limit-test", "96", "--device", "cpu"]


def _fake_forward_time(model, x):
    """A forward "takes" a time set by the model's size: timings become exact and comparable."""
    return 1e-6 * ncslim.count_params(model) * x.shape[0]


@needs_fashion
def test_run_end_to_end_writes_results(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr("ncslim.models.measure._time_one", _fake_forward_time)
    out = tmp_path / "run"
    caplog.set_level("INFO", logger="ncslim")
    code = main(["run", *TINY, "--penalty", "tl1", "--lam", "1e-3", "--ratio", "0.5",
                 "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    for stage in ("sparse", "pruned", "finetuned"):
        assert 0.0 <= results["accuracy"][stage] <= 1.0
    assert results["params"]["pruned"] < results["params"]["original"]
    assert results["flops"]["pruned"] < results["flops"]["original"]
    assert results["latency"]["cpu"]["batch_1"]["speedup"] > 0
    assert results["config"]["penalty"] == "tl1" and results["version"]["ncslim"]
    for name in ("train/metrics.jsonl", "finetune/metrics.jsonl", "pruned.pt", "final.pt",
                 "config.json"):
        assert (out / name).is_file()
    final = ncslim.load_model(out / "final.pt")
    assert ncslim.count_params(final) == results["params"]["pruned"]
    printed = capsys.readouterr().out
    assert "test accuracy right after pruning" in printed and "parameters" in printed
    # the table printed is also in the run folder
    assert (out / "summary.txt").read_text() == summary.format_results(results) + "\n"
    assert (out / "summary.txt").read_text() in printed
    # --epochs alone sets the fine-tuning length too (the demo preset's own is 4)
    assert len((out / "finetune" / "metrics.jsonl").read_text().splitlines()) == 1
    # the model files record the data they were trained on
    for name in ("train/model.pt", "pruned.pt", "final.pt"):
        assert ncslim.load_model(out / name).trained_on == {
            "dataset": "fashion-mnist", "limit_train": 192, "limit_test": 96, "svhn_extra": True,
            "input_size": None}
    # the silent phases announce themselves
    said = caplog.text
    for phase in ("pruning by ratio 0.5", "evaluating the pruned model",
                  "timing the forward pass of 2 model(s) on cpu at batch 1 and 32 (1 thread"):
        assert phase in said
    # latency: a stated thread count, the spread beside the median, and info agrees
    row = results["latency"]["cpu"]["batch_1"]
    assert row["threads"] == 1 and row["runs"] >= 5 and row["spread"] == 0.0
    assert "latency cpu batch 1 (ms, 1 thread)" in printed and " ±0.00" in printed
    assert main(["info", "--checkpoint", str(out / "final.pt"), "--json", "--batch-size",
                 "32"]) == 0
    info = json.loads(capsys.readouterr().out)
    for batch in ("batch_1", "batch_32"):
        assert info["latency"][batch]["median_ms"] == pytest.approx(
            results["latency"]["cpu"][batch]["pruned_ms"])
        assert info["latency"][batch]["threads"] == results["latency"]["cpu"][batch]["threads"]
    # pruning the fine-tuned model again names the full model that exists
    err = _one_line_error(["prune", "--checkpoint", str(out / "final.pt")], capsys)
    assert f"prune {out / 'train' / 'model.pt'}, or pass --again" in err


@needs_fashion
def test_train_prune_finetune_info_commands(tmp_path, capsys):
    train_dir, prune_dir, ft_dir = tmp_path / "t", tmp_path / "p", tmp_path / "f"
    assert main(["train", *TINY, "--penalty", "l1", "--lam", "1e-3", "--out", str(train_dir)]) == 0
    model = train_dir / "model.pt"
    assert main(["prune", "--checkpoint", str(model), "--dry-run", "--ratios", "0.3,0.6"]) == 0
    printed = capsys.readouterr().out
    assert "--- ratio 0.3" in printed and "--- ratio 0.6" in printed
    assert not prune_dir.exists()
    assert main(["prune", "--checkpoint", str(model), "--ratio", "0.5", "--round-to", "2",
                 "--evaluate", *TINY[:2], "--limit-test", "96", "--out", str(prune_dir)]) == 0
    report = json.loads((prune_dir / "prune.json").read_text())
    assert all(layer["kept"] % 2 == 0 or layer["kept"] == layer["total"]
               for layer in report["layers"])
    assert "accuracy_after" in report
    assert main(["finetune", "--checkpoint", str(prune_dir / "pruned.pt"), *FINETUNE,
                 "--out", str(ft_dir), "--from-scratch"]) == 0
    assert (ft_dir / "model.pt").is_file() and (ft_dir / "metrics.jsonl").is_file()
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(ft_dir / "model.pt"), "--json",
                 "--batch-size", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == ncslim.count_params(ncslim.load_model(ft_dir / "model.pt"))


@needs_fashion
def test_prune_to_target_flops(tmp_path):
    train_dir = tmp_path / "t"
    assert main(["train", *TINY, "--out", str(train_dir)]) == 0
    assert main(["prune", "--checkpoint", str(train_dir / "model.pt"), "--target-flops", "0.5",
                 "--out", str(tmp_path / "p")]) == 0
    report = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert report["flops_after"] <= 0.5 * report["flops_before"]
    assert report["flops_after"] > 0.4 * report["flops_before"]  # the smallest such ratio


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--lam", "-1"], "--lam must be a finite number >= 0"),
    (["run", "--lam", "nan"], "--lam must be a finite number >= 0"),
    (["run", "--penalty", "lp", "--p", "1.5"], "p must be in \\(0, 1\\)"),
    (["run", "--ratio", "1.0"], "--ratio must be in \\[0, 1\\)"),
    (["run", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["run", "--epochs", "-1"], "--epochs must be an integer >= 0"),
    (["run", "--penalty", "l3"], "invalid choice: 'l3'"),
    (["run", "--arch", "alexnet"], "invalid choice: 'alexnet'"),
    (["prune", "--ranking", "mean"], "invalid choice: 'mean'"),
    (["run", "--config", "vgg19-cifar1000"], "unknown preset 'vgg19-cifar1000'"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent", "--device", "cpu"],
     "cifar10: .*/nonexistent.*--download"),
    (["prune", "--checkpoint", "/nonexistent.pt"], "no such file"),
    (["info", "--checkpoint", "/nonexistent.pt"], "no such file"),
    (["run", "--ratio", "-0.1"], "--ratio must be in \\[0, 1\\)"),
    (["run", "--lr", "0"], "--lr must be a number > 0"),
    (["run", "--width", "0"], "--width must be a number > 0"),
    (["run", "--momentum", "1.5"], "--momentum must be in \\[0, 1\\)"),
    (["run", "--weight-decay", "-1"], "--weight-decay must be a number >= 0"),
    (["run", "--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["run", "--epochs", "1.5"], "invalid int value: '1.5'"),
    (["run", "--finetune-epochs", "-2"], "--finetune-epochs must be an integer >= 0"),
    (["run", "--limit-train", "0"], "--limit-train must be an integer >= 1"),
    (["run", "--min-channels", "0"], "--min-channels must be an integer >= 1"),
    (["run", "--round-to", "0"], "--round-to must be an integer >= 1"),
    (["run", "--target-flops", "1.5"], "--target-flops must be in \\(0, 1\\]"),
    (["run", "--threshold", "-1"], "--threshold must be a number >= 0"),
    (["run", "--penalty", "mcp", "--gamma", "0.5"], "mcp: gamma must be > 1"),
    (["run", "--penalty", "scad", "--a", "1.5"], "scad: a must be > 2"),
    (["run", "--penalty", "tl1", "--a", "0"], "tl1: a must be > 0"),
    (["run", "--device", "tpu"], "--device must be cpu, cuda, cuda:N or auto"),
    (["run", "--device", "mps"], "\\(ncslim runs on CPUs and CUDA GPUs\\), got 'mps'"),
    (["info", "--device", "meta"], "--device meta: ncslim runs on cpu or cuda"),
    (["run", "--arch", "resnet", "--depth", "21"], "resnet depth must be 9n\\+2"),
    (["info", "--width", "1e9"], "width must be at most 16.0"),
    (["run", "--seed", "4294967296"], "--seed must be an integer in \\[0, 2\\^32\\)"),
    (["prune", "--checkpoint", "/nonexistent.pt", "--ratio", "1.5"], "--ratio must be in"),
    (["finetune", "--checkpoint", "/nonexistent.pt"], "no such file"),
    (["info", "--depth", "17"], "vgg depth must be one of"),
    (["info", "--arch", "resnet", "--width", "-1"], "width must be a positive finite number"),
    (["report", "/nonexistent"], "no results.json below /nonexistent"),
    (["run", "--seed", "-1"], "--seed must be an integer in"),
])
def test_user_errors_are_one_line_without_traceback(argv, message, capsys, tmp_path):
    if argv[0] in ("run", "train"):
        argv = [*argv, "--out", str(tmp_path / "o")]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err)


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "ncslim", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "run" in done.stdout and "prune" in done.stdout


def test_presets_load_and_match_the_paper():
    from ncslim.config import load_config, preset_names

    assert {"demo", "vgg19-cifar10", "densenet40-cifar100", "resnet164-svhn"} <= set(
        preset_names())
    vgg = load_config("vgg19-cifar10")
    assert (vgg.epochs, vgg.lam, vgg.ratio, vgg.batch_size, vgg.lr) == (160, 1e-4, 0.7, 64, 0.1)
    assert load_config("resnet164-cifar100").ratio == 0.6
    assert load_config("densenet40-cifar10").lam == 1e-5
    assert load_config("vgg19-cifar10", {"lam": 3e-4}).lam == 3e-4


def test_unknown_config_key_is_an_error(tmp_path):
    from ncslim.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('lamda = 1e-4\n')
    with pytest.raises(ValueError, match="unknown key 'lamda' \\(did you mean 'lam'"):
        load_config(str(path))


@needs_fashion
def test_interrupted_run_resumes_without_redoing_finished_stages(tmp_path, monkeypatch, capsys):
    from ncslim.run.train import Trainer

    out = tmp_path / "run"
    argv = ["run", *TINY, "--finetune-epochs", "2", "--out", str(out)]
    original = Trainer._run_epoch

    def crash_in_finetune(self, epoch):
        if self.dir.name == "finetune" and epoch == 1:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(Trainer, "_run_epoch", crash_in_finetune)
    assert main(argv) == 130
    printed = capsys.readouterr().err.strip()
    assert printed.startswith("ncslim run: interrupted; continue with: ncslim run --dataset")
    resume = shlex.split(printed.split("continue with: ")[1])  # the exact command, followed
    assert resume == ["ncslim", *argv, "--resume"]
    assert not (out / "results.json").exists()
    assert main(argv) == 2  # the directory holds a run: refused without --resume
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    assert main(resume[1:]) == 0
    train_lines = (out / "train" / "metrics.jsonl").read_text().splitlines()
    finetune_lines = (out / "finetune" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in train_lines] == [1]
    assert [json.loads(x)["epoch"] for x in finetune_lines] == [1, 2]
    assert json.loads((out / "results.json").read_text())["accuracy"]["finetuned"] >= 0


def _saved(path: Path, **kwargs) -> Path:
    ncslim.save_model(ncslim.build_model("vgg", depth=11, width=0.0625, **kwargs), path)
    return path


def _one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@needs_fashion
def test_a_model_for_another_class_count_or_input_is_named(tmp_path, capsys):
    for kwargs, counts in (({"num_classes": 100, "in_channels": 1}, "100 classes / 1 input"),
                           ({"num_classes": 10, "in_channels": 3}, "10 classes / 3 input")):
        model = _saved(tmp_path / "m.pt", **kwargs)
        for argv in (["finetune", "--checkpoint", str(model), *FINETUNE, "--out",
                      str(tmp_path / "f")],
                     ["prune", "--checkpoint", str(model), "--evaluate", *PRUNE, "--out",
                      str(tmp_path / "p")]):
            err = _one_line_error(argv, capsys)
            assert f"is a model for {counts} channels, but fashion-mnist has 10 / 1" in err
            assert "pick the matching --dataset" in err
    assert not (tmp_path / "f").exists() and not (tmp_path / "p" / "pruned.pt").exists()


@needs_fashion
def test_resuming_with_other_settings_or_another_architecture_is_refused(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    changes = [(["--depth", "13"], "--depth 13 (the run has 11)"),
               (["--lr", "0.05", "--lam", "1e-3"], "--lr 0.05 (the run has 0.1), --lam 0.001 "
                                                   "(the run has 0.003)"),
               (["--arch", "resnet", "--depth", "20"], "--arch resnet (the run has vgg), "
                                                       "--depth 20 (the run has 11)")]
    for change, named in changes:
        err = _one_line_error(["train", *TINY, *change, "--out", str(out), "--resume"], capsys)
        assert f"resuming {out} with other settings: {named}; resume with the settings in" in err
    err = _one_line_error(["run", *TINY, "--out", str(out), "--resume"], capsys)
    assert f"{out} holds a run of ncslim train; continue it with ncslim train --resume" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # how to compute may change: another device string, channels-last, no compile
    assert main(["train", *TINY, "--channels-last", "--amp", "--amp-dtype", "bfloat16",
                 "--out", str(out), "--resume"]) == 0

    (out / "config.json").unlink()  # without the record, the checkpoint itself is checked
    err = _one_line_error(["train", *TINY, "--width", "0.125", "--out", str(out), "--resume"],
                          capsys)
    assert re.search(r"last.pt holds another architecture or class count \(vgg, 10 classes, "
                     r"1 input channel\(s\), [\d,]+ parameters\) than this run \(", err)
    (out / "config.json").write_text("{not json")
    err = _one_line_error(["train", *TINY, "--out", str(out), "--resume"], capsys)
    assert "config.json is damaged; the run there cannot be resumed safely" in err


def test_a_pruned_model_is_not_pruned_again_unless_asked(tmp_path, capsys):
    full = _saved(tmp_path / "full.pt", num_classes=10, in_channels=1)
    assert main(["prune", "--checkpoint", str(full), "--ratio", "0.5",
                 "--out", str(tmp_path / "p1")]) == 0
    pruned = tmp_path / "p1" / "pruned.pt"
    record = ncslim.load_model(pruned).pruned_from
    assert record["params"] == ncslim.count_params(ncslim.load_model(full))
    for argv in (["prune", "--checkpoint", str(pruned), "--ratio", "0.5", "--out",
                  str(tmp_path / "p2")],
                 ["prune", "--checkpoint", str(pruned), "--dry-run", "--ratios", "0.3"]):
        err = _one_line_error(argv, capsys)
        assert f"{pruned} is already pruned (it keeps " in err
        assert "prune the full model it was pruned from" in err and "--again" in err
    assert not (tmp_path / "p2").exists()
    assert main(["prune", "--checkpoint", str(pruned), "--ratio", "0.5", "--again",
                 "--out", str(tmp_path / "p2")]) == 0
    twice = ncslim.load_model(tmp_path / "p2" / "pruned.pt")
    assert twice.pruned_from == record  # still the first full model's size
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(tmp_path / "p2" / "pruned.pt"),
                 "--batch-size", "2"]) == 0
    assert f"pruned from a model of {record['params']:,} parameters" in capsys.readouterr().out


def test_prune_and_export_replace_only_their_own_outputs_unless_asked(tmp_path, capsys):
    full = _saved(tmp_path / "full.pt", num_classes=10, in_channels=1)
    run = tmp_path / "run"  # a finished run's folder, as ncslim run leaves it
    run.mkdir()
    for name, content in (("config.json", b"{}"), ("results.json", b"{}"),
                          ("pruned.pt", b"the run's")):
        (run / name).write_bytes(content)
    stranger = tmp_path / "other"
    stranger.mkdir()
    (stranger / "pruned.pt").write_bytes(b"someone's")
    for out, named in ((run, f"{run} holds a run (config.json)"),
                       (stranger, f"{stranger / 'pruned.pt'} was not written by ncslim prune")):
        argv = ["prune", "--checkpoint", str(full), "--ratio", "0.5", "--out", str(out)]
        err = _one_line_error(argv, capsys)
        assert named in err and "--overwrite" in err
        assert not (out / "prune.json").exists()
    assert (run / "pruned.pt").read_bytes() == b"the run's"
    own = tmp_path / "p"
    for _ in range(2):  # an earlier prune's outputs are its own to replace
        assert main(["prune", "--checkpoint", str(full), "--ratio", "0.3", "--out", str(own)]) == 0
    assert main(["prune", "--checkpoint", str(full), "--ratio", "0.5", "--out", str(stranger),
                 "--overwrite"]) == 0
    assert ncslim.load_model(stranger / "pruned.pt").pruned_from is not None

    err = _one_line_error(["export", str(full), "-o", str(run / "results.json")], capsys)
    assert "exists and is not an earlier onnx export (not .onnx)" in err
    assert (run / "results.json").read_bytes() == b"{}"
    err = _one_line_error(["export", str(full), "-o", str(run)], capsys)
    assert "is a directory" in err


def test_a_corrupt_checkpoint_given_to_any_command_is_one_line(tmp_path, capsys):
    good = _saved(tmp_path / "good.pt", num_classes=10, in_channels=1)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for argv in (["prune", "--checkpoint", str(bad)], ["info", "--checkpoint", str(bad)],
                 ["finetune", "--checkpoint", str(bad), *FINETUNE], ["export", str(bad)]):
        err = _one_line_error([*argv, "--out", str(tmp_path / "o")] if argv[0] in (
            "prune", "finetune") else argv, capsys)
        assert f"{bad}: not a readable ncslim file (corrupt, truncated or not saved by" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_where_there_is_none(tmp_path, capsys):
    err = _one_line_error(["train", *TINY[:-1], "cuda", "--out", str(tmp_path / "o")], capsys)
    assert "--device cuda: no CUDA GPU is available here; use --device cpu" in err


def test_every_torch_load_in_the_package_is_weights_only():
    """The audit as a test: each torch.load call in src/ passes weights_only=True."""
    import ast

    calls = []
    for path in Path(ncslim.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch"):
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                           for k in node.keywords)
                calls.append((path.name, node.lineno, safe))
    assert calls and all(safe for _, _, safe in calls), calls


@needs_fashion
def test_prune_and_finetune_use_the_dataset_the_model_file_records(tmp_path, capsys):
    train_dir = tmp_path / "t"
    assert main(["train", *TINY, "--out", str(train_dir)]) == 0
    model = train_dir / "model.pt"
    assert ncslim.load_model(model).trained_on["dataset"] == "fashion-mnist"
    # a CIFAR-10 preset does not override what the model was trained on ...
    assert main(["prune", "--checkpoint", str(model), "--evaluate", "--config", "vgg19-cifar10",
                 "--device", "cpu", "--out", str(tmp_path / "p")]) == 0
    record = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert record["dataset"] == "fashion-mnist" and 0 <= record["accuracy_after"] <= 1
    assert main(["finetune", "--checkpoint", str(tmp_path / "p" / "pruned.pt"), "--config",
                 "vgg19-cifar10", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                 "--out", str(tmp_path / "f")]) == 0
    config = json.loads((tmp_path / "f" / "config.json").read_text())["config"]
    assert (config["dataset"], config["limit_train"]) == ("fashion-mnist", 192)
    assert len((tmp_path / "f" / "metrics.jsonl").read_text().splitlines()) == 1
    # ... but --dataset on the command line does
    err = _one_line_error(["prune", "--checkpoint", str(model), "--evaluate", "--dataset",
                           "cifar10", "--data-dir", str(tmp_path / "none"), "--device", "cpu",
                           "--out", str(tmp_path / "p2")], capsys)
    assert "cifar10" in err and not (tmp_path / "p2").exists()


@needs_fashion
def test_prune_dry_run_evaluate_measures_each_ratio(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["prune", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--dry-run",
                 "--evaluate", "--ratios", "0.2,0.6", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert len(re.findall(r"test accuracy on fashion-mnist before pruning \d+\.\d\d%",
                          printed)) == 1
    after = re.findall(r"--- ratio (0\.\d)\n.*?test accuracy right after pruning (\d+\.\d\d)%",
                       printed, re.S)
    assert [ratio for ratio, _ in after] == ["0.2", "0.6"]
    assert not list(tmp_path.glob("**/pruned.pt"))  # a dry run writes nothing


def test_resume_where_no_run_is_says_so(tmp_path, capsys):
    model = _saved(tmp_path / "m.pt", num_classes=10, in_channels=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in (["run", *TINY, "--out", str(tmp_path / "absent"), "--resume"],
                 ["train", *TINY, "--out", str(empty), "--resume"],
                 ["finetune", "--checkpoint", str(model), *FINETUNE, "--out", str(empty),
                  "--resume"]):
        err = _one_line_error(argv, capsys)
        assert "holds no run to resume (no config.json or last.pt there)" in err
        assert "without --resume" in err
    assert not (tmp_path / "absent").exists()
    assert [p.name for p in empty.iterdir()] in ([], [".lock"])


def test_a_run_recorded_before_compensate_had_a_default_still_resumes(tmp_path):
    cfg = ncslim.config.load_config("demo", {"out": str(tmp_path)})
    record = {**cfg.to_dict(), "compensate": False}  # how an earlier version wrote it
    (tmp_path / "config.json").write_text(json.dumps({"command": "run", "config": record}))
    check_same_run(cfg, tmp_path / "config.json", "run")  # unset = off: the same
    auto = ncslim.config.load_config("demo", {"out": str(tmp_path), "lam": "auto",
                                              "compensate": False})
    with pytest.raises(ValueError, match="--lam auto"):
        check_same_run(auto, tmp_path / "config.json", "run")


@pytest.mark.parametrize(("line", "message"), [
    ('amp = "yes"', "--amp must be true or false, got 'yes' \\(str\\)"),
    ("data_dir = 3", "--data-dir must be a string \\(or left out\\), got 3 \\(int\\)"),
    ("epochs = 2.0", "--epochs must be an integer, got 2.0 \\(float\\)"),
    ("lam = true", "--lam must be a number or a string, got True \\(bool\\)"),
    ('seed = "1"', "--seed must be an integer, got '1' \\(str\\)"),
    ("compensate = 1", "--compensate must be true or false \\(or left out\\)"),
    ("ratio = [0.5]", "--ratio must be a number \\(or left out\\), got \\[0.5\\] \\(list\\)"),
    ("[depth]\nvalue = 19", "--depth must be an integer \\(or left out\\), got \\{'value': 19\\}"),
])
def test_a_preset_value_of_the_wrong_type_is_refused_before_anything_is_written(
        tmp_path, capsys, line, message):
    preset = tmp_path / "bad.toml"
    preset.write_text(line + "\n")
    err = _one_line_error(["run", "--config", str(preset), "--out", str(tmp_path / "o")], capsys)
    assert re.search(message, err)
    assert not (tmp_path / "o").exists()


@needs_fashion
def test_less_than_a_batch_is_refused_and_a_diverged_checkpoint_is_not_resumed(tmp_path, capsys):
    small = tmp_path / "small"
    for limit in ("8", "31"):
        err = _one_line_error(["train", *TINY, "--limit-train", limit, "--out", str(small)],
                              capsys)
        assert f"the training set has {limit} images, fewer than one batch (--batch-size 32)" in err
    assert not small.exists()
    out = tmp_path / "t"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    state["model"]["state_dict"]["features.1.weight"][0] = float("nan")
    torch.save(state, out / "last.pt")
    err = _one_line_error(["train", *TINY, "--out", str(out), "--resume"], capsys)
    assert f"{out / 'last.pt'} holds NaN or infinite values (features.1.weight)" in err
    err = _one_line_error(["prune", "--checkpoint", str(out / "last.pt"), "--out",
                           str(tmp_path / "p")], capsys)
    assert "holds NaN or infinite values (features.1.weight)" in err


def _odd_path(tmp_path: Path, kind: str) -> Path:
    import os

    path = tmp_path / f"odd-{kind}"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        return Path("/dev/zero")  # reading it would never end
    elif kind == "missing":
        pass
    return path


ODD = {"directory": "is a directory, not a file", "fifo": "is a FIFO, not a regular file",
       "device": "is a device file, not a regular file", "missing": "no such file"}


@pytest.mark.parametrize("kind", ODD)
@pytest.mark.parametrize("argv", [["run", "--config", "{path}", "--out", "{tmp}/o"],
                                  ["sweep", "{path}"], ["prune", "--checkpoint", "{path}"],
                                  ["finetune", "--checkpoint", "{path}", "--out", "{tmp}/o"],
                                  ["info", "--checkpoint", "{path}"], ["export", "{path}"]])
def test_a_path_that_is_no_regular_file_is_named_for_what_it_is(tmp_path, capsys, kind, argv):
    path = _odd_path(tmp_path, kind)
    err = _one_line_error([a.format(path=path, tmp=tmp_path) for a in argv], capsys)
    assert f"{path}: {ODD[kind]}" in err
    assert not (tmp_path / "o").exists()


def test_a_toml_file_that_is_not_utf8_and_a_damaged_results_json_are_named(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_bytes(b"epochs = 1\n\xff\xfe = 2\n")
    for argv in (["run", "--config", str(toml), "--out", str(tmp_path / "o")],
                 ["sweep", str(toml)]):
        err = _one_line_error(argv, capsys)
        assert f"config file {toml}: not UTF-8 text (byte 11); TOML files are UTF-8" in err
    runs = tmp_path / "runs" / "a"
    runs.mkdir(parents=True)
    (runs / "results.json").write_text('{\n  "accuracy": }')
    err = _one_line_error(["report", str(tmp_path / "runs")], capsys)
    assert f"{runs / 'results.json'}, line 2: not valid JSON (" in err
    assert err.endswith("; remove it or rerun that run")
    (runs / "results.json").write_text('{"config": []}')
    err = _one_line_error(["report", str(tmp_path / "runs")], capsys)
    assert f"{runs / 'results.json'}: not what ncslim writes (" in err
    err = _one_line_error(["report", str(toml)], capsys)
    assert f"{toml} is not a folder" in err


def test_interrupt_advice_fits_the_command(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ncslim.cli, "cmd_sweep", interrupted)
    monkeypatch.setattr(ncslim.cli, "cmd_prune", interrupted)
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('[[grid]]\npenalty = "l1"\n')
    for argv, advice in (
            (["sweep", str(sweep_file)],
             "ncslim sweep: interrupted; continue with the same command (finished runs are "
             "skipped)"),
            (["prune", "--checkpoint", "m.pt"], "ncslim prune: interrupted")):
        capsys.readouterr()
        assert main(argv) == 130
        assert capsys.readouterr().err.strip() == advice
