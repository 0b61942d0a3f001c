"""Dataset loading and the batch pipeline, on tiny files written in the official formats."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ncslim
from ncslim import data as D
from ncslim.cli import main
from ncslim.data import DATASETS, DataError, batches, candidate_dirs, load_dataset
from ncslim.data import catalog as C
from ncslim.data import cifar as cifar_reader
from ncslim.data import idx as idx_reader
from ncslim.data.batching import _crop_flip
from ncslim.data.catalog import _CIFAR
from ncslim.data.cifar import _unpickle_batch
from ncslim.data.idx import _read_idx

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the real Debian root, cache, environment or proxies unless it asks."""
    monkeypatch.setattr(C, "DEBIAN_ROOT", tmp_path / "debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for var in ("NCSLIM_DATA", "NCSLIM_DOWNLOAD_URL", "http_proxy", "HTTP_PROXY",
                "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------- file writers


class Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle did for the official CIFAR batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_str2(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_str2
    dispatch[str] = save_str2


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (as in 2009) names the module numpy.core.multiarray
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_members(name: str, per_batch: int, seed: int) -> tuple[dict[str, bytes], tuple]:
    """Pickled batches by member name, and the expected (train_x, train_y, test_x, test_y)."""
    folder, train, test, key = _CIFAR[name]
    rng = np.random.default_rng(seed)
    classes = DATASETS[name].num_classes
    members, parts = {}, {}
    for i, member in enumerate(train + test):
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        rows[0, 1 * 1024 + 5 * 32 + 7] = 200 + i  # image 0, channel 1 (G), row 5, column 7
        labels = [int(v) for v in rng.integers(0, classes, per_batch)]
        labels[-1] = classes - 1
        members[f"{folder}/{member}"] = py2_pickle(
            {b"batch_label": b"batch", key.encode(): labels, b"data": rows,
             b"filenames": [b"x.png"] * per_batch})
        parts[member] = (rows.reshape(-1, 3, 32, 32), np.array(labels))
    expected = tuple(np.concatenate([parts[m][k] for m in split])
                     for split in (train, test) for k in (0, 1))
    members[f"{folder}/batches.meta"] = py2_pickle({b"label_names": [b"a"]})
    return members, (expected[0], expected[1], expected[2], expected[3])


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member, raw in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_members(folder: Path, members: dict[str, bytes]) -> None:
    """Archive members as an extracted folder tree."""
    for member, raw in members.items():
        (folder / member).parent.mkdir(parents=True, exist_ok=True)
        (folder / member).write_bytes(raw)


def make_cifar(folder: Path, name: str = "cifar10", per_batch: int = 3, seed: int = 0,
               monkeypatch: pytest.MonkeyPatch | None = None) -> tuple:
    members, expected = cifar_members(name, per_batch, seed)
    archive = next(iter(D.MD5[name]))
    path = write_tar(folder / archive, members)
    if monkeypatch is not None:
        monkeypatch.setitem(D.MD5, name, {archive: md5(path.read_bytes())})
    return expected


def make_svhn(folder: Path, sizes: dict[str, int], seed: int = 0,
              monkeypatch: pytest.MonkeyPatch | None = None) -> dict[str, tuple]:
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out, sums = {}, {}
    for split, n in sizes.items():
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        x[3, 10, 2, 1] = 77  # image 1, channel 2 (B), row 3, column 10
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # digit 0
        path = folder / f"{split}_32x32.mat"
        savemat(path, {"X": x, "y": y})
        out[split] = (x, y)
        sums[path.name] = md5(path.read_bytes())
    if monkeypatch is not None:
        monkeypatch.setitem(D.MD5, "svhn", {**D.MD5["svhn"], **sums})
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_fashion(folder: Path, n_train: int = 7, n_test: int = 5, seed: int = 0,
                 gz: bool = True, monkeypatch: pytest.MonkeyPatch | None = None,
                 label: int | None = None) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)
        images[0, 3, 20] = 99
        labels = rng.integers(0, 10, n) if label is None else np.full(n, label)
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels.astype(np.uint8)
    sums = {}
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        sums[f"{stem}.gz"] = md5(raw)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    if monkeypatch is not None:
        monkeypatch.setitem(D.MD5, "fashion-mnist", sums)
    return arrays


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


# ----------------------------------------------------------------------------- downloading


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder served on 127.0.0.1 and named by $NCSLIM_DOWNLOAD_URL."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("NCSLIM_DOWNLOAD_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_into_data_dir_then_load(tmp_path, monkeypatch, mirror):
    expected = make_cifar(mirror, monkeypatch=monkeypatch)
    target = tmp_path / "target"
    data = load_dataset("cifar10", target, download=True)
    assert [p.name for p in target.iterdir()] == ["cifar-10-python.tar.gz"]
    assert torch.equal(data.train_images, torch.from_numpy(expected[0]))
    (mirror / "cifar-10-python.tar.gz").unlink()  # present now: nothing is fetched again
    assert load_dataset("cifar10", target, download=True).test_images.shape[0] == 3


def test_download_into_cache(tmp_path, monkeypatch, mirror):
    make_svhn(mirror, {"train": 3, "test": 2, "extra": 2}, monkeypatch=monkeypatch)
    data = load_dataset("svhn", download=True, include_extra=False)
    cache = tmp_path / "xdg" / "ncslim" / "svhn"
    assert sorted(p.name for p in cache.iterdir()) == ["test_32x32.mat", "train_32x32.mat"]
    assert data.train_images.shape[0] == 3
    assert load_dataset("svhn", download=True).train_images.shape[0] == 5
    assert (cache / "extra_32x32.mat").is_file()


def test_download_fashion_checks_decompressed_md5(tmp_path, monkeypatch, mirror):
    make_fashion(mirror, monkeypatch=monkeypatch)
    D.download_dataset("fashion-mnist", tmp_path / "fm")
    assert sorted(p.name for p in (tmp_path / "fm").iterdir()) == sorted(
        f"{n}.gz" for n in IDX_NAMES)
    assert load_dataset("fashion-mnist", tmp_path / "fm").train_images.shape[0] == 7


def test_download_corrupt_file_leaves_nothing(tmp_path, monkeypatch, mirror):
    make_cifar(mirror, monkeypatch=monkeypatch)
    monkeypatch.setitem(D.MD5, "cifar10", {"cifar-10-python.tar.gz": "0" * 32})
    target = tmp_path / "target"
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", target, download=True)
    assert "checksum mismatch" in str(err.value) and "127.0.0.1" in str(err.value)
    assert list(target.iterdir()) == []


def test_download_404_names_the_url(tmp_path, mirror):
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", tmp_path / "t", download=True)
    url = f"{os.environ['NCSLIM_DOWNLOAD_URL'].rstrip('/')}/cifar-100-python.tar.gz"
    assert f"download of {url} failed: HTTP 404" in str(err.value)
    assert list((tmp_path / "t").iterdir()) == []


# ----------------------------------------------------------------------------- batches


def unnormalise(x: torch.Tensor, info) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def reference_crop(image: np.ndarray, oy: int, ox: int, flip: bool) -> np.ndarray:
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
    crop = padded[:, oy:oy + 32, ox:ox + 32]
    return crop[:, :, ::-1] if flip else crop


def random_images(n: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, channels, 32, 32), generator=gen, dtype=torch.uint8)


