from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import hold_lock

import ncslim
import ncslim.cli
from ncslim.config import load_config
from ncslim.models.files import run_lock
from ncslim.run import pipeline
from ncslim.run.methods import make_method
from ncslim.run.steps import lr_at, steps_per_epoch
from ncslim.run.train import Trainer
from ncslim.util.progress import RunProgress

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed")

TINY = {"dataset": "fashion-mnist", "arch": "vgg", "depth": 11, "width": 0.0625,
        "limit_train": 192, "limit_test": 96, "batch_size": 32, "epochs": 2,
        "finetune_epochs": 1, "lam": 1e-3, "device": "cpu"}


def tiny_config(tmp_path: Path, **overrides) -> ncslim.config.Config:
    return load_config(None, {**TINY, "out": str(tmp_path / "run"), **overrides})


def test_step_schedule_and_cosine():
    cfg = load_config(None, {"lr": 0.1, "epochs": 8})
    assert [round(lr_at(cfg, e, 8), 6) for e in range(8)] == [0.1] * 4 + [0.01] * 2 + [0.001] * 2
    cosine = load_config(None, {"lr": 0.1, "schedule": "cosine"})
    assert lr_at(cosine, 0, 10) == pytest.approx(0.1)
    assert lr_at(cosine, 5, 10) == pytest.approx(0.05)


@needs_fashion
@pytest.mark.parametrize("penalty, extra", [
    ("tl1", {}), ("vcp", {}),
    # the controller updates at steps 10, 20, 30 of 36: the checkpoint after epoch 2 (step 24)
    # holds the measurement of step 20, applied at step 30 after the resume
    ("tl1", {"lam": "auto", "mode": "proximal", "limit_train": 384})],
    ids=["tl1", "vcp", "tl1-lam-auto"])
