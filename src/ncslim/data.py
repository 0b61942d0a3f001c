"""Datasets as uint8 tensors on the training device, batched with on-device augmentation.

Images are read from the official files (CIFAR ``*-python.tar.gz`` pickles, SVHN ``*_32x32.mat``,
Fashion-MNIST IDX) into one ``uint8 [N, C, 32, 32]`` tensor per split; move them to the GPU once
with :meth:`ImageData.to`. :func:`batches` then shuffles, pads-and-crops, flips and normalises a
whole batch at a time on that device: no per-sample Python, no float copy of the whole set.

    >>> import torch
    >>> from ncslim.data import DATASETS, batches
    >>> info = DATASETS["cifar10"]
    >>> images = torch.full((10, 3, 32, 32), 128, dtype=torch.uint8)
    >>> labels = torch.arange(10)
    >>> gen = torch.Generator().manual_seed(0)
    >>> out = list(batches(images, labels, 4, info=info, train=True, generator=gen))
    >>> [tuple(x.shape) for x, _ in out], out[0][0].dtype
    ([(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)], torch.float32)
    >>> sorted(torch.cat([y for _, y in out]).tolist()) == list(range(10))
    True

Loading real data (here Debian's Fashion-MNIST, if installed)::

    >>> data = load_dataset("fashion-mnist").to("cuda")  # doctest: +SKIP
    >>> gen = torch.Generator("cuda").manual_seed(0)  # doctest: +SKIP
    >>> for x, y in batches(data.train_images, data.train_labels, 64,  # doctest: +SKIP
    ...                     info=data.info, train=True, generator=gen):
    ...     pass

Where data is looked for, in order (:func:`candidate_dirs`):

1. ``data_dir`` itself (the files directly in it), then ``data_dir/<name>``;
2. ``$NCSLIM_DATA/<name>``: ``NCSLIM_DATA`` is a root with one subfolder per dataset (the files
   themselves are not looked for in the root: MNIST and Fashion-MNIST share file names);
3. ``/usr/share/datasets/<name>`` (Debian's ``dataset-*`` packages);
4. ``${XDG_CACHE_HOME:-~/.cache}/ncslim/<name>``, where ``download=True`` puts the files when no
   ``data_dir`` is given.

Every file found is checked against its official md5 (``verify=False`` skips it; for
Fashion-MNIST the md5 is that of the decompressed IDX content, so recompressed copies pass).
An already-extracted ``cifar-10-batches-py/`` (or ``cifar-100-python/``) folder is accepted too,
without a checksum (none is published per batch). Archives are never extracted to disk, and the
CIFAR pickles are read with an unpickler that only builds numpy arrays and plain containers:
a crafted file cannot run code. ``$NCSLIM_DOWNLOAD_URL`` replaces the download base URL (a
mirror serving ``<base>/<filename>``). Every failure raises :class:`DataError` with a one-line
message saying what is wrong, where, and how to fix it.

Normalisation: CIFAR and SVHN use the usual per-channel mean/std; Fashion-MNIST (zero-padded from
28x28 to 32x32 so that every architecture keeps its 32x32 geometry) uses the mean/std of its padded
train set, ``0.2190 / 0.3318``. Augmentation (CIFAR only, as in the paper): zero-pad 4, random
32x32 crop, random horizontal flip; SVHN and Fashion-MNIST are not augmented.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import hashlib
import http.client
import importlib
import io
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "ImageData",
    "batches",
    "candidate_dirs",
    "dataset_names",
    "download_dataset",
    "load_dataset",
]


class DataError(ValueError):
    """A dataset that cannot be found, fetched or read; the message says how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the batch pipeline need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # zero-pad 4 + random crop + random horizontal flip when training
    image_size: int = 32


_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, _CIFAR_MEAN, _CIFAR_STD, augment=True),
    "cifar100": DatasetInfo("cifar100", 100, 3, _CIFAR_MEAN, _CIFAR_STD, augment=True),
    "svhn": DatasetInfo(
        "svhn", 10, 3, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), augment=False
    ),
    # mean/std of the 60000 train images zero-padded to 32x32, / 255 (tests recompute them)
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, (0.2190,), (0.3318,), augment=False),
}

