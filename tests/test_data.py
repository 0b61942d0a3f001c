"""Dataset loading: the official formats read, where data is looked for, and the errors that
name the fix."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import (
    REAL_FASHION,
    cifar_members,
    isolated,  # noqa: F401  (autouse: no test sees the real data or network)
    make_cifar,
    make_fashion,
    make_svhn,
    md5,
    write_members,
    write_tar,
)

from ncslim import data as D
from ncslim.cli import main
from ncslim.data import DATASETS, DataError, candidate_dirs, load_dataset
from ncslim.data import catalog as C
from ncslim.data.catalog import _CIFAR
from ncslim.data.cifar import _unpickle_batch

# ----------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_layout_and_values(tmp_path, monkeypatch, name):
    train_x, train_y, test_x, test_y = make_cifar(tmp_path, name, 3, monkeypatch=monkeypatch)
    data = load_dataset(name, tmp_path)
    n_train = 15 if name == "cifar10" else 3
    assert data.train_images.shape == (n_train, 3, 32, 32)
    assert data.test_images.shape == (3, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert torch.equal(data.train_images, torch.from_numpy(train_x))
    assert torch.equal(data.test_labels, torch.from_numpy(test_y))
    assert torch.equal(data.train_labels, torch.from_numpy(train_y))
    assert data.train_images[0, 1, 5, 7] == 200  # flat index c*1024 + h*32 + w
    assert data.test_images[0, 1, 5, 7] == 200 + len(_CIFAR[name][1])
    assert data.train_labels.max() == DATASETS[name].num_classes - 1
    assert data.info is DATASETS[name]


def test_cifar_extracted_folder_matches_archive(tmp_path, monkeypatch):
    members, expected = cifar_members("cifar10", 2, seed=1)
    write_members(tmp_path, members)
    data = load_dataset("cifar10", tmp_path)
    assert torch.equal(data.train_images, torch.from_numpy(expected[0]))
    assert torch.equal(data.test_labels, torch.from_numpy(expected[3]))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_pickled_by_python3_load(protocol):
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    raw = pickle.dumps({b"data": rows, b"labels": [3, 4]}, protocol=protocol)
    images, labels = _unpickle_batch(DATASETS["cifar10"], "here", raw)
    assert images.shape == (2, 3, 32, 32) and images[1, 2, 31, 31] == rows[1, 3071]
    assert labels.tolist() == [3, 4]


class _Asks:
    """Pickles as a call of ``func(*args)``: what a crafted batch may ask the unpickler to do."""

    def __init__(self, func, *args):
        self.call = (func, args)

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("ask", ["ndarray", "reconstruct", "bytes", "bytearray"])
def test_a_small_cifar_pickle_asking_for_a_large_allocation_is_refused(protocol, ask):
    from numpy.core.multiarray import _reconstruct

    size = 10**9  # a gigabyte, from a pickle of a few hundred bytes
    call = {"ndarray": (np.ndarray, (size,), "u1"),
            "reconstruct": (_reconstruct, np.ndarray, (size,), b"b"),
            "bytes": (bytes, size), "bytearray": (bytearray, size)}[ask]
    raw = pickle.dumps({b"data": _Asks(*call), b"labels": [1]}, protocol=protocol)
    assert len(raw) < 1000
    with pytest.raises(DataError, match=f"here: refused: the pickle of {len(raw):,} bytes asks "
                                        f"for 1,000,000,000"):
        _unpickle_batch(DATASETS["cifar10"], "here", raw)


def test_svhn_layout_labels_and_extra(tmp_path, monkeypatch):
    made = make_svhn(tmp_path, {"train": 4, "test": 3, "extra": 5}, monkeypatch=monkeypatch)
    data = load_dataset("svhn", tmp_path)
    assert data.train_images.shape == (9, 3, 32, 32) and data.test_images.shape == (3, 3, 32, 32)
    x, y = made["train"]
    assert data.train_images[1, 2, 3, 10] == 77  # X[h, w, c, n] -> [n, c, h, w]
    assert torch.equal(data.train_images[:4], torch.from_numpy(x.transpose(3, 2, 0, 1).copy()))
    ex, ey = made["extra"]
    assert torch.equal(data.train_images[4:], torch.from_numpy(ex.transpose(3, 2, 0, 1).copy()))
    assert data.train_labels[0] == 0 and data.train_labels[4] == 0  # 10 means digit 0
    assert torch.equal(data.train_labels[:4], torch.from_numpy(y[:, 0].astype(np.int64) % 10))
    assert data.train_labels.min() >= 0 and data.train_labels.max() <= 9
    without = load_dataset("svhn", tmp_path, include_extra=False)
    assert without.train_images.shape[0] == 4
    assert torch.equal(without.test_images, data.test_images)


def test_svhn_extra_not_read_when_limit_is_met(tmp_path, monkeypatch):
    make_svhn(tmp_path, {"train": 4, "test": 3, "extra": 5}, monkeypatch=monkeypatch)
    (tmp_path / "extra_32x32.mat").write_bytes(b"broken")
    assert load_dataset("svhn", tmp_path, limit_train=4).train_images.shape[0] == 4
    with pytest.raises(DataError, match="extra_32x32.mat checksum mismatch"):
        load_dataset("svhn", tmp_path, limit_train=5)


def test_svhn_without_extra_says_how_to_do_without(tmp_path, monkeypatch):
    make_svhn(tmp_path, {"train": 2, "test": 2}, monkeypatch=monkeypatch)
    with pytest.raises(DataError) as err:
        load_dataset("svhn", tmp_path)
    assert "lacks extra_32x32.mat" in str(err.value)
    assert "--no-svhn-extra / include_extra=False" in str(err.value)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_padding_and_values(tmp_path, monkeypatch, gz):
    arrays = make_fashion(tmp_path, gz=gz, monkeypatch=monkeypatch)
    data = load_dataset("fashion-mnist", tmp_path)
    assert data.train_images.shape == (7, 1, 32, 32) and data.test_images.shape == (5, 1, 32, 32)
    assert data.train_images[0, 0, 3 + 2, 20 + 2] == 99
    inner = torch.from_numpy(arrays["train-images-idx3-ubyte"])
    assert torch.equal(data.train_images[:, 0, 2:30, 2:30], inner)
    border = data.train_images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0 and (data.train_images[:, :, 2:30, 2:30] > 0).all()
    assert torch.equal(data.test_labels,
                       torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))


def test_limits_take_the_first_images(tmp_path, monkeypatch):
    make_fashion(tmp_path, monkeypatch=monkeypatch)
    full = load_dataset("fashion-mnist", tmp_path)
    part = load_dataset("fashion-mnist", tmp_path, limit_train=3, limit_test=100)
    assert torch.equal(part.train_images, full.train_images[:3])
    assert torch.equal(part.train_labels, full.train_labels[:3])
    assert part.test_images.shape[0] == 5
    moved = part.to("cpu")
    assert torch.equal(moved.train_images, part.train_images)
    assert "train (3, 1, 32, 32)" in repr(moved)


@pytest.mark.skipif(not REAL_FASHION.is_dir(),
                    reason=f"{REAL_FASHION} absent (apt install dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(C, "DEBIAN_ROOT", REAL_FASHION.parent)  # found by the search order
    data = load_dataset("fashion-mnist")  # verify=True: the decompressed md5s match upstream
    assert data.train_images.shape == (60000, 1, 32, 32)
    assert data.test_images.shape == (10000, 1, 32, 32)
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    assert data.train_images[:, :, :2].sum() == 0 and data.train_images[:, :, :, 30:].sum() == 0
    pixels = data.train_images.double() / 255
    info = DATASETS["fashion-mnist"]
    assert pixels.mean().item() == pytest.approx(info.mean[0], abs=1e-4)
    assert pixels.std().item() == pytest.approx(info.std[0], abs=1e-4)


# ----------------------------------------------------------------------------- search order


def test_candidate_dirs_order(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSLIM_DATA", str(tmp_path / "env"))
    assert candidate_dirs("svhn", tmp_path / "given") == [  # the only place searched
        tmp_path / "given", tmp_path / "given" / "svhn"]
    assert candidate_dirs("svhn") == [tmp_path / "env" / "svhn", tmp_path / "debian" / "svhn",
                                      tmp_path / "xdg" / "ncslim" / "svhn"]
    monkeypatch.delenv("NCSLIM_DATA")
    assert candidate_dirs("svhn") == [tmp_path / "debian" / "svhn",
                                      tmp_path / "xdg" / "ncslim" / "svhn"]


def test_search_order_is_followed(tmp_path, monkeypatch):
    places = {"given": tmp_path / "given", "env": tmp_path / "env" / "fashion-mnist",
              "debian": tmp_path / "debian" / "fashion-mnist",
              "cache": tmp_path / "xdg" / "ncslim" / "fashion-mnist"}
    for label, folder in enumerate(places.values()):
        make_fashion(folder, label=label, monkeypatch=monkeypatch)  # same images, own label
    monkeypatch.setenv("NCSLIM_DATA", str(tmp_path / "env"))
    assert load_dataset("fashion-mnist", places["given"], verify=False).train_labels[0] == 0
    for f in places["given"].iterdir():
        f.unlink()
    with pytest.raises(DataError, match="data not found"):  # a --data-dir given: no other copy
        load_dataset("fashion-mnist", places["given"], verify=False)
    for expected, removed in enumerate(list(places)[1:], 1):
        found = load_dataset("fashion-mnist", verify=False)  # labels differ
        assert found.train_labels[0] == expected
        for f in places[removed].iterdir():
            f.unlink()
    with pytest.raises(DataError, match="data not found"):
        load_dataset("fashion-mnist", verify=False)


def test_data_dir_subfolder_is_accepted(tmp_path, monkeypatch):
    make_fashion(tmp_path / "root" / "fashion-mnist", label=4, monkeypatch=monkeypatch)
    assert load_dataset("fashion-mnist", tmp_path / "root").train_labels[0] == 4


# ----------------------------------------------------------------------------- errors


def test_missing_data_lists_every_place_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSLIM_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", tmp_path / "given")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("fashion-mnist: data not found")
    for place in candidate_dirs("fashion-mnist", tmp_path / "given"):
        assert str(place) in msg
    for fix in ("--data-dir", "NCSLIM_DATA", "dataset-fashion-mnist", "--download"):
        assert fix in msg
    with pytest.raises(DataError, match="cifar-10-batches-py/"):
        load_dataset("cifar10")


def test_unknown_name_and_bad_limits(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'.*cifar10.*known: cifar10"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="fashion-mnist"):
        candidate_dirs("mnist")
    bad = [("limit_train", 0), ("limit_test", -1), ("limit_train", 2.5), ("limit_test", True)]
    for word, value in bad:
        with pytest.raises(ValueError, match=word):
            load_dataset("fashion-mnist", tmp_path, **{word: value})
    assert D.dataset_names() == ["cifar10", "cifar100", "svhn", "fashion-mnist", "folder"]


def flip_middle(raw: bytes) -> bytes:
    at = len(raw) // 2
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


def edit_content(path: Path) -> None:
    """Flip the middle byte of the first batch (or of the IDX data) and rewrite a valid .gz."""
    if path.name.endswith(".tar.gz"):
        members = tar_members(path)
        first = next(iter(members))
        write_tar(path, {**members, first: flip_middle(members[first])})
    else:
        path.write_bytes(gzip.compress(flip_middle(gzip.decompress(path.read_bytes()))))


def drop_test_batch(path: Path) -> None:
    tests = {f"{folder}/{test[0]}" for folder, _, test, _ in _CIFAR.values()}
    write_tar(path, {k: v for k, v in tar_members(path).items() if k not in tests})


CIFAR_BATCH, IMAGES, LABELS = ("cifar-10-batches-py/data_batch_2", "train-images-idx3-ubyte",
                               "t10k-labels-idx1-ubyte")
FAULTS: dict[str, Callable[[Path], object]] = {
    "missing": lambda p: p.unlink(),
    "empty": lambda p: p.write_bytes(b""),
    "half": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "short": lambda p: p.write_bytes(p.read_bytes()[:-5]),  # e.g. the gzip trailer cut
    "garbage": lambda p: p.write_bytes(  # the right size, no structure at all
        (b"\xde\xad\xbe\xef" * p.stat().st_size)[: p.stat().st_size]),
    "flipped": lambda p: p.write_bytes(flip_middle(p.read_bytes())),  # one byte, as stored
    "edited": edit_content,  # one byte of the content; the .gz / .tar.gz itself is valid
    "not-tar": lambda p: p.write_bytes(gzip.compress(b"not a tar archive" * 100)),
    "lost-member": drop_test_batch,
    "swapped": lambda p: p.write_bytes(p.with_name(p.name.replace(LABELS, IMAGES)).read_bytes()),
}
FORMATS: dict[str, tuple[str, Callable[[Path, pytest.MonkeyPatch], object]]] = {
    "cifar10-tar": ("cifar10", lambda f, mp: make_cifar(f, "cifar10", monkeypatch=mp)),
    "cifar100-tar": ("cifar100", lambda f, mp: make_cifar(f, "cifar100", monkeypatch=mp)),
    "cifar10-folder": ("cifar10", lambda f, _: write_members(f, cifar_members("cifar10", 2, 0)[0])),
    "svhn": ("svhn", lambda f, mp: make_svhn(f, {"train": 3, "test": 2, "extra": 2},
                                             monkeypatch=mp)),
    "fashion-gz": ("fashion-mnist", lambda f, mp: make_fashion(f, monkeypatch=mp)),
    "fashion-raw": ("fashion-mnist", lambda f, mp: make_fashion(f, gz=False, monkeypatch=mp)),
}
NOT_FOUND, SUM = "data not found", "checksum mismatch"
TAR, GZ = "is not a readable tar.gz archive", "is not a valid gzip file"
MAT, PICKLE = "is not a readable MATLAB .mat file", "unreadable pickle"
HEADER, SIZE = "IDX header: the file is truncated", "data bytes for IDX dimensions"
MAGIC, SWAPPED = "wrong IDX magic deadbeef", "wrong IDX magic 00000803 (expected 00000801)"
ONE_VALUE = "loads, with exactly one value changed"
TARS = [("cifar10-tar", "cifar-10-python.tar.gz", "cifar-10-batches-py/test_batch"),
        ("cifar100-tar", "cifar-100-python.tar.gz", "cifar-100-python/test")]
# format, file, fault -> message with verify=True, with verify=False; the CLI runs the ones marked
DAMAGED = [
    *[(fmt, file, *row) for fmt, file, test in TARS for row in [
        ("missing", NOT_FOUND, NOT_FOUND, fmt == "cifar100-tar"),
        ("empty", SUM, TAR, False),
        ("half", SUM, TAR, False),
        ("short", SUM, TAR, fmt == "cifar10-tar"),
        ("garbage", SUM, TAR, False),
        ("flipped", SUM, TAR, False),
        ("edited", SUM, ONE_VALUE, False),
        ("not-tar", SUM, TAR, False),
        ("lost-member", SUM, f"lacks {test}: not the official archive", False)]],
    # an extracted folder has no checksum (none is published per batch): verify changes nothing
    *[("cifar10-folder", CIFAR_BATCH, fault, on, off, cli) for fault, on, off, cli in [
        ("missing", NOT_FOUND, NOT_FOUND, True),
        ("empty", PICKLE, PICKLE, False),
        ("half", PICKLE, PICKLE, False),
        ("short", PICKLE, PICKLE, False),
        ("garbage", PICKLE, PICKLE, True),
        ("flipped", ONE_VALUE, ONE_VALUE, False)]],
    *[("svhn", f"{split}_32x32.mat", fault, on, off, cli and split == "extra")
      for split in ("train", "test", "extra") for fault, on, off, cli in [
        ("missing", NOT_FOUND, NOT_FOUND, True),
        ("empty", SUM, MAT, False),
        ("half", SUM, MAT, True),
        ("short", SUM, MAT, False),
        ("garbage", SUM, MAT, False),
        ("flipped", SUM, ONE_VALUE, False)]],
    # the gzip CRC is checked before the md5 of the content
    *[("fashion-gz", f"{stem}.gz", fault, on, off, cli and stem == IMAGES)
      for stem in (IMAGES, LABELS) for fault, on, off, cli in [
        ("missing", NOT_FOUND, NOT_FOUND, False),
        ("empty", SUM, HEADER, False),
        ("half", GZ, GZ, False),
        ("short", GZ, GZ, False),
        ("garbage", GZ, GZ, False),
        ("flipped", GZ, GZ, True),
        ("edited", SUM, ONE_VALUE if stem == IMAGES else SIZE, True)]],
    *[("fashion-raw", stem, fault, on, off, cli and stem == LABELS)
      for stem in (IMAGES, LABELS) for fault, on, off, cli in [
        ("missing", NOT_FOUND, NOT_FOUND, True),
        ("empty", SUM, HEADER, False),
        ("half", SUM, SIZE if stem == IMAGES else HEADER, True),
        ("short", SUM, SIZE, False),
        ("garbage", SUM, MAGIC, False),
        ("flipped", SUM, ONE_VALUE if stem == IMAGES else SIZE, False)]],
    ("fashion-gz", f"{LABELS}.gz", "swapped", SUM, SWAPPED, False),  # images in their place
    ("fashion-raw", LABELS, "swapped", SUM, SWAPPED, False),
]


def changed_values(a: D.ImageData, b: D.ImageData) -> int:
    fields = ("train_images", "train_labels", "test_images", "test_labels")
    assert [getattr(a, f).shape for f in fields] == [getattr(b, f).shape for f in fields]
    return sum(int((getattr(a, f) != getattr(b, f)).sum()) for f in fields)


@pytest.mark.parametrize(("fmt", "file", "fault", "with_verify", "without_verify", "cli"),
                         DAMAGED, ids=[f"{r[0]}-{r[1].rsplit('/')[-1]}-{r[2]}" for r in DAMAGED])
def test_damaged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str], fmt: str, file: str, fault: str,
                       with_verify: str, without_verify: str, cli: bool) -> None:
    """Every fault of every file format: one line naming the file and the fix, or (the bytes
    still parse, no checksum is checked) a load with exactly the one damaged value changed."""
    name, write = FORMATS[fmt]
    folder = tmp_path / "data"
    write(folder, monkeypatch)
    intact = load_dataset(name, folder)
    path = folder / file
    FAULTS[fault](path)
    messages: dict[bool, str] = {}
    for verify, expected in ((True, with_verify), (False, without_verify)):
        if expected == ONE_VALUE:
            assert changed_values(load_dataset(name, folder, verify=verify), intact) == 1
            continue
        with pytest.raises(DataError) as err:
            load_dataset(name, folder, verify=verify)
        msg = messages[verify] = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{name}: ") and expected in msg
        assert "--download" in msg
        if expected == NOT_FOUND:
            assert (f"need {file}" if fmt.endswith("-tar") else f"{folder} (lacks {file}") in msg
            assert "--data-dir" in msg
        else:
            assert str(path) in msg
        if expected == SUM:
            assert re.search(rf"{re.escape(str(path))} checksum mismatch \((decompressed )?"
                             rf"md5 [0-9a-f]{{32}}, expected [0-9a-f]{{32}}\)", msg)
    if cli:
        capsys.readouterr()
        code = main(["train", "--dataset", name, "--data-dir", str(folder), "--device", "cpu",
                     "--out", str(tmp_path / "out")])
        err_text = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err_text
        assert err_text == f"ncslim train: error: {messages[True]}\n"
        assert not (tmp_path / "out").exists()


class Evil:
    def __init__(self, call: object, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple:
        return self.call, (self.arg,)


@pytest.mark.parametrize("how", ["system", "eval", "exec"])
@pytest.mark.parametrize("where", ["archive", "folder"])
def test_malicious_pickle_runs_no_code(tmp_path, monkeypatch, how, where):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    payload = {"system": Evil(os.system, f"touch {marker}"), "eval": Evil(eval, code),
               "exec": Evil(exec, code)}[how]
    members, _ = cifar_members("cifar10", 1, 0)
    members["cifar-10-batches-py/data_batch_1"] = pickle.dumps(
        {b"data": payload, b"labels": [0]}, protocol=2)
    if where == "archive":  # even with a matching checksum
        make_cifar(tmp_path / "data", monkeypatch=monkeypatch)
        path = write_tar(tmp_path / "data" / "cifar-10-python.tar.gz", members)
        monkeypatch.setitem(D.MD5, "cifar10", {path.name: md5(path.read_bytes())})
    else:
        write_members(tmp_path / "data", members)
    with pytest.raises(DataError, match=r"data_batch_1: refused to unpickle \w+\.\w+"):
        load_dataset("cifar10", tmp_path / "data")
    assert not marker.exists()
