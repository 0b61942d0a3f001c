"""What the data tests share: tiny files in the official formats, an isolated environment
(autouse in each data test module), and a download mirror on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ncslim import data as D
from ncslim.data import DATASETS
from ncslim.data import catalog as C
from ncslim.data.catalog import _CIFAR

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


# ----------------------------------------------------------------------------- downloading