# Official file names, their md5 (Fashion-MNIST: md5 of the decompressed IDX content) and the
# download base URL. Tests patch MD5 with the checksums of their tiny files.
_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MD5: dict[str, dict[str, str]] = {
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    "svhn": {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
URLS: dict[str, str] = {
    "cifar10": "https://www.cs.toronto.edu/~kriz",
    "cifar100": "https://www.cs.toronto.edu/~kriz",
    "svhn": "http://ufldl.stanford.edu/housenumbers",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
}
# CIFAR archive layout: folder inside the archive, train members, test members, label key.
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                ("test_batch",), "labels"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels"),
}
DEBIAN_ROOT = Path("/usr/share/datasets")
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
PAD = 4  # CIFAR augmentation: zero padding before the random crop
_FIX = "delete it and download again (--download)"


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/ncslim``, read at each call."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "ncslim"


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` accepts."""
    return list(DATASETS)


def _info(name: str) -> DatasetInfo:
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name), list(DATASETS), n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise DataError(f"unknown dataset {name!r}{hint}; known: {', '.join(DATASETS)}")


def candidate_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for ``name``'s files, in order (see the module docstring)."""
    _info(name)
    dirs: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        dirs += [root, root / name]
    env = os.environ.get("NCSLIM_DATA", "")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs += [Path(DEBIAN_ROOT) / name, cache_root() / name]
    return list(dict.fromkeys(dirs))


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ----------------------------------------------------------------------------- locating files


def _needed(name: str, include_extra: bool) -> list[str]:
    files = list(MD5[name])
    if name == "svhn" and not include_extra:
        files.remove("extra_32x32.mat")
    return files


def _scan(name: str, folder: Path, include_extra: bool) -> tuple[dict[str, Path], list[str]]:
    """The usable files of ``name`` in ``folder`` (key: official file name) and those missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for fname in _needed(name, include_extra):
        path = folder / fname
        if name == "fashion-mnist" and not path.is_file():
            path = folder / fname.removesuffix(".gz")  # uncompressed IDX is fine too
        if path.is_file():
            found[fname] = path
        elif name in _CIFAR and _cifar_folder(name, folder) is not None:
            found["folder"] = _cifar_folder(name, folder)
        else:
            missing.append(fname)
    return found, missing


def _cifar_lacks(name: str, folder: Path) -> list[str]:
    sub, train, test, _ = _CIFAR[name]
    return [f"{sub}/{m}" for m in train + test if not (folder / sub / m).is_file()]


def _cifar_folder(name: str, folder: Path) -> Path | None:
    return folder / _CIFAR[name][0] if not _cifar_lacks(name, folder) else None


def _not_found(name: str, dirs: list[Path], include_extra: bool) -> DataError:
    looked = []
    partial = False
    for d in dirs:
        found, missing = _scan(name, d, include_extra) if d.is_dir() else ({}, [])
        if found and missing:
            partial = True
            looked.append(f"{d} (lacks {', '.join(missing)})")
        elif name in _CIFAR and (d / _CIFAR[name][0]).is_dir():
            looked.append(f"{d} (lacks {', '.join(_cifar_lacks(name, d))})")
        else:
            looked.append(str(d))
    what = ", ".join(_needed(name, include_extra))
    if name in _CIFAR:
        what += f" or an extracted {_CIFAR[name][0]}/"
    fixes = ["pass --data-dir DIR", f"set NCSLIM_DATA=ROOT (files in ROOT/{name}/)"]
    if name in DEBIAN_PACKAGES:
        fixes.append(f"install Debian's {DEBIAN_PACKAGES[name]}")
    fixes.append("or use --download")
    extra = ""
    if name == "svhn" and include_extra and partial:
        extra = " (or --no-svhn-extra / include_extra=False to train without extra_32x32.mat)"
    return DataError(f"{name}: data not found (need {what}); looked in {', '.join(looked)}; "
                     f"{', '.join(fixes)}{extra}")


def _locate(name: str, dirs: list[Path], include_extra: bool) -> dict[str, Path] | None:
    for d in dirs:
        if d.is_dir():
            found, missing = _scan(name, d, include_extra)
            if not missing:
                return found
    return None


# ----------------------------------------------------------------------------- checksums


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _check_md5(name: str, path: Path, actual: str, expected: str, what: str = "") -> None:
    if actual != expected:
        raise DataError(f"{name}: {path} checksum mismatch ({what}md5 {actual}, expected "
                        f"{expected}): the file is corrupt or incomplete; {_FIX}")


def _gunzip(name: str, path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{name}: {path} is not a valid gzip file ({_one_line(err)}): it is "
                        f"truncated or corrupt; {_FIX}") from None


# ----------------------------------------------------------------------------- CIFAR


def _numpy_global(sub: str, attr: str) -> Any:
    for module in (f"numpy._core.{sub}", f"numpy.core.{sub}"):
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {sub}.{attr}")


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Everything a CIFAR batch pickle (Python 2 or 3, any protocol) may reference."""
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype}
    for sub, attr in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer")):
        obj = _numpy_global(sub, attr)
        for prefix in ("numpy._core", "numpy.core"):
            allowed[(f"{prefix}.{sub}", attr)] = obj
    allowed[("_codecs", "encode")] = __import__("_codecs").encode  # bytes in protocol-2 pickles
    for builtin in (dict, list, tuple, set, frozenset, bytes, bytearray, str, int, float, bool):
        for module in ("builtins", "__builtin__"):
            allowed[(module, builtin.__name__)] = builtin
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return obj


def _unpickle_batch(info: DatasetInfo, where: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    name = info.name
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as err:
        raise DataError(f"{name}: {where}: refused to unpickle {err} (a CIFAR batch holds only "
                        f"numpy arrays and lists): not an official CIFAR file; {_FIX}") from None
    except Exception as err:  # a damaged pickle can raise nearly anything
        raise DataError(f"{name}: {where}: unreadable pickle ({_one_line(err)}): the file is "
                        f"truncated or corrupt; {_FIX}") from None
    label_key = _CIFAR[name][3]
    if not isinstance(obj, dict):
        raise DataError(f"{name}: {where}: not a CIFAR batch (a {type(obj).__name__}, not a "
                        f"dict); {_FIX}")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = obj.get("data"), obj.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        raise DataError(f"{name}: {where}: 'data' is not a uint8 N x 3072 array; {_FIX}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        labels = np.empty(0, dtype=np.int64)
    if len(labels) != len(data) or (len(labels) and not
                                    (labels.min() >= 0 and labels.max() < info.num_classes)):
        raise DataError(f"{name}: {where}: {label_key!r} is not {len(data)} labels in "
                        f"0..{info.num_classes - 1}; {_FIX}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_archive(name: str, path: Path, members: list[str]) -> dict[str, bytes]:
    """The named members of a tar.gz, read in one sequential pass; nothing is extracted.

    The gzip stream is read to its end, so that its CRC and length are checked even when
    ``verify=False`` (tarfile's own ``r|gz`` never checks them).
    """
    wanted = set(members)
    out: dict[str, bytes] = {}
    try:
        with gzip.open(path) as gz, tarfile.open(fileobj=gz, mode="r|", bufsize=1 << 20) as tar:
            for member in tar:
                key = member.name.removeprefix("./")
                if key in wanted and member.isfile():
                    out[key] = tar.extractfile(member).read()  # type: ignore[union-attr]
            while gz.read(1 << 20):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{name}: {path} is not a readable tar.gz archive ({_one_line(err)}): "
                        f"it is truncated or corrupt; {_FIX}") from None
    missing = [m for m in members if m not in out]
    if missing:
        raise DataError(f"{name}: {path} lacks {', '.join(missing)}: not the official "
                        f"archive; {_FIX}")
    return out


def _load_cifar(name: str, found: dict[str, Path], verify: bool, **_: Any) -> tuple[Any, ...]:
    info = DATASETS[name]
    sub, train, test, _ = _CIFAR[name]
    archive_name = next(iter(MD5[name]))
    if archive_name in found:
        path = found[archive_name]
        if verify:
            _check_md5(name, path, _md5_file(path), MD5[name][archive_name])
        members = [f"{sub}/{m}" for m in train + test]
        raw = _read_cifar_archive(name, path, members)
        where = {m: f"{path} member {m}" for m in members}
    else:
        folder = found["folder"]
        members = [str(folder / m) for m in train + test]
        raw = {m: Path(m).read_bytes() for m in members}
        where = {m: m for m in members}
    parts = [_unpickle_batch(info, where[m], raw.pop(m)) for m in members]
    n_train = len(train)
    train_x = np.concatenate([p[0] for p in parts[:n_train]])
    train_y = np.concatenate([p[1] for p in parts[:n_train]])
    test_x = np.concatenate([p[0] for p in parts[n_train:]])
    test_y = np.concatenate([p[1] for p in parts[n_train:]])
    return train_x, train_y, test_x, test_y


# ----------------------------------------------------------------------------- SVHN


def _read_mat(name: str, path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """X as stored, (32, 32, 3, N) uint8, and y (N,) with digit 0 as 0 (stored as 10)."""
    if verify:
        _check_md5(name, path, _md5_file(path), MD5[name][path.name])
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{name}: reading {path} needs scipy: pip install scipy") from None
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except Exception as err:  # scipy raises many types on damaged files
        raise DataError(f"{name}: {path} is not a readable MATLAB .mat file "
                        f"({_one_line(err)}): it is truncated or corrupt; {_FIX}") from None
    x, y = mat.get("X"), mat.get("y")
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4
            and x.shape[:3] == (32, 32, 3)):
        raise DataError(f"{name}: {path}: 'X' is not a uint8 32x32x3xN array; {_FIX}")
    y = np.asarray(y).reshape(-1) if isinstance(y, np.ndarray) else np.empty(0)
    if len(y) != x.shape[3] or (len(y) and not (y.min() >= 0 and y.max() <= 10)):
        raise DataError(f"{name}: {path}: 'y' is not {x.shape[3]} labels in 1..10; {_FIX}")
    return x, (y.astype(np.int64) % 10)


def _stack_mats(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(32, 32, 3, N) pieces into one contiguous (N, 3, 32, 32), copied piece by piece."""
    total = sum(x.shape[3] for x, _ in parts)
    images = np.empty((total, 3, 32, 32), dtype=np.uint8)
    start = 0
    for x, _ in parts:
        images[start:start + x.shape[3]] = x.transpose(3, 2, 0, 1)  # [h,w,c,n] -> [n,c,h,w]
        start += x.shape[3]
    return images, np.concatenate([y for _, y in parts])


def _load_svhn(name: str, found: dict[str, Path], verify: bool, include_extra: bool = True,
               limit_train: int | None = None) -> tuple[Any, ...]:
    train = [_read_mat(name, found["train_32x32.mat"], verify)]
    # extra is 1.3 GB: not read when the train images alone already fill limit_train
    if include_extra and (limit_train is None or limit_train > train[0][0].shape[3]):
        train.append(_read_mat(name, found["extra_32x32.mat"], verify))
    train_x, train_y = _stack_mats(train)
    del train
    test_x, test_y = _stack_mats([_read_mat(name, found["test_32x32.mat"], verify)])
    return train_x, train_y, test_x, test_y


# ----------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(name: str, path: Path, official: str, ndim: int, verify: bool) -> np.ndarray:
    content = _gunzip(name, path) if path.suffix == ".gz" else path.read_bytes()
    if verify:
        _check_md5(name, path, _md5_bytes(content), MD5[name][official], "decompressed ")
    head = 4 + 4 * ndim
    magic = bytes([0, 0, 0x08, ndim])
    if len(content) < head and magic.startswith(content[:4]):
        raise DataError(f"{name}: {path}: {len(content)} bytes, shorter than the {head}-byte "
                        f"IDX header: the file is truncated; {_FIX}")
    if content[:4] != magic:
        raise DataError(f"{name}: {path}: wrong IDX magic {content[:4].hex() or 'none'} "
                        f"(expected 000008{ndim:02x}): not an IDX ubyte file; {_FIX}")
    dims = struct.unpack(f">{ndim}I", content[4:head])
    if len(content) != head + int(np.prod(dims)):
        raise DataError(f"{name}: {path}: {len(content) - head} data bytes for IDX dimensions "
                        f"{'x'.join(map(str, dims))}: the file is truncated or corrupt; {_FIX}")
    return np.frombuffer(content, dtype=np.uint8, offset=head).reshape(dims)


def _fashion_split(name: str, found: dict[str, Path], prefix: str,
                   verify: bool) -> tuple[np.ndarray, np.ndarray]:
    img_name, lab_name = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
    images = _read_idx(name, found[img_name], img_name, 3, verify)
    labels = _read_idx(name, found[lab_name], lab_name, 1, verify)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{name}: {found[img_name]} and {found[lab_name]} disagree: "
                        f"{'x'.join(map(str, images.shape))} images, {len(labels)} labels; "
                        f"{_FIX}")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{name}: {found[lab_name]}: label {labels.max()} outside 0..9; {_FIX}")
    padded = np.zeros((len(images), 1, 32, 32), dtype=np.uint8)
    padded[:, 0, 2:30, 2:30] = images  # zero border: every model keeps its 32x32 geometry
    return padded, labels.astype(np.int64)


def _load_fashion(name: str, found: dict[str, Path], verify: bool, **_: Any) -> tuple[Any, ...]:
    return (*_fashion_split(name, found, "train", verify),
            *_fashion_split(name, found, "t10k", verify))


_LOADERS = {"cifar10": _load_cifar, "cifar100": _load_cifar, "svhn": _load_svhn,
            "fashion-mnist": _load_fashion}


# ----------------------------------------------------------------------------- downloading


def _fetch(name: str, url: str, dest: Path, expected: str, gz_content: bool) -> None:
    """``url`` to a temporary file beside ``dest``, renamed only once its md5 matches."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    shutil.copyfileobj(response, out, 1 << 20)
            except urllib.error.HTTPError as err:
                err.close()  # it holds the connection
                raise DataError(f"{name}: download of {url} failed: HTTP {err.code} "
                                f"{_one_line(err.reason)}; check the URL ($NCSLIM_DOWNLOAD_URL) "
                                f"or put {dest.name} into {dest.parent} by hand") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                raise DataError(f"{name}: download of {url} failed ({_one_line(err)}); check "
                                f"the network or $NCSLIM_DOWNLOAD_URL, or put {dest.name} into "
                                f"{dest.parent} by hand") from None
        try:
            actual = _md5_bytes(_gunzip(name, tmp)) if gz_content else _md5_file(tmp)
        except DataError:
            actual = "of invalid gzip data"
        if actual != expected:
            raise DataError(f"{name}: {url} failed verification: checksum mismatch (md5 "
                            f"{actual}, expected {expected}); nothing was saved; try again or "
                            f"use another mirror ($NCSLIM_DOWNLOAD_URL)")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_dataset(name: str, root: str | Path, *, include_extra: bool = True) -> None:
    """Fetch the official files of ``name`` missing from ``root`` into ``root``, verified."""
    _info(name)
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{name}: cannot create {root} ({_one_line(err)}); pass a writable "
                        f"--data-dir DIR") from None
    base = (os.environ.get("NCSLIM_DOWNLOAD_URL") or URLS[name]).rstrip("/")
    _, missing = _scan(name, root, include_extra)
    for fname in missing:
        url = f"{base}/{fname}"
        print(f"{name}: downloading {url} -> {root / fname}", file=sys.stderr)
        _fetch(name, url, root / fname, MD5[name][fname], gz_content=name == "fashion-mnist")


# ----------------------------------------------------------------------------- loading


@dataclass(eq=False, repr=False)
class ImageData:
    """Both splits of a dataset: uint8 ``[N, C, 32, 32]`` images and int64 ``[N]`` labels."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    info: DatasetInfo

    def to(self, device: torch.device | str) -> ImageData:
        """The same data on ``device`` (still uint8: a quarter of the float size)."""
        return ImageData(self.train_images.to(device), self.train_labels.to(device),
                         self.test_images.to(device), self.test_labels.to(device), self.info)

    def __repr__(self) -> str:
        return (f"ImageData({self.info.name}: train {tuple(self.train_images.shape)}, "
                f"test {tuple(self.test_images.shape)}, {self.train_images.device})")


def _check_limit(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError(f"{what} must be a positive number of images or None, got {value!r}")


def _first(array: np.ndarray, limit: int | None) -> Tensor:
    if limit is not None and limit < len(array):
        array = array[:limit].copy()  # a copy, so the rest can be freed
    return torch.from_numpy(np.ascontiguousarray(array))


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False,
                 limit_train: int | None = None, limit_test: int | None = None,
                 include_extra: bool = True, verify: bool = True) -> ImageData:
    """Read dataset ``name`` (see :data:`DATASETS`) into CPU uint8 tensors.

    ``limit_train`` / ``limit_test`` keep the first N images of a split. ``include_extra``
    (SVHN) adds the 531k ``extra`` images to the training set, as in the paper. ``download``
    fetches missing files into ``data_dir`` (or the cache folder) when none is found;
    ``verify=False`` skips the md5 check of local files.
    """
    info = _info(name)
    _check_limit("limit_train", limit_train)
    _check_limit("limit_test", limit_test)
    dirs = candidate_dirs(name, data_dir)
    found = _locate(name, dirs, include_extra)
    if found is None:
        if not download:
            raise _not_found(name, dirs, include_extra)
        target = Path(data_dir).expanduser() if data_dir is not None else cache_root() / name
        download_dataset(name, target, include_extra=include_extra)
        found, missing = _scan(name, target, include_extra)
        if missing:  # pragma: no cover - download_dataset raises first
            raise _not_found(name, [target], include_extra)
    train_x, train_y, test_x, test_y = _LOADERS[name](
        name, found, verify, include_extra=include_extra, limit_train=limit_train)
    return ImageData(_first(train_x, limit_train), _first(train_y, limit_train),
                     _first(test_x, limit_test), _first(test_y, limit_test), info)


# ----------------------------------------------------------------------------- batching


def _crop_flip(images: Tensor, offset_y: Tensor, offset_x: Tensor, flip: Tensor,
               pad: int = PAD) -> Tensor:
    """Zero-pad by ``pad``, crop back to the input size at per-image offsets, mirror if ``flip``.

    ``out[b, :, i, j] = padded[b, :, offset_y[b] + i, offset_x[b] + (W-1-j if flip[b] else j)]``,
    computed as one gather for the whole batch.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    width = w + 2 * pad
    dev = images.device
    rows = offset_y.view(b, 1) + torch.arange(h, device=dev)
    j = torch.arange(w, device=dev)
    cols = offset_x.view(b, 1) + torch.where(flip.view(b, 1), w - 1 - j, j)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, index).view(b, c, h, w)


def _epoch_plan(n: int, device: torch.device, generator: torch.Generator | None,
                augment: bool) -> tuple[Tensor, ...]:
    """One epoch's permutation (and crop offsets, flips), drawn at once, moved to ``device``.

    Drawn on the generator's device (a CPU generator cannot drive CUDA sampling), then moved:
    one small transfer per epoch, none per batch.
    """
    gdev = generator.device if generator is not None else device
    plan = [torch.randperm(n, generator=generator, device=gdev)]
    if augment:
        plan += [torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=gdev),
                 torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=gdev),
                 torch.randint(0, 2, (n,), generator=generator, device=gdev).bool()]
    # non_blocking only towards an accelerator: a non-blocking copy to the CPU may be read early
    return tuple(t.to(device, non_blocking=device.type != "cpu") for t in plan)


def _check_batch_args(images: Tensor, labels: Tensor, batch_size: int,
                      info: DatasetInfo) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                         f"{list(images.shape)}")
    if images.shape[1] != info.in_channels:
        raise ValueError(f"{info.name} images have {info.in_channels} channels, got "
                         f"{images.shape[1]}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be [N] with N = {len(images)}, got {list(labels.shape)}")
    if labels.device != images.device:
        raise ValueError(f"images on {images.device} but labels on {labels.device}")


def batches(images: Tensor, labels: Tensor, batch_size: int, *, info: DatasetInfo,
            train: bool, generator: torch.Generator | None = None, drop_last: bool = False,
            channels_last: bool = False,
            part: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised float32 batches ``(x [B, C, H, W], y [B])`` on the images' device.

    ``train=True``: a fresh permutation per call (from ``generator``: same seed, same batches)
    and, if ``info.augment``, zero-pad 4 + random crop + random horizontal flip per image.
    ``train=False``: every image in order, no augmentation. ``drop_last`` drops a final partial
    batch. ``part=(i, n)`` yields only the i-th of n equal slices of each batch (``batch_size``
    must divide by n): the images and augmentation that process i of n trains on, the same as
    in the whole batch. Arguments are checked here, at the call, not at the first ``next``.
    """
    _check_batch_args(images, labels, batch_size, info)
    index, count = part
    if not 0 <= index < count or batch_size % count:
        raise ValueError(f"batch_size {batch_size} cannot be split into {count} equal parts "
                         f"(part {index}); use a multiple of {count}")
    return _iterate(images, labels, batch_size, info, train, generator, drop_last, channels_last,
                    part)


def _iterate(images: Tensor, labels: Tensor, batch_size: int, info: DatasetInfo, train: bool,
             generator: torch.Generator | None, drop_last: bool, channels_last: bool,
             part: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
    n, channels = images.shape[:2]
    device = images.device
    std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, channels, 1, 1)
    mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std  # (v/255 - mean)/std = v*scale + shift
    plan = _epoch_plan(n, device, generator, info.augment) if train else None
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    end = n - n % batch_size if drop_last else n
    share = batch_size // part[1]
    for first in range(0, end, batch_size):
        start = first + part[0] * share
        stop = min(start + share, first + batch_size, n)
        if stop <= start:  # this part of a final partial batch is empty
            continue
        if plan is None:
            x, y = images[start:stop], labels[start:stop]
        else:
            order = plan[0][start:stop]
            x, y = images[order], labels[order]
            if len(plan) > 1:
                x = _crop_flip(x, *(t[start:stop] for t in plan[1:]))
        x = x.to(dtype=torch.float32, memory_format=memory_format)
        yield x.mul_(scale).add_(shift), y
