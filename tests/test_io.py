from __future__ import annotations

import pytest
import torch
from conftest import TINY_IDS, TINY_MODELS, spread_bn

import ncslim


@pytest.mark.parametrize(("arch", "kwargs"), TINY_MODELS, ids=TINY_IDS)
@pytest.mark.parametrize("pruned", [False, True])
def test_round_trip_reproduces_outputs_exactly(arch, kwargs, pruned, tmp_path, images):
    model = spread_bn(ncslim.build_model(arch, num_classes=4, in_channels=1, **kwargs)).eval()
    if pruned:
        model, _ = ncslim.prune_model(model, ratio=0.5, compensate=True)
    path = tmp_path / "m.pt"
    ncslim.save_model(model, path)
    loaded = ncslim.load_model(path)
    assert type(loaded) is type(model) and loaded.channels == model.channels
    assert not loaded.training
    x = images(2, 1)
    assert torch.equal(loaded(x), model(x))
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in model.parameters()]
    assert loaded.pruned_from == model.pruned_from and (model.pruned_from is not None) == pruned


def test_file_holds_plain_data_only(tmp_path):
    model, _ = ncslim.prune_model(spread_bn(ncslim.build_model("densenet", width=0.25, depth=10)),
                                  ratio=0.4)
    ncslim.save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["format"] == "ncslim.model" and payload["config"]["arch"] == "densenet"
    assert payload["config"]["channels"]["select"]  # the kept indices travel with the weights


def test_no_temporary_files_left(tmp_path):
    ncslim.save_model(ncslim.build_model("vgg", width=0.125, depth=11), tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ncslim.load_model(tmp_path / "absent.pt")


def test_corrupt_and_truncated_files(tmp_path):
    good = tmp_path / "m.pt"
    ncslim.save_model(ncslim.build_model("vgg", width=0.125, depth=11), good)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(b"\x00not a model at all" * 50)
    for path in (truncated, garbage):
        with pytest.raises(ncslim.ModelFileError, match="not a readable ncslim file"):
            ncslim.load_model(path)


def test_foreign_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(ncslim.build_model("vgg", width=0.125, depth=11).state_dict(), path)
    with pytest.raises(ncslim.ModelFileError, match="not an ncslim model file"):
        ncslim.load_model(path)


def test_weights_that_do_not_fit_the_spec(tmp_path):
    path = tmp_path / "m.pt"
    model = ncslim.build_model("vgg", width=0.125, depth=11)
    ncslim.save_model(model, path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["channels"][0] = 5
    torch.save(payload, path)
    with pytest.raises(ncslim.ModelFileError, match="do not fit together"):
        ncslim.load_model(path)


@pytest.mark.parametrize("record", [{"params": 10}, {"params": -1, "flops": 1, "channels": 1},
                                    "big", {"params": 1.5, "flops": 1, "channels": 1}])
def test_a_bad_pruned_from_record_is_refused(tmp_path, record):
    path = tmp_path / "m.pt"
    ncslim.save_model(ncslim.prune_model(ncslim.build_model("vgg", width=0.125, depth=11),
                                         ratio=0.3)[0], path)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "pruned_from": record}, path)
    with pytest.raises(ncslim.ModelFileError, match="'pruned_from' must hold positive"):
        ncslim.load_model(path)


@pytest.mark.parametrize("drop", ["model", "optimizer", "epoch"])
def test_an_incomplete_training_checkpoint_is_named(tmp_path, drop):
    from ncslim.train import load_checkpoint

    state = {"format": "ncslim.checkpoint", "epoch": 1, "best_acc": 0.5, "optimizer": {},
             "scaler": {}, "model": {}}
    del state[drop]
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=f"incomplete training checkpoint \\(lacks {drop}"):
        load_checkpoint(tmp_path / "last.pt")


class CodeCarrying:
    """Unpickling this opens (creates) ``marker``: proof that code from the file ran."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(("name", "payload", "loader"), [
    ("evil.pt", {"format": "ncslim.model", "payload": None}, ncslim.load_model),
    ("last.pt", {"format": "ncslim.checkpoint", "optimizer": None},
     lambda path: __import__("ncslim.train").train.load_checkpoint(path)),  # --resume's path
])
def test_code_in_a_checkpoint_is_never_run(tmp_path, name, payload, loader):
    marker = tmp_path / "pwned"
    key = next(k for k, v in payload.items() if v is None)
    path = tmp_path / name
    torch.save({**payload, key: CodeCarrying(marker)}, path)
    with pytest.raises(ncslim.ModelFileError):
        loader(path)
    assert not marker.exists()
