"""A MATLAB v5 ``.mat`` file's variables checked from their headers before scipy reads it whole.

scipy's ``loadmat`` allocates what a file's headers claim and inflates compressed variables to
their end, so a crafted SVHN file could cost any amount of memory or time. Here every top-level
variable's header is read first: its name, its class and its dimensions must be what SVHN holds
(``X``: 32 x 32 x 3 x N uint8, ``y``: N x 1 or 1 x N numbers, N at most :data:`MAX_IMAGES`), and a
compressed variable is inflated (and thrown away) only up to the size its header promises;
more is refused. Memory stays at a few MiB; time at one pass over at most the promised bytes.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from ..util.regular import open_regular
from .catalog import _FIX, DataError

MAX_IMAGES = 2_000_000  # SVHN's largest file (extra) holds 531,131
MI_MATRIX, MI_COMPRESSED, MI_INT32, MI_INT8 = 14, 15, 5, 1
HEADER = 128
CHUNK = 1 << 20
HEAD_BYTES = 4096  # enough for a variable's flags, dimensions and name


def check_svhn_mat(name: str, path: Path) -> None:
    """Raise :class:`DataError` unless every variable of ``path`` fits SVHN's layout and size."""
    size = path.stat().st_size
    with open_regular(path) as f:
        head = f.read(HEADER)
        if len(head) < HEADER or head[126:128] not in (b"IM", b"MI"):
            raise _bad(name, path, "not a MATLAB 5 .mat file (no header)")
        order = "<" if head[126:128] == b"IM" else ">"
        seen = set()
        while True:
            tag = f.read(8)
            if not tag:
                break
            if len(tag) < 8:
                raise _bad(name, path, "cut short inside a variable's tag")
            kind, nbytes = struct.unpack(order + "II", tag)
            if nbytes > size - f.tell():
                raise _bad(name, path, f"a variable claims {nbytes:,} bytes, more than "
                                f"the file holds: it is truncated")
            if kind == MI_COMPRESSED:
                seen.add(_check_compressed(name, path, f, nbytes, order))
            elif kind == MI_MATRIX:
                start = f.tell()
                seen.add(_check_matrix(name, path, f.read(min(nbytes, HEAD_BYTES)), nbytes,
                                       order))
                f.seek(start + nbytes + (-nbytes % 8))
            else:
                raise _bad(name, path, f"a top-level element of type {kind}, not a "
                                f"variable")
    if not {"X", "y"} <= seen:
        raise _bad(name, path, f"lacks {', '.join(sorted({'X', 'y'} - seen))}")


def _bad(name: str, path: Path, detail: str) -> DataError:
    return DataError(f"{name}: {path} is not a readable MATLAB .mat file ({detail}): it is "
                     f"truncated, corrupt or not SVHN's; {_FIX}")


def _check_compressed(name: str, path: Path, f: BinaryIO, nbytes: int, order: str) -> str:
    """Inflate one compressed variable in chunks, thrown away, no further than its header
    promises; a variable other than X and y is skipped once its header is read."""
    inflate = zlib.decompressobj()
    left, out, head, promised, variable = nbytes, 0, b"", None, ""
    try:
        while left or inflate.unconsumed_tail:
            if inflate.unconsumed_tail:
                data = inflate.decompress(inflate.unconsumed_tail, CHUNK)
            else:
                piece = f.read(min(CHUNK, left))
                left -= len(piece)
                data = inflate.decompress(piece, CHUNK)
            out += len(data)
            if promised is None:
                head += data
                if len(head) < HEAD_BYTES and (left or inflate.unconsumed_tail):
                    continue
                kind, promised = struct.unpack(order + "II", head[:8])
                if kind != MI_MATRIX:
                    raise _bad(name, path, "a compressed element that is not a "
                                    "variable")
                variable = _check_matrix(name, path, head[8:HEAD_BYTES], promised, order)
                if variable not in ("X", "y"):
                    f.seek(left, 1)  # loadmat is told to skip it
                    return variable
            if out > promised + 8:
                raise _bad(name, path, f"variable {variable} inflates past the "
                                f"{promised:,} bytes its header promises (a compression bomb or "
                                f"a damaged file)")
    except zlib.error as err:
        raise _bad(name, path, f"a compressed variable is damaged ({err})") from None
    if promised is None:
        raise _bad(name, path, "a compressed variable too short for its header")
    return variable


def _check_matrix(name: str, path: Path, body: bytes, nbytes: int, order: str) -> str:
    """A variable's flags, dimensions and name (from the first bytes of its body)."""
    try:
        flag_tag = struct.unpack(order + "II", body[:8])
        dims_type, dims_bytes = struct.unpack(order + "II", body[16:24])
        if flag_tag[0] != 6 or dims_type != MI_INT32 or not 8 <= dims_bytes <= 64:
            raise ValueError
        dims = struct.unpack(order + f"{dims_bytes // 4}i", body[24:24 + dims_bytes])
        at = 24 + dims_bytes + (-dims_bytes % 8)
        name_type, name_bytes = struct.unpack(order + "II", body[at:at + 8])
        if name_type >> 16:  # small data element: the name inside the tag
            variable = body[at + 4:at + 4 + (name_type >> 16)].decode("ascii")
        else:
            variable = body[at + 8:at + 8 + name_bytes].decode("ascii")
    except (struct.error, ValueError, UnicodeDecodeError):
        raise _bad(name, path, "a variable's header is damaged") from None
    count = 1
    for d in dims:
        count *= d
    if variable == "X":
        ok = len(dims) == 4 and dims[:3] == (32, 32, 3) and 0 < dims[3] <= MAX_IMAGES
    elif variable == "y":
        ok = len(dims) == 2 and 1 in dims and 0 < count <= MAX_IMAGES
    else:
        return variable  # another variable: loadmat is told to skip it
    if not ok or min(dims) < 0:
        raise _bad(name, path, f"variable {variable} has dimensions "
                        f"{'x'.join(map(str, dims))}, not SVHN's")
    if nbytes > 8 * count + HEAD_BYTES:  # 8 bytes a value at most (a double)
        raise _bad(name, path, f"variable {variable} claims {nbytes:,} bytes for "
                        f"{count:,} values")
    return variable
