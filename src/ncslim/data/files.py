"""Finding a dataset's files on disk, checking their md5, decompressing gzip."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

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
