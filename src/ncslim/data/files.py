"""Finding a dataset's files on disk, checking their md5, reading streams in bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..util.regular import open_regular
from .catalog import _CIFAR, _FIX, DEBIAN_PACKAGES, MD5, DataError, _one_line


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
    fixes = ["pass the --data-dir DIR that holds them (a DIR given is the only place searched)",
             f"or, without --data-dir, set NCSLIM_DATA=ROOT (files in ROOT/{name}/)"]
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
    with open_regular(path) as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5(name: str, path: Path, actual: str, expected: str, what: str = "") -> None:
    if actual != expected:
        raise DataError(f"{name}: {path} checksum mismatch ({what}md5 {actual}, expected "
                        f"{expected}): the file is corrupt or incomplete; {_FIX}")


def _md5_gunzip(name: str, path: Path, limit: int) -> str:
    """The md5 of ``path``'s decompressed content, streamed; past ``limit`` bytes, a note saying so.

    A gzip bomb costs ``limit`` bytes of decompression and no memory.
    """
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open_regular(path) as f, gzip.open(f) as gz:
            stream = _Counted(gz, limit, digest)
            while stream.read(1 << 20):
                pass
    except _TooMuch:
        return f"of over {limit:,} decompressed bytes"
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{name}: {path} is not a valid gzip file ({_one_line(err)}): it is "
                        f"truncated or corrupt; {_FIX}") from None
    return digest.hexdigest()


# ----------------------------------------------------------------------------- bounded reading


class _TooMuch(Exception):
    """A :class:`_Counted` stream delivered more than its limit."""


class _Counted:
    """Reads of a file object, counted and (with ``digest``) hashed as they pass.

    With a ``limit``, no read asks for more than one byte past it, and the read that goes past
    it raises :class:`_TooMuch`: a stream that would decompress to gigabytes stops there.
    """

    def __init__(self, fileobj: IO[bytes], limit: int | None = None, digest: Any = None) -> None:
        self.fileobj, self.limit, self.digest, self.count = fileobj, limit, digest, 0

    def read(self, size: int | None = -1) -> bytes:
        if self.limit is not None:
            room = self.limit + 1 - self.count
            size = room if size is None or size < 0 else min(size, room)
        data = self.fileobj.read(size)
        self.count += len(data)
        if self.digest is not None:
            self.digest.update(data)
        if self.limit is not None and self.count > self.limit:
            raise _TooMuch(f"over {self.limit:,} bytes")
        return data


def _read_upto(stream: _Counted, size: int) -> bytes:
    """``size`` bytes of ``stream``, fewer only where it ends."""
    parts, got = [], 0
    while got < size and (chunk := stream.read(size - got)):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_into(stream: _Counted, out: np.ndarray) -> int:
    """Fill the uint8 vector ``out`` from ``stream`` (1 MiB at a time); the bytes it got."""
    view = memoryview(out)
    got = 0
    while got < len(view) and (chunk := stream.read(min(1 << 20, len(view) - got))):
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    return got


def _read_on(stream: _Counted, limit: int) -> bool:
    """Read (and hash) what is left of ``stream``, to ``limit`` bytes in all: whether it ended."""
    while stream.count <= limit:
        if not stream.read(1 << 20):
            return True
    return False