def test_same_seed_same_result_and_resume_is_identical(tmp_path, monkeypatch, penalty, extra):
    cfg = tiny_config(tmp_path, **{"epochs": 3, "penalty": penalty, "mode": "subgradient",
                                   "vcp_kl_weight": 1e-4, **extra})
    data = pipeline.load_data(cfg, torch.device("cpu"))

    def trained(out: Path, crash_after: int | None = None) -> Trainer:
        model = pipeline.new_model(cfg, data)
        steps = cfg.epochs * steps_per_epoch(data, cfg)
        trainer = Trainer(model, data, cfg, out, cfg.epochs,
                          make_method(cfg, model, data.train_labels.numel(), steps))
        if crash_after is not None:
            original = trainer._run_epoch

            def crashing(epoch: int) -> None:
                if epoch == crash_after:
                    raise KeyboardInterrupt
                original(epoch)

            monkeypatch.setattr(trainer, "_run_epoch", crashing)
        return trainer

    straight = trained(tmp_path / "a")
    straight.fit()
    again = trained(tmp_path / "b")
    again.fit()
    interrupted = trained(tmp_path / "c", crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = trained(tmp_path / "c")
    resumed.fit(resume=True)
    for other in (again, resumed):
        for a, b in zip(straight.model.state_dict().values(), other.model.state_dict().values()):
            assert torch.equal(a, b)
        if penalty == "vcp":  # the sigmas, and the noise drawn from (seed, epoch), resume too
            for name, sigma in straight.model.channel_state["vcp_sigma"].items():
                assert torch.equal(sigma, other.model.channel_state["vcp_sigma"][name])
    lines = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    reference = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_acc"] for r in lines] == [r["test_acc"] for r in reference]
    assert [r["lam"] for r in lines] == [r["lam"] for r in reference]
    if extra:  # the controller moved lambda, and the resumed run moved it the same way
        assert lines[-1]["lam"] != pytest.approx(1e-4) and "target_distance" in lines[-1]


@needs_fashion
def test_metrics_record_the_gamma_distribution(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1, penalty="l1", lam=2.0, mode="proximal")
    result = pipeline.train(cfg)
    record = json.loads((Path(cfg.out) / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("train_loss", "train_acc", "test_acc", "lr", "penalty", "gamma_below_1e-3",
                "gamma_below_1e-2", "gamma_hist", "epoch_time", "images_per_s"):
        assert key in record
    model = ncslim.load_model(result["model"])
    gammas = torch.cat([m.weight.detach().abs() for m in model.modules()
                        if isinstance(m, torch.nn.BatchNorm2d)])
    assert record["gamma_zero"] == pytest.approx(float((gammas == 0).float().mean()))
    assert sum(record["gamma_hist"]["counts"]) == gammas.numel()
    assert record["gamma_zero"] > 0.2  # 6 proximal steps of 0.1 * 2.0 reach zero
    for name in ("last.pt", "best.pt", "model.pt", "config.json"):
        assert (Path(cfg.out) / name).is_file()


@needs_fashion
def test_existing_run_directory_needs_resume(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    pipeline.train(cfg)
    with pytest.raises(ValueError, match="pass --resume"):
        pipeline.train(cfg)


@needs_fashion
def test_diverging_run_stops_with_a_clear_message(tmp_path):
    cfg = tiny_config(tmp_path, epochs=2, lr=1e6, penalty="none")
    with pytest.raises(ncslim.run.train.TrainingDiverged,
                       match=r"epoch 1, step \d+ of .*no checkpoint was written; lower --lr"):
        pipeline.train(cfg)


@needs_fashion
@pytest.mark.parametrize("flags", [{"amp": True}, {"channels_last": True},
                                   {"mode": "proximal", "penalty": "scad", "a": 3.7}])
def test_amp_channels_last_and_proximal_paths_train(tmp_path, flags):
    cfg = tiny_config(tmp_path, epochs=1, **flags)
    result = pipeline.train(cfg)
    assert 0.0 <= result["test_acc"] <= 1.0
    record = json.loads((Path(cfg.out) / "metrics.jsonl").read_text())
    assert record["train_loss"] == record["train_loss"]  # not NaN


def test_training_never_holds_a_float_copy_of_the_dataset(tmp_path):
    """Images stay uint8; only batch-sized float tensors are made (what lets SVHN+extra fit)."""
    from torch.overrides import TorchFunctionMode

    from ncslim.data import DATASETS, ImageData

    class LargestFloat(TorchFunctionMode):
        largest = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    self.largest = max(self.largest, t.numel())
            return out

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1024, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (1024,), generator=gen)
    data = ImageData(images, labels, images[:64], labels[:64], DATASETS["cifar10"])
    cfg = tiny_config(tmp_path, dataset="cifar10", batch_size=32, penalty="l1")
    torch.manual_seed(0)
    model = ncslim.build_model("vgg", depth=11, width=0.0625)
    trainer = Trainer(model, data, cfg, tmp_path / "stage", epochs=1,
                      method=make_method(cfg, model, 64, 1))

    silent = RunProgress(trainer.steps, enabled=False).epoch("t", 1, 1, trainer.steps,
                                                              data.train_images.device)
    with LargestFloat() as mode:
        stats = trainer.train_epoch(0, cfg.lr, silent)
    assert stats["images"] == 1024
    assert data.train_images.dtype == torch.uint8 and data.train_images is images
    assert 0 < mode.largest < images.numel() // 8


def test_run_lock_refuses_a_live_holder_and_is_freed_by_sigkill(tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        refused = rf"in use by another running ncslim process \(pid {holder.pid}\); wait for it"
        with pytest.raises(ValueError, match=refused), run_lock(out, fresh=False):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out, fresh=False):  # the kernel dropped the dead process's lock: none stale
        assert (out / ".lock").read_text().strip() == str(os.getpid())


@needs_fashion
def test_a_second_live_run_in_the_same_directory_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    holder = hold_lock(Path(cfg.out))
    try:
        for resume in (False, True):  # --resume too, once the holder has written its config
            with pytest.raises(ValueError, match="in use by another running ncslim process"):
                pipeline.train(cfg, resume=resume)
            assert not (Path(cfg.out) / "config.json").exists()
            (Path(cfg.out) / "last.pt").write_bytes(b"the holder's")
    finally:
        holder.kill()
        holder.wait()


def test_prune_never_writes_into_a_live_run(tmp_path, capsys):
    model = tmp_path / "m.pt"
    ncslim.save_model(ncslim.build_model("vgg", depth=11, width=0.0625), model)
    out = tmp_path / "live"
    holder = hold_lock(out)
    try:
        code = ncslim.cli.main(["prune", "--checkpoint", str(model), "--out", str(out)])
        assert code == 2 and "in use by another running ncslim process" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_metrics_cut_mid_line_by_a_crash_are_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "test_acc": 0.5}\n{"epoch": 2, "test_acc": 0.6}\n'
                    '{"epoch": 3, "te')
    assert ncslim.run.checkpoint.read_metrics(path, keep=2) == [{"epoch": 1, "test_acc": 0.5},
                                                         {"epoch": 2, "test_acc": 0.6}]
    assert path.read_text().count("\n") == 2
    path.write_text('{"epoch": 1, "te\n{"epoch": 2, "test_acc": 0.6}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 1 is not JSON"):
        ncslim.run.checkpoint.read_metrics(path, keep=2)


@needs_fashion
def test_a_refused_run_leaves_the_earlier_runs_config_alone(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    pipeline.train(cfg)
    before = (Path(cfg.out) / "config.json").read_text()
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        pipeline.train(tiny_config(tmp_path, epochs=1, lr=0.5))
    assert (Path(cfg.out) / "config.json").read_text() == before


@needs_fashion
@pytest.mark.parametrize(("finetune_lr", "advice"), [(0.01, "lower --finetune-lr and run again"),
                                                     (None, "lower --lr and run again")])
def test_fine_tuning_that_diverges_names_its_learning_rate_not_lambda(
        tmp_path, monkeypatch, finetune_lr, advice):
    real = torch.nn.functional.cross_entropy
    stage = {"finetune": False}

    def poisoned(out, y, *args, **kwargs):
        loss = real(out, y, *args, **kwargs)
        return loss * float("nan") if stage["finetune"] and "reduction" not in kwargs else loss

    cfg = tiny_config(tmp_path, epochs=1, finetune_epochs=1, finetune_lr=finetune_lr)
    model = pipeline.sparsity_stage(cfg, pipeline.load_data(cfg, torch.device("cpu")),
                                    tmp_path / "train")[0]
    monkeypatch.setattr(ncslim.run.train.F, "cross_entropy", poisoned)
    stage["finetune"] = True
    data = pipeline.load_data(cfg, torch.device("cpu"))
    with pytest.raises(ncslim.run.train.TrainingDiverged,
                       match=f"no checkpoint was written; {advice}"):
        pipeline.finetune(model, data, cfg, tmp_path / "finetune")


@needs_fashion
def test_nan_mid_epoch_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    calls = {"train": 0}

    def poisoned(out, y, *args, **kwargs):
        loss = real(out, y, *args, **kwargs)
        if "reduction" in kwargs:  # evaluation
            return loss
        calls["train"] += 1
        return loss * float("nan") if calls["train"] >= 9 else loss

    monkeypatch.setattr(ncslim.run.train.F, "cross_entropy", poisoned)
    cfg = tiny_config(tmp_path, epochs=3)  # 192 images / batch 32: 6 steps per epoch
    with pytest.raises(ncslim.run.train.TrainingDiverged,
                       match=r"the loss became NaN/inf in epoch 2, step 3 of .*the checkpoint of "
                             r"epoch 1 is kept; lower --lr or --lam"):
        pipeline.train(cfg)
    state = ncslim.run.train.load_checkpoint(Path(cfg.out) / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"]["state_dict"].values()
               if t.is_floating_point())
    assert len((Path(cfg.out) / "metrics.jsonl").read_text().splitlines()) == 1


def test_run_lock_on_a_file_system_without_locks_warns_and_runs(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = False
    with run_lock(tmp_path / "run", fresh=True):
        ran = True
    assert ran and "cannot lock" in caplog.text


KILLER = Path(__file__).with_name("killer.py")
KILL_ARGS = ["--dataset", "fashion-mnist", "--arch", "vgg", "--depth", "11", "--width", "0.0625",
             "--limit-train", "192", "--limit-test", "96", "--batch-size", "32", "--epochs", "3",
             "--lam", "1e-3", "--penalty", "tl1", "--device", "cpu"]


@needs_fashion
@pytest.mark.parametrize(("point", "at"), [("step", 9), ("eval", 2), ("save", 3), ("save", 5)])
def test_sigkill_anywhere_loses_nothing(tmp_path, point, at):
    reference = tmp_path / "reference"
    assert ncslim.cli.main(["train", *KILL_ARGS, "--out", str(reference)]) == 0
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, KILLER, point, str(at), "--", "train", *KILL_ARGS,
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    if point == "save":  # the kill left the finished temp file, never the checkpoint itself
        assert list(out.glob(".*.pt.*.tmp"))
    for path in out.glob("*.pt"):  # whatever is on disk is whole and readable
        assert isinstance(ncslim.models.files.safe_load(path), dict)
    assert ncslim.cli.main(["train", *KILL_ARGS, "--out", str(out), "--resume"]) == 0
    assert not list(out.glob(".*.tmp"))
    final = ncslim.load_model(out / "model.pt").state_dict()
    for key, value in ncslim.load_model(reference / "model.pt").state_dict().items():
        assert torch.equal(final[key], value), key
    acc = [json.loads(x)["test_acc"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x)["test_acc"] for x in
           (reference / "metrics.jsonl").read_text().splitlines()]
    assert acc == ref and len(acc) == 3


@needs_fashion
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    import errno

    real_save = torch.save
    calls = [0]

    def filling(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] >= 4:  # the disk fills after epoch 1's best.pt and last.pt
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ncslim.models.files.torch, "save", filling)
    out = tmp_path / "run"
    code = ncslim.cli.main(["train", *KILL_ARGS, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ncslim train: error: No space left on device") and "--resume" in last
    assert ncslim.run.train.load_checkpoint(out / "last.pt")["epoch"] in (1, 2)  # whole, readable
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()  # space is back: the run continues to the same end as an unbroken one
    assert ncslim.cli.main(["train", *KILL_ARGS, "--out", str(out), "--resume"]) == 0
    reference = tmp_path / "reference"
    assert ncslim.cli.main(["train", *KILL_ARGS, "--out", str(reference)]) == 0
    final = ncslim.load_model(out / "model.pt").state_dict()
    for key, value in ncslim.load_model(reference / "model.pt").state_dict().items():
        assert torch.equal(final[key], value), key


@needs_fashion
def test_inf_gammas_stop_the_run_with_exit_status_3(tmp_path, monkeypatch, capsys):
    real = ncslim.run.train.evaluate
    calls = [0]

    def poisons_a_gamma(model, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # after the second epoch's training, before its checkpoint
            with torch.no_grad():
                next(iter(ncslim.models.scales.find_scales(model).values()))[0] = float("inf")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ncslim.run.train, "evaluate", poisons_a_gamma)
    out = tmp_path / "run"
    code = ncslim.cli.main(["train", *KILL_ARGS, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3
    assert re.fullmatch(r"ncslim train: the BN scaling factors became NaN/inf in epoch 2 of "
                        r".*; the checkpoint of epoch 1 is kept; lower --lr or --lam and run "
                        r"again \(with the same --out, the new run first moves this one to "
                        r".*/diverged-N/\)", err)
    assert ncslim.run.train.load_checkpoint(out / "last.pt")["epoch"] == 1


class GradientProbe(ncslim.sparsity.SparsityMethod):
    """No sparsity; records the largest |gradient| of a BN scale the method is shown."""

    def __init__(self, model):
        super().__init__(model)
        self.seen: list[float] = []

    def after_backward(self) -> None:
        grads = [m.weight.grad.abs().max() for m in self.model.modules()
                 if isinstance(m, torch.nn.BatchNorm2d)]
        self.seen.append(float(torch.stack(grads).max()))


@needs_fashion
@pytest.mark.parametrize("dtype, scaled", [("float16", True), ("bfloat16", False)])
def test_amp_dtype_and_the_method_sees_unscaled_gradients(tmp_path, dtype, scaled):
    cfg = tiny_config(tmp_path, epochs=1, amp=True, amp_dtype=dtype, limit_train=96)
    data = pipeline.load_data(cfg, torch.device("cpu"))
    model = pipeline.new_model(cfg, data)
    probe = GradientProbe(model)
    trainer = Trainer(model, data, cfg, Path(cfg.out), 1, probe)
    assert trainer.scaler.is_enabled() is scaled
    trainer.fit()
    reference = GradientProbe(model)  # the same model in float32, one step
    Trainer(model, data, load_config(None, {**vars(cfg), "amp": False, "amp_dtype": "auto",
                                            "epochs": 1}),
            tmp_path / "float32", 1, reference).fit()
    assert len(probe.seen) == 3 and all(g == g for g in probe.seen)
    # a scaled gradient would be 65536 times larger (GradScaler's first scale)
    assert max(probe.seen) < 100 * max(reference.seen)
    saved = torch.load(Path(cfg.out) / "last.pt", weights_only=True)
    assert (saved["scaler"].get("scale", None) is not None) is scaled


@pytest.mark.parametrize("fused", [False, True])
def test_a_fused_sgd_spares_the_grad_scaler_its_host_read(monkeypatch, fused):
    """GradScaler.step reads the overflow flag on the host (.item(): a sync on a GPU) unless
    the optimizer is fused; ncslim's sgd is fused where the parameters are on a GPU."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    opt = ncslim.run.train.sgd(load_config(None, {"device": "cpu"}),
                           ncslim.sparsity.SparsityMethod(model), fused=fused)
    assert opt.defaults["fused"] is (True if fused else None)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(torch.randn(2, 3, 6, 6)).float().mean()
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    reads, real_item = [], torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or real_item(t))
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    monkeypatch.undo()
    assert (len(reads) == 0) is fused
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
