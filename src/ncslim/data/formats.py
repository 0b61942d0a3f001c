"""Readers of the official file formats: CIFAR pickles (archive or folder), SVHN .mat, IDX."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import io
import math
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..util.regular import NotAFileError, open_regular, read_bytes
from .catalog import (
    _CIFAR,
    _FIX,
    _IDX_MAX_CONTENT,
    DATASETS,
    MD5,
    DataError,
    DatasetInfo,
    _one_line,
)
from .files import _check_md5, _Counted, _md5_file, _read_into, _read_on, _read_upto, _TooMuch
from .matfile import check_svhn_mat

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
    """Builds numpy arrays and plain containers only; any other global is refused.

    The callables that could allocate more than the pickle holds (an array of a named shape,
    ``bytes(n)``) are handed out guarded: nothing may exceed ``budget`` bytes, the size of the
    pickle itself (an official batch's array is rebuilt from its own bytes)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.budget = len(raw)

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise _RefusedGlobal(f"{module}.{name}")
        if name == "_reconstruct":
            return self._reconstruct
        if obj is np.ndarray:
            return _NdarrayGuard(self)
        if obj in (bytes, bytearray, str, list, tuple, set, frozenset, dict):
            return functools.partial(self._sized, obj)
        return obj

    def _check(self, size: float) -> None:
        if size > self.budget:
            raise _Amplified(f"the pickle of {self.budget:,} bytes asks for {size:,.0f}")

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        real = np.ndarray if isinstance(subtype, _NdarrayGuard) else subtype
        self._check(float(np.prod(shape)) * np.dtype(dtype).itemsize)
        return _allowed_globals()[("numpy._core.multiarray", "_reconstruct")](real, shape, dtype)

    def _sized(self, kind: type, *args: Any) -> Any:
        if args and isinstance(args[0], int) and not isinstance(args[0], bool):
            self._check(args[0])  # bytes(n), bytearray(n): n zero bytes
        return kind(*args)


class _NdarrayGuard:
    """``numpy.ndarray`` as a pickle may use it: an argument of ``_reconstruct``, or called with
    a shape that must fit the pickle's budget."""

    def __init__(self, unpickler: _BatchUnpickler) -> None:
        self.unpickler = unpickler

    def __call__(self, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.unpickler._check(float(np.prod(shape)) * np.dtype(dtype).itemsize)
        return np.ndarray(shape, dtype, *args, **kwargs)


class _Amplified(pickle.UnpicklingError):
    pass


def _unpickle_batch(info: DatasetInfo, where: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    name = info.name
    try:
        obj = _BatchUnpickler(raw).load()
    except _RefusedGlobal as err:
        raise DataError(f"{name}: {where}: refused to unpickle {err} (a CIFAR batch holds only "
                        f"numpy arrays and lists): not an official CIFAR file; {_FIX}") from None
    except _Amplified as err:
        raise DataError(f"{name}: {where}: refused: {err} (a CIFAR batch holds its own data): "
                        f"not an official CIFAR file; {_FIX}") from None
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


# Sane limits for an untrusted archive: far above the official files (an official archive
# holds under 10 members and decompresses to about 180 MB; its largest member, cifar-100's
# train, is about 156 MB), far below what a crafted header or a compression bomb could claim.
_CIFAR_MAX_MEMBER = 256 << 20
_CIFAR_MAX_MEMBERS = 1000
_CIFAR_MAX_TOTAL = 1 << 30


class _BigMember(Exception):
    pass


def _claims(info: tarfile.TarInfo) -> str:
    return (f"member {info.name!r} claims {info.size:,} bytes, more than any CIFAR archive "
            f"member (at most {_CIFAR_MAX_MEMBER:,})")


class _SizedTarInfo(tarfile.TarInfo):
    """A tar header refused as soon as it is parsed when it claims over ``_CIFAR_MAX_MEMBER``
    bytes: before tarfile reads a GNU long name or a pax header whole, or skips a member."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.size > _CIFAR_MAX_MEMBER:
            raise _BigMember(_claims(info))
        return info


def _read_cifar_archive(name: str, path: Path, members: list[str]) -> dict[str, bytes]:
    """The named members of a tar.gz, read in one sequential pass; nothing is extracted.

    The gzip stream is read to its end, so that its CRC and length are checked even when
    ``verify=False`` (tarfile's own ``r|gz`` never checks them). Memory and time are bounded:
    a member over ``_CIFAR_MAX_MEMBER`` bytes is refused from its header, before it is read,
    and so is a member past the ``_CIFAR_MAX_MEMBERS``-th; reading stops past
    ``_CIFAR_MAX_TOTAL`` decompressed bytes.
    """
    wanted = set(members)
    out: dict[str, bytes] = {}
    try:
        with open_regular(path) as f, gzip.open(f) as gz:
            stream = _Counted(gz, _CIFAR_MAX_TOTAL)
            with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20,
                              tarinfo=_SizedTarInfo) as tar:
                for count, member in enumerate(tar, 1):
                    if count > _CIFAR_MAX_MEMBERS:
                        raise _BigMember(f"over {_CIFAR_MAX_MEMBERS:,} members, more than any "
                                         f"CIFAR archive")
                    if member.size > _CIFAR_MAX_MEMBER:  # a size set by a pax header
                        raise _BigMember(_claims(member))
                    key = member.name.removeprefix("./")
                    if key in wanted and member.isfile():
                        out[key] = tar.extractfile(member).read()  # type: ignore[union-attr]
            while stream.read(1 << 20):
                pass
    except _BigMember as err:
        raise DataError(f"{name}: {path}: {err}: not the official archive; {_FIX}") from None
    except _TooMuch:
        raise DataError(f"{name}: {path} decompresses to over {_CIFAR_MAX_TOTAL:,} bytes, more "
                        f"than any CIFAR archive holds: not the official archive; {_FIX}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{name}: {path} is not a readable tar.gz archive ({_one_line(err)}): "
                        f"it is truncated or corrupt; {_FIX}") from None
    missing = [m for m in members if m not in out]
    if missing:
        raise DataError(f"{name}: {path} lacks {', '.join(missing)}: not the official "
                        f"archive; {_FIX}")
    return out


def _read_cifar_folder(name: str, members: list[str]) -> dict[str, bytes]:
    """The batch files of an extracted folder, each refused unread when over the member limit."""
    for m in members:
        size = Path(m).stat().st_size
        if size > _CIFAR_MAX_MEMBER:
            raise DataError(f"{name}: {m}: {size:,} bytes, more than a CIFAR batch holds (at "
                            f"most {_CIFAR_MAX_MEMBER:,}): not an official CIFAR file; {_FIX}")
    return {m: read_bytes(m, limit=_CIFAR_MAX_MEMBER) for m in members}


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
        raw = _read_cifar_folder(name, members)
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
    check_svhn_mat(name, path)  # headers first: what loadmat would allocate is bounded
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{name}: reading {path} needs scipy: pip install scipy") from None
    try:
        with open_regular(path) as f:  # the file checked above, never a FIFO swapped in
            mat = loadmat(f, variable_names=["X", "y"])
    except (FileNotFoundError, NotAFileError):
        raise
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


# What an IDX file of Fashion-MNIST may hold, per item (28x28 images, or one label), and how
# many items: far above the official files (60,000 and 10,000), far below what a header could
# claim (2**32 - 1 per dimension).
_IDX_ITEM = {3: (28, 28), 1: ()}
_IDX_MAX_ITEMS = 2_000_000


def _read_idx(name: str, path: Path, official: str, ndim: int, verify: bool) -> np.ndarray:
    """The array in an IDX file (gzipped or raw), read against its header in bounded memory.

    The md5 (``verify``) is of the decompressed content, computed as it streams. A damaged file
    is read on to its end, up to ``_IDX_MAX_CONTENT`` bytes, so that its first fault is named as
    a whole reading would: a broken gzip stream, then a checksum mismatch, then the header or
    the size; past that limit (a bomb) it is refused for its size alone.
    """
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open_regular(path) as f, gzip.open(f) if path.suffix == ".gz" else f as raw:
            array, fault, whole = _idx_content(_Counted(raw, digest=digest), ndim)
    except (OSError, EOFError, zlib.error) as err:
        if path.suffix != ".gz":
            raise
        raise DataError(f"{name}: {path} is not a valid gzip file ({_one_line(err)}): it is "
                        f"truncated or corrupt; {_FIX}") from None
    if verify and whole:
        _check_md5(name, path, digest.hexdigest(), MD5[name][official], "decompressed ")
    if array is None:
        raise DataError(f"{name}: {path}: {fault}; {_FIX}")
    return array


def _idx_content(stream: _Counted, ndim: int) -> tuple[np.ndarray | None, str, bool]:
    """``(array, "", True)``, or ``(None, what is wrong, whether the stream was read to its end)``.

    The header comes first, and its dimensions are checked against ``_IDX_ITEM`` and
    ``_IDX_MAX_ITEMS``; then exactly the bytes it promises are read, and one more to find data
    beyond them: decompression stops there.
    """
    head, magic = 4 + 4 * ndim, bytes([0, 0, 0x08, ndim])
    header = _read_upto(stream, head)
    dims = struct.unpack(f">{ndim}I", header[4:]) if len(header) == head else ()
    shape, item = "x".join(map(str, dims)), "".join(f"x{d}" for d in _IDX_ITEM[ndim])
    size = math.prod(dims)
    if len(header) < head and magic.startswith(header[:4]):
        fault = (f"{len(header)} bytes, shorter than the {head}-byte IDX header: the file is "
                 f"truncated")
    elif header[:4] != magic:
        fault = (f"wrong IDX magic {header[:4].hex() or 'none'} (expected 000008{ndim:02x}): not "
                 f"an IDX ubyte file")
    elif dims[1:] != _IDX_ITEM[ndim] or dims[0] > _IDX_MAX_ITEMS:
        fault = (f"IDX dimensions {shape}, not N{item} with N at most {_IDX_MAX_ITEMS:,}: not a "
                 f"Fashion-MNIST file")
    else:
        data = np.empty(size, dtype=np.uint8)
        if _read_into(stream, data) == size and not stream.read(1):
            return data.reshape(dims), "", True
        fault = ""
    whole = _read_on(stream, _IDX_MAX_CONTENT)
    if not fault:  # the data is shorter or longer than the header promises
        got = stream.count - head
        what = "truncated" if got < size else "corrupt: it holds more than its header promises"
        fault = (f"{'' if whole else 'over '}{got} data bytes for IDX dimensions {shape} "
                 f"(which promise {size}): the file is {what}")
    return None, fault, whole


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
