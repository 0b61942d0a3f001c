"""CIFAR-10 and CIFAR-100 in their official form: the python tar.gz archive (read in one
sequential pass, nothing extracted) or its extracted folder; each batch pickle unpickled with
numpy arrays and plain containers only, in memory bounded by the pickle's own size."""

from __future__ import annotations

import functools
import gzip
import importlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..util.regular import open_regular, read_bytes
from .catalog import (
    _CIFAR,
    _FIX,
    DATASETS,
    MD5,
    DataError,
    DatasetInfo,
    _one_line,
)
from .files import _check_md5, _Counted, _md5_file, _TooMuch


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
