"""The sparsity-method seam: a method is one SparsityMethod subclass and one registry line
(ncslim.sparsity.registry); the choices, the checks, the run, the cut, the model files, sweeps'
folders and reports follow. Proved with a method made up here."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
from conftest import write_fashion

import ncslim
from ncslim.cli import main
from ncslim.config import Config, load_config
from ncslim.report import collect
from ncslim.sparsity import SparsityMethod
from ncslim.sparsity.registry import (
    METHODS,
    MethodSpec,
    method_names,
    method_spec,
    register_method,
)


class HalveTheWeakest(SparsityMethod):
    """After every step, halve the gammas of the weaker half of each layer's channels."""

    def after_step(self, lr: float) -> None:
        with torch.no_grad():
            for module in self.model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    weak = module.weight.abs() <= module.weight.abs().median()
                    module.weight[weak] *= 0.5


def weakest_scores(model: torch.nn.Module, cfg) -> dict[str, torch.Tensor]:
    """Its own rule: a channel goes where |gamma| is below a tenth of its layer's largest."""
    from ncslim.models.scales import find_scales

    return {name: gamma.detach().abs() / (0.1 * gamma.detach().abs().max())
            for name, gamma in find_scales(model).items()}


@pytest.fixture
def halve():
    spec = register_method(MethodSpec(
        "halve", "halve the weakest gammas", build=lambda stage: HalveTheWeakest(stage.model),
        no_passes="it keeps no state across a pruning", pruning_scores=weakest_scores,
        rule_label="halving rule", describe=lambda cfg: "half"))
    yield spec
    del METHODS["halve"]


def test_the_registry_is_the_choices_and_vcps_fields_come_from_its_entry():
    assert method_names() == ("none", *ncslim.PENALTIES, "vcp")
    names = {f.name for f in fields(Config)}
    assert {f.name for f in method_spec("vcp").fields} <= names
    assert method_spec("tl1").takes_lambda and not method_spec("vcp").takes_lambda
    with pytest.raises(ValueError, match="no sparsity method 'nope'; one of none, l1"):
        method_spec("nope")
    with pytest.raises(ValueError, match="registered already"):
        register_method(MethodSpec("l1", "again", build=SparsityMethod))


def test_a_new_method_is_one_registry_line(halve, tmp_path, monkeypatch, capsys):
    assert "halve" in method_names()
    cfg = load_config("demo", {"penalty": "halve"})  # a choice of --penalty at once
    with pytest.raises(ValueError, match=r"--penalty halve has no multi-pass form \(it keeps no "
                                         r"state across a pruning\)"):
        load_config("demo", {"penalty": "halve", "passes": 2})
    with pytest.raises(ValueError, match="--lam auto adapts a penalty's lambda"):
        load_config("demo", {"penalty": "halve", "lam": "auto"})
    assert cfg.penalty == "halve"
    data = tmp_path / "data" / "fashion-mnist"
    write_fashion(data, monkeypatch)
    out = tmp_path / "run"
    argv = ["run", "--penalty", "halve", "--data-dir", str(tmp_path / "data"), "--arch", "vgg",
            "--depth", "11", "--width", "0.0625", "--epochs", "2", "--finetune-epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["prune"]["threshold"] == 1.0 and results["prune"]["ratio"] is None
    model = ncslim.load_model(out / "train" / "last.pt")  # trained by the method, saved, loaded
    scores = weakest_scores(model, None)
    kept = {layer["layer"]: layer["kept"] for layer in results["channels"]}
    assert kept == {name: max(int((s > 1.0).sum()), 2) for name, s in scores.items()}
    assert main(["prune", "--checkpoint", str(out / "train" / "last.pt"), "--penalty", "halve",
                 "--dry-run"]) == 0
    assert "halving rule" in capsys.readouterr().out
    (row,) = collect(tmp_path / "run")
    assert (row["setting"], row["params"], row["rule"]) == ("halve(half)", "half", "halving rule")