def test_crop_flip_matches_slicing_for_every_offset():
    image = random_images(1)[0]
    offsets = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)]
    oy, ox, flip = (torch.tensor(v) for v in zip(*offsets))
    out = _crop_flip(image.expand(len(offsets), -1, -1, -1), oy, ox, flip)
    for k, (a, b, f) in enumerate(offsets):
        np.testing.assert_array_equal(out[k].numpy(), reference_crop(image.numpy(), a, b, f))


def test_eval_batches_in_order_with_partial_last():
    info = DATASETS["cifar10"]
    images, labels = random_images(10), torch.arange(10)
    out = list(batches(images, labels, 4, info=info, train=False))
    assert [y.tolist() for _, y in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    x = torch.cat([b for b, _ in out])
    assert x.dtype == torch.float32 and torch.equal(unnormalise(x, info), images)
    dropped = list(batches(images, labels, 4, info=info, train=False, drop_last=True))
    assert [len(y) for _, y in dropped] == [4, 4]


def test_normalisation_values():
    for name, value in [("cifar10", 100), ("fashion-mnist", 37), ("svhn", 255)]:
        info = DATASETS[name]
        images = torch.full((3, info.in_channels, 32, 32), value, dtype=torch.uint8)
        x, _ = next(batches(images, torch.zeros(3, dtype=torch.long), 8, info=info, train=False))
        expected = (value / 255 - torch.tensor(info.mean)) / torch.tensor(info.std)
        torch.testing.assert_close(x, expected.view(1, -1, 1, 1).expand_as(x).float())


def test_train_shuffle_is_a_seeded_permutation():
    info = DATASETS["svhn"]  # no augmentation: batches are exactly the shuffled images
    images, labels = random_images(50), torch.arange(50)

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return list(batches(images, labels, 8, info=info, train=True, generator=gen))

    first = epoch(0)
    order = torch.cat([y for _, y in first])
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    assert [len(y) for _, y in first] == [8] * 6 + [2]
    assert torch.equal(unnormalise(torch.cat([x for x, _ in first]), info), images[order])
    again = epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(torch.cat([y for _, y in epoch(1)]), order)
    gen = torch.Generator().manual_seed(0)
    two = [torch.cat([y for _, y in batches(images, labels, 8, info=info, train=True,
                                            generator=gen)]) for _ in range(2)]
    assert not torch.equal(two[0], two[1])  # each call is a new epoch
    assert [len(y) for _, y in batches(images, labels, 8, info=info, train=True,
                                       drop_last=True)] == [8] * 6


def test_augmented_images_are_translations_and_flips():
    info = DATASETS["cifar10"]
    images, labels = random_images(24, seed=3), torch.arange(24)
    gen = torch.Generator().manual_seed(5)
    candidates = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)]
    seen = set()
    for x, y in batches(images, labels, 10, info=info, train=True, generator=gen):
        for got, src in zip(unnormalise(x, info).numpy(), y.tolist()):
            matches = [c for c in candidates
                       if np.array_equal(got, reference_crop(images[src].numpy(), *c))]
            assert len(matches) == 1
            seen.add(matches[0])
    assert len(seen) > 12


