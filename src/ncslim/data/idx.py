"""Fashion-MNIST in its official form: gzipped IDX files, read against their headers in
bounded memory, padded to 32x32."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..util.regular import open_regular
from .catalog import (
    _FIX,
    _IDX_MAX_CONTENT,
    MD5,
    DataError,
    _one_line,
)
from .files import _check_md5, _Counted, _read_into, _read_on, _read_upto

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
