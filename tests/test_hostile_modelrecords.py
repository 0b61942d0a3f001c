"""A --model network must fit its classes, and a model file's record of its data must fit its
weights (classes 3 and 4 of issue 25 section 1; 1 and 2 are in ``test_hostile_modelfiles.py``).

(3) A network whose outputs are not one score per class is refused, before anything is written;
(4) every field a file records of its data is checked against the weights before it is used,
and reaches the terminal escaped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ncslim
from ncslim.cli import main
from ncslim.models import build_model

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
FASHION = Path("/usr/share/datasets/fashion-mnist")


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "\x1b" not in err
    return err


# --- 3. a network whose outputs are not one score per class ---------------------------------

WRONG_OUTPUTS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, outputs, kind):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, outputs)
        self.kind = kind

    def forward(self, x):
        y = self.fc(self.bn(self.conv(x)).mean((2, 3)))
        return {"tuple": (y, y), "4d": y[:, :, None, None], "flat": y.reshape(-1)}.get(
            self.kind, y)


def fixed(outputs, kind="plain"):
    return lambda num_classes, in_channels: Net(outputs, kind)
'''


@pytest.fixture
def outputs_module(tmp_path, monkeypatch):
    (tmp_path / "wrongout.py").write_text(WRONG_OUTPUTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("wrongout", None)
    import wrongout

    yield wrongout
    sys.modules.pop("wrongout", None)


@SETTINGS
@given(pair=st.tuples(st.integers(1, 30), st.integers(1, 40)).filter(lambda p: p[0] != p[1]))
def test_more_or_fewer_outputs_than_classes_are_refused(outputs_module, monkeypatch, pair):
    classes, outputs = pair
    monkeypatch.setattr(outputs_module, "net", outputs_module.fixed(outputs), raising=False)
    with pytest.raises(ValueError, match=f"gives shape \\(1, {outputs}\\), not {classes} scores"):
        build_model("imported", classes, 1, channels={"builder": "wrongout:net"})
    monkeypatch.setattr(outputs_module, "net", outputs_module.fixed(classes))
    assert build_model("imported", classes, 1, channels={"builder": "wrongout:net"})


@pytest.mark.parametrize(("kind", "got"), [("tuple", "a tuple"), ("4d", "shape (1, 10, 1, 1)"),
                                           ("flat", "shape (10,)")])
def test_outputs_of_another_shape_are_refused(outputs_module, monkeypatch, kind, got):
    monkeypatch.setattr(outputs_module, "net", outputs_module.fixed(10, kind), raising=False)
    with pytest.raises(ValueError, match=f"gives {got.replace('(', '.').replace(')', '.')}, "
                                         f"not 10 scores"):
        build_model("imported", 10, 1, channels={"builder": "wrongout:net"})


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
@pytest.mark.parametrize("outputs", [5, 11, 100])
def test_training_a_network_with_the_wrong_outputs_is_one_line_before_anything_is_written(
        outputs_module, monkeypatch, tmp_path, capsys, outputs):
    monkeypatch.setattr(outputs_module, "net", outputs_module.fixed(outputs), raising=False)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "fashion-mnist", "--limit-train", "64", "--limit-test",
                 "32", "--batch-size", "32", "--epochs", "1", "--model", "wrongout:net",
                 "--out", str(out)])
    assert "not 10 scores" in one_line_error(capsys, code)
    assert not out.exists()


def test_a_file_whose_builder_ignores_its_class_count_is_refused(outputs_module, monkeypatch,
                                                                 tmp_path):
    monkeypatch.setattr(outputs_module, "net", outputs_module.fixed(10), raising=False)
    model = build_model("imported", 10, 1, channels={"builder": "wrongout:net"})
    ncslim.save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["config"]["num_classes"] = 3  # the builder still makes 10 outputs
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(ncslim.ModelFileError, match="gives shape \\(1, 10\\), not 3 scores"):
        ncslim.load_model(tmp_path / "m.pt", trust_code="wrongout")


# --- 4. what a file records of its data, against its weights ---------------------------------

def save_with(tmp_path: Path, record: object, classes: int = 10, name: str = "m.pt") -> Path:
    model = build_model("vgg", classes, 1, width=0.0625, depth=11)
    payload = ncslim.models.files.model_payload(model)
    payload["trained_on"] = record
    torch.save(payload, tmp_path / name)
    return tmp_path / name


names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)


@SETTINGS
@given(classes=st.integers(1, 12), count=st.integers(1, 14))
def test_class_names_must_be_as_many_as_the_outputs(tmp_path_factory, classes, count):
    folder = tmp_path_factory.mktemp("c")
    record = {"dataset": "folder", "classes": [f"c{i}" for i in range(count)]}
    path = save_with(folder, record, classes)
    if count == classes:
        assert ncslim.load_model(path).trained_on["classes"] == record["classes"]
        return
    with pytest.raises(ncslim.ModelFileError,
                       match=f"names {count} classes, but the network has {classes} outputs"):
        ncslim.load_model(path)


@SETTINGS
@given(names=st.lists(names, min_size=2, max_size=5))
def test_class_names_must_differ(tmp_path_factory, names):
    names = [*names[:-1], names[0]]  # the first name twice
    path = save_with(tmp_path_factory.mktemp("d"), {"dataset": "folder", "classes": names},
                     len(names))
    with pytest.raises(ncslim.ModelFileError, match="twice") as caught:
        ncslim.load_model(path)
    assert str(caught.value).isprintable()


BAD_RECORDS = [
    {"dataset": 3},
    {"dataset": ""},
    {"dataset": "x" * 5000},
    {"dataset": "fashion-mnist", "limit_train": -5},
    {"dataset": "fashion-mnist", "limit_train": True},
    {"dataset": "fashion-mnist", "limit_test": "all"},
    {"dataset": "fashion-mnist", "input_size": 64},  # the model takes 32x32
    {"dataset": "fashion-mnist", "input_size": 0},
    {"dataset": "fashion-mnist", "svhn_extra": 1},
    {"dataset": "fashion-mnist", "evil\x1b[2J": 1},
    {"dataset": "folder", "classes": "abc"},
    {"dataset": "folder", "classes": [1, 2, 3]},
    {"dataset": "folder", "test_split": ["val"]},
    ["fashion-mnist"],
    {"dataset": "imagenet"},  # not a dataset ncslim knows
    {"dataset": "\x1b]2;owned\x07"},
    {"dataset": "cifar100"},  # 100 classes; the network has 10 outputs
]


@pytest.mark.parametrize("record", BAD_RECORDS, ids=[str(i) for i in range(len(BAD_RECORDS))])
def test_a_record_that_does_not_fit_is_one_printable_line(tmp_path, capsys, record):
    path = save_with(tmp_path, record)
    with pytest.raises(ncslim.ModelFileError, match="'trained_on'") as caught:
        ncslim.load_model(path)
    assert str(caught.value).isprintable()
    assert "'trained_on'" in one_line_error(capsys, main(["info", "--checkpoint", str(path)]))


@SETTINGS
@given(names=st.lists(names, min_size=1, max_size=4, unique=True))
def test_recorded_text_reaches_the_terminal_escaped(tmp_path_factory, monkeypatch, capsys, names):
    monkeypatch.setattr("ncslim.models.measure._time_one", lambda model, x: 1e-6)
    names = ["\x1b[31m" + names[0], *names[1:]]
    path = save_with(tmp_path_factory.mktemp("e"), {"dataset": "folder", "classes": names},
                     len(names))
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(path), "--batch-size", "2"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.isprintable() and "\\x1b[31m" in head, head


@pytest.mark.parametrize("key", ["\x1b]2;owned\x07", "\x1b[2J", "a\u202eb"])
def test_text_a_file_puts_into_any_error_reaches_the_terminal_escaped(tmp_path, capsys, key):
    """An unknown keyword of the stored architecture: Python's own error carries it raw."""
    model = build_model("vgg", 10, 1, width=0.0625, depth=11)
    payload = ncslim.models.files.model_payload(model)
    payload["config"][key] = 1
    torch.save(payload, tmp_path / "m.pt")
    assert main(["info", "--checkpoint", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.isprintable() and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("params", [1, 100, "own - 1"])
def test_a_full_model_smaller_than_the_pruned_one_is_refused(tmp_path, capsys, params):
    model = build_model("vgg", 3, 1, width=0.0625, depth=11)
    own = ncslim.count_params(model)
    payload = ncslim.models.files.model_payload(model)
    payload["pruned_from"] = {"params": own - 1 if params == "own - 1" else params,
                              "flops": 10**6, "channels": 100}
    torch.save(payload, tmp_path / "m.pt")
    err = one_line_error(capsys, main(["info", "--checkpoint", str(tmp_path / "m.pt")]))
    assert f"fewer than this model's {own:,}" in err
    payload["pruned_from"]["params"] = own  # pruned at ratio 0: as large, accepted
    torch.save(payload, tmp_path / "m.pt")
    assert ncslim.load_model(tmp_path / "m.pt").pruned_from["params"] == own


def test_info_refuses_a_full_model_of_fewer_flops_than_the_pruned_one(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr("ncslim.models.measure._time_one", lambda model, x: 1e-6)
    model = build_model("vgg", 10, 1, width=0.0625, depth=11)
    payload = ncslim.models.files.model_payload(model)
    payload["pruned_from"] = {"params": 10**9, "flops": 1000, "channels": 10**4}
    torch.save(payload, tmp_path / "m.pt")
    err = one_line_error(capsys, main(["info", "--checkpoint", str(tmp_path / "m.pt"),
                                       "--batch-size", "2"]))
    assert "records a full model of 1,000 FLOPs, fewer than this model's" in err


def test_every_field_ncslim_records_has_its_kind_checked():
    from ncslim.config import DATA_RECORD
    from ncslim.models.record import _KINDS

    assert set(DATA_RECORD) <= set(_KINDS)