def test_augmentation_statistics():
    """Offsets uniform over 0..8 in both directions, about half the images flipped."""
    info = DATASETS["cifar100"]
    n = 4000
    ramp = (10 + 7 * torch.arange(32)).to(torch.uint8)
    image = torch.stack([ramp.expand(32, 32), ramp.view(32, 1).expand(32, 32),
                         torch.full((32, 32), 50, dtype=torch.uint8)])
    images = image.expand(n, -1, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([b for b, _ in batches(images, torch.zeros(n, dtype=torch.long), 256,
                                         info=info, train=True, generator=gen)])
    pixels = unnormalise(x, info).long()
    flipped = pixels[:, 0, 16, 17] < pixels[:, 0, 16, 16]
    assert 0.45 < flipped.float().mean() < 0.55
    centre = torch.where(flipped, pixels[:, 0, 16, 15], pixels[:, 0, 16, 16])
    ox = (centre - 10) // 7 - 12  # unflipped: column 16 shows source column 16 + ox - 4
    oy = (pixels[:, 1, 16, 16] - 10) // 7 - 12
    for offsets in (ox, oy):
        counts = offsets.bincount(minlength=9)
        assert len(counts) == 9 and counts.min() > 0.8 * n / 9 and counts.max() < 1.2 * n / 9
    top = pixels[:, 2, 0, 4:28]  # oy < 4: the top row comes from the zero padding
    assert (top[oy < 4] == 0).all() and (top[oy >= 4] == 50).all()


def test_channels_last_and_generator_free_use():
    info = DATASETS["cifar10"]
    images, labels = random_images(6), torch.arange(6)
    gen = torch.Generator().manual_seed(2)
    plain = list(batches(images, labels, 4, info=info, train=True, generator=gen))
    gen = torch.Generator().manual_seed(2)
    cl = list(batches(images, labels, 4, info=info, train=True, generator=gen,
                      channels_last=True))
    for (a, ya), (b, yb) in zip(plain, cl):
        assert b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert sorted(torch.cat([y for _, y in batches(images, labels, 4, info=info,
                                                   train=True)]).tolist()) == list(range(6))


def test_batches_bad_args_fail_at_the_call():
    info = DATASETS["cifar10"]
    images, labels = random_images(4), torch.arange(4)
    for size in (0, -1, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            batches(images, labels, size, info=info, train=False)
    with pytest.raises(ValueError, match="uint8"):
        batches(images.float(), labels, 2, info=info, train=False)
    with pytest.raises(ValueError, match="labels"):
        batches(images, labels[:3], 2, info=info, train=False)
    with pytest.raises(ValueError, match="channels"):
        batches(images, labels, 2, info=DATASETS["fashion-mnist"], train=False)


def test_cifar_archive_members_never_reach_the_file_system(tmp_path, monkeypatch):
    """Path traversal, absolute paths and links in an archive: nothing is extracted, ever."""
    members, _ = cifar_members("cifar10", 2, 0)
    hostile = {"../escaped.txt": b"x", f"{tmp_path}/absolute.txt": b"x", **members}
    folder = tmp_path / "data" / "deep"
    path = write_tar(folder / "cifar-10-python.tar.gz", hostile)
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
    assert "../escaped.txt" in names
    monkeypatch.setitem(D.MD5, "cifar10", {"cifar-10-python.tar.gz": md5(path.read_bytes())})
    data = load_dataset("cifar10", folder)
    assert data.train_images.shape[0] == 10
    assert not (folder.parent / "escaped.txt").exists()
    assert not (tmp_path / "absolute.txt").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-python.tar.gz"]


def test_a_link_in_place_of_a_cifar_batch_is_refused(tmp_path, monkeypatch):
    members, _ = cifar_members("cifar10", 2, 0)
    target = "cifar-10-batches-py/data_batch_1"
    del members[target]
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, raw in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        link = tarfile.TarInfo(target)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    monkeypatch.setitem(D.MD5, "cifar10", {"cifar-10-python.tar.gz": md5(path.read_bytes())})
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_1: not the official"):
        load_dataset("cifar10", tmp_path)


# ----------------------------------------------------------------------------- bounded cost
# Untrusted files cost bounded memory and time: headers are checked before data is read, and
# decompression stops where the header's promise (or a sane limit) ends.

IDX_OFFICIAL = {3: "train-images-idx3-ubyte.gz", 1: "t10k-labels-idx1-ubyte.gz"}
IDX_FAULTS = {  # fault -> what its message says (verify=False)
    "header-cut": "IDX header: the file is truncated",
    "data-cut": "the file is truncated",
    "trailing": "the file is corrupt: it holds more than its header promises",
    "dims": "not a Fashion-MNIST file",
}
MAX_DIM = 2**32 - 1


def idx_header(ndim: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, ndim]) + struct.pack(f">{ndim}I", *dims)


@st.composite
def damaged_idx(draw: st.DrawFn) -> tuple[int, bytes, bytes, str]:
    """``(ndim, intact content, damaged content, fault)`` of a small Fashion-MNIST IDX file."""
    ndim = draw(st.sampled_from([3, 1]))
    n, seed = draw(st.integers(0, 4)), draw(st.integers(0, 2**32 - 1))
    item = (28, 28) if ndim == 3 else ()
    size = n * (784 if ndim == 3 else 1)
    data = np.random.default_rng(seed).integers(0, 10 if ndim == 1 else 256, size, np.uint8)
    intact = idx_header(ndim, (n, *item)) + data.tobytes()
    fault = draw(st.sampled_from(sorted(IDX_FAULTS)))
    if fault in ("header-cut", "data-cut"):
        head = len(idx_header(ndim, (n, *item)))
        if fault == "data-cut" and size == 0:
            fault = "header-cut"
        cut = (draw(st.integers(0, head - 1)) if fault == "header-cut"
               else draw(st.integers(head, len(intact) - 1)))
        return ndim, intact, intact[:cut], fault
    if fault == "trailing":
        return ndim, intact, intact + draw(st.binary(min_size=1, max_size=3000)), fault
    huge = st.integers(idx_reader._IDX_MAX_ITEMS + 1, MAX_DIM)
    if ndim == 1:
        dims: tuple[int, ...] = (draw(huge),)
    else:  # too many images, or images that are not 28x28 (any number of them)
        shape = st.tuples(st.integers(0, MAX_DIM), st.integers(0, MAX_DIM))
        dims = draw(st.one_of(st.tuples(huge, st.just((28, 28))),
                              st.tuples(st.integers(0, MAX_DIM),
                                        shape.filter(lambda s: s != (28, 28)))))
        dims = (dims[0], *dims[1])
    return ndim, intact, idx_header(ndim, dims) + draw(st.binary(max_size=3000)), fault


@settings(deadline=None, max_examples=150,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged_idx(), gz=st.booleans())
def test_idx_files_that_break_their_header_are_one_line(tmp_path, monkeypatch, case, gz):
    """Cut in the header or the data, data past the header's promise, dimensions that are not
    N x 28 x 28 (or N labels) with N at most 2,000,000: a one-line DataError naming the file and
    the fix, a checksum mismatch first when checksums are on; the intact file reads exactly."""
    ndim, intact, damaged, fault = case
    official = IDX_OFFICIAL[ndim]
    path = tmp_path / (official if gz else official.removesuffix(".gz"))
    monkeypatch.setitem(D.MD5, "fashion-mnist", {**D.MD5["fashion-mnist"], official: md5(intact)})
    path.write_bytes(gzip.compress(intact) if gz else intact)
    array = _read_idx("fashion-mnist", path, official, ndim, True)
    assert array.tobytes() == intact[4 + 4 * ndim:] and array.shape[1:] == (28, 28)[:ndim - 1]
    path.write_bytes(gzip.compress(damaged) if gz else damaged)
    for verify in (True, False):
        with pytest.raises(DataError) as err:
            _read_idx("fashion-mnist", path, official, ndim, verify)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"fashion-mnist: {path}")
        assert msg.endswith("delete it and download again (--download)")
        assert ("checksum mismatch (decompressed md5" if verify else IDX_FAULTS[fault]) in msg


ZEROS_MEMBER = 64 << 20  # one gzip member of zeros; a bomb repeats it


def write_bomb(path: Path, head: bytes, gib: int) -> Path:
    """``head`` and then ``gib`` GiB of zeros, gzipped into a few MB, in about a second.

    The zeros are streamed through ``gzip.GzipFile`` in 4 MiB chunks into one 64 MiB member,
    which is then written ``16 * gib`` times: several members are one gzip stream to every
    reader (RFC 1952), and nothing the size of the content is ever held in memory.
    """
    zeros, chunk = io.BytesIO(), bytes(4 << 20)
    with gzip.GzipFile(fileobj=zeros, mode="wb", compresslevel=9, mtime=0) as gz:
        for _ in range(ZEROS_MEMBER // len(chunk)):
            gz.write(chunk)
    with open(path, "wb") as out:
        out.write(gzip.compress(head, mtime=0))
        for _ in range(gib * (1 << 30) // ZEROS_MEMBER):
            out.write(zeros.getbuffer())
    with gzip.open(path) as gz:  # the stream goes on past the first member of zeros
        got = sum(len(gz.read(1 << 20)) for _ in range((len(head) + ZEROS_MEMBER >> 20) + 2))
    assert got > len(head) + ZEROS_MEMBER
    return path


BOMB_SCRIPT = r"""
import json, re, sys, time
from ncslim.data import DataError, load_dataset
out = []
for name, folder, verify in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        load_dataset(name, folder, verify=verify)
        message = "loaded"
    except DataError as err:
        message = str(err)
    out.append((message, time.perf_counter() - start))
peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1])
print(json.dumps({"results": out, "maxrss": peak_kib * 1024}))
"""


def test_compression_bombs_cost_bounded_memory_and_time(tmp_path, monkeypatch):
    """A 4 GB gzip bomb behind an IDX header promising ten images, and a CIFAR archive whose
    tar is followed by 4 GB of zeros: each refused in one line naming the file, in a fresh
    process whose peak RSS (torch included) stays under 1 GiB; the IDX bomb is decompressed no
    further than the 64 MiB limit, the archive no further than its 1 GiB limit."""
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    bomb = write_bomb(fashion / "train-images-idx3-ubyte.gz", idx_header(3, (10, 28, 28)), 4)
    for name in IDX_NAMES[1:]:
        (fashion / f"{name}.gz").write_bytes(b"")  # never read: the bomb is read first
    tar = tmp_path / "tar" / "cifar-10-python.tar.gz"
    write_tar(tar, cifar_members("cifar10", 2, 0)[0])
    (tmp_path / "cifar").mkdir()
    cifar = write_bomb(tmp_path / "cifar" / tar.name, gzip.decompress(tar.read_bytes()), 4)
    runs = [("fashion-mnist", str(fashion), True), ("fashion-mnist", str(fashion), False),
            ("cifar10", str(cifar.parent), False)]
    src = str(Path(ncslim.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    # the script reports VmHWM, its own peak (ru_maxrss would carry pytest's across exec)
    done = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, json.dumps(runs)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["maxrss"] < 1 << 30
    (idx_on, idx_off, archive) = report["results"]
    for (message, seconds), path in ((idx_on, bomb), (idx_off, bomb), (archive, cifar)):
        assert "\n" not in message and message.endswith("(--download)")
        assert str(path) in message and seconds < 60
    for message, _ in (idx_on, idx_off):
        got = int(re.search(r"over (\d+) data bytes for IDX dimensions 10x28x28", message)[1])
        assert got <= C._IDX_MAX_CONTENT + (1 << 20)
        assert "more than its header promises" in message
    assert f"decompresses to over {cifar_reader._CIFAR_MAX_TOTAL:,} bytes" in archive[0]


def tar_header(name: str, size: int, fmt: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A tar header claiming ``size`` bytes, without them."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=fmt)


CIFAR_NAMES = ["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/readme.html",
               "cifar-10-batches-py/" + "x" * 150, "././@LongLink"]


@settings(deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(cifar_reader._CIFAR_MAX_MEMBER + 1, 2**40),
       name=st.sampled_from(CIFAR_NAMES), fmt=st.sampled_from([tarfile.GNU_FORMAT,
                                                              tarfile.PAX_FORMAT]),
       first=st.booleans(), tail=st.integers(0, 5000))
def test_cifar_member_claiming_too_much_is_refused_unread(tmp_path, monkeypatch, size, name,
                                                           fmt, first, tail):
    """A member whose header (ustar, GNU base-256 or pax) claims over 256 MiB, wanted or not, a
    long name, or a GNU long-name header itself claiming that much: refused from the header, with
    the data it claims absent, with and without checksums."""
    before = b"" if first else tar_header("cifar-10-batches-py/batches.meta", 0, fmt)
    kind = tarfile.GNUTYPE_LONGNAME if name == "././@LongLink" else tarfile.REGTYPE
    fmt = tarfile.GNU_FORMAT if kind == tarfile.GNUTYPE_LONGNAME else fmt
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(gzip.compress(before + tar_header(name, size, fmt, kind) + bytes(tail)))
    monkeypatch.setitem(D.MD5, "cifar10", {path.name: md5(path.read_bytes())})
    for verify in (True, False):
        with pytest.raises(DataError) as err:
            load_dataset("cifar10", tmp_path, verify=verify)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"cifar10: {path}: member ")
        assert f"claims {size:,} bytes, more than any CIFAR archive member" in msg
        assert msg.endswith("not the official archive; delete it and download again (--download)")


def test_cifar_archive_limits_on_members_and_total(tmp_path, monkeypatch):
    members, _ = cifar_members("cifar10", 2, 0)
    path = tmp_path / "cifar-10-python.tar.gz"

    def refused(what: str) -> None:
        monkeypatch.setitem(D.MD5, "cifar10", {path.name: md5(path.read_bytes())})
        for verify in (True, False):
            with pytest.raises(DataError, match=re.escape(f"cifar10: {path}")) as err:
                load_dataset("cifar10", tmp_path, verify=verify)
            assert what in str(err.value) and "\n" not in str(err.value)

    write_tar(path, {**members, **{f"pad/{i}": b"" for i in range(1001)}})
    refused("over 1,000 members, more than any CIFAR archive: not the official archive")
    write_tar(path, members)
    assert load_dataset("cifar10", tmp_path, verify=False).train_images.shape[0] == 10
    monkeypatch.setattr(cifar_reader, "_CIFAR_MAX_TOTAL", 1 << 20)  # 2 MiB of zeros after the tar
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + bytes(2 << 20)))
    refused(f"decompresses to over {1 << 20:,} bytes, more than any CIFAR archive holds")


def test_an_oversized_file_in_an_extracted_cifar_folder_is_refused_unread(tmp_path):
    write_members(tmp_path, cifar_members("cifar10", 2, 0)[0])
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    os.truncate(batch, cifar_reader._CIFAR_MAX_MEMBER + 1)  # sparse: nothing is written
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    most = cifar_reader._CIFAR_MAX_MEMBER
    assert str(err.value) == (f"cifar10: {batch}: {most + 1:,} bytes, more "
                              f"than a CIFAR batch holds (at most {most:,}):"
                              f" not an official CIFAR file; delete it and download again "
                              f"(--download)")


def test_a_downloaded_gzip_bomb_fails_verification_and_is_not_kept(tmp_path, monkeypatch,
                                                                    mirror):
    make_fashion(mirror, monkeypatch=monkeypatch)
    bomb = mirror / "train-images-idx3-ubyte.gz"
    with gzip.GzipFile(bomb, "wb", compresslevel=1) as gz:  # 65 MiB of content
        gz.write(idx_header(3, (1, 28, 28)))
        for _ in range(65):
            gz.write(bytes(1 << 20))
    with pytest.raises(DataError) as err:
        D.download_dataset("fashion-mnist", tmp_path / "fm")
    assert (f"failed verification: checksum mismatch (md5 of over "
            f"{C._IDX_MAX_CONTENT:,} decompressed bytes, expected") in str(err.value)
    assert list((tmp_path / "fm").iterdir()) == []


def _mat_variable(name: str, value: np.ndarray) -> bytes:
    """One variable of a MATLAB 5 file as scipy writes it (its tag and body), uncompressed."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {name: value}, do_compression=False)
    return buffer.getvalue()[128:]


def _mat_file(*variables: bytes) -> bytes:
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {})
    return buffer.getvalue()[:128] + b"".join(variables)


def _compressed(variable: bytes, trailing_zeros: int = 0) -> bytes:
    deflate = zlib.compressobj(9)
    body = deflate.compress(variable)
    for _ in range(trailing_zeros >> 24):
        body += deflate.compress(bytes(1 << 24))
    body += deflate.flush()
    return struct.pack("<II", 15, len(body)) + body  # compressed elements are not padded


@pytest.mark.parametrize("fault", ["bomb", "huge X", "28x28 X", "y of another shape",
                                   "claims more than the file", "no y", "not a mat file"])
def test_an_svhn_mat_file_is_checked_from_its_headers_before_scipy_reads_it(tmp_path, fault):
    from ncslim.data.matfile import check_svhn_mat

    x = np.zeros((32, 32, 3, 10), np.uint8)
    y = _compressed(_mat_variable("y", np.ones((10, 1), np.uint8)))
    variables = {
        "bomb": [_compressed(_mat_variable("X", x), trailing_zeros=256 << 20), y],
        "huge X": [_compressed(_mat_variable("X", x).replace(
            struct.pack("<4i", 32, 32, 3, 10), struct.pack("<4i", 32, 32, 3, 10**9))), y],
        "28x28 X": [_compressed(_mat_variable("X", np.zeros((28, 28, 3, 10), np.uint8))), y],
        "y of another shape": [_compressed(_mat_variable("X", x)),
                               _compressed(_mat_variable("y", np.ones((10, 2), np.uint8)))],
        "claims more than the file": [_mat_variable("X", x)[:8].replace(
            struct.pack("<I", len(_mat_variable("X", x)) - 8), struct.pack("<I", 10**9)), y],
        "no y": [_compressed(_mat_variable("X", x))],
        "not a mat file": [],
    }[fault]
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(b"garbage" if fault == "not a mat file" else _mat_file(*variables))
    messages = {"bomb": "variable X inflates past the 30,776 bytes its header promises",
                "huge X": "variable X has dimensions 32x32x3x1000000000, not SVHN's",
                "28x28 X": "variable X has dimensions 28x28x3x10, not SVHN's",
                "y of another shape": "variable y has dimensions 10x2, not SVHN's",
                "claims more than the file": "a variable claims 1,000,000,000 bytes, more than "
                                             "the file holds",
                "no y": "lacks y", "not a mat file": "not a MATLAB 5 .mat file"}
    started = time.perf_counter()
    with pytest.raises(DataError, match=f"svhn: {re.escape(str(path))} is not a readable MATLAB "
                                        f".mat file \\({re.escape(messages[fault])}"):
        check_svhn_mat("svhn", path)
    assert time.perf_counter() - started < 2  # the bomb is never inflated to its end
    good = _mat_file(_compressed(_mat_variable("X", x)), y)
    path.write_bytes(good)
    check_svhn_mat("svhn", path)
