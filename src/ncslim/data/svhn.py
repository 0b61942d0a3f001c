"""SVHN in its official form: the cropped-digits MATLAB files (train, test, and the 1.3 GB
extra), their headers checked before scipy reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..util.regular import NotAFileError, open_regular
from .catalog import (
    _FIX,
    MD5,
    DataError,
    _one_line,
)
from .files import _check_md5, _md5_file
from .matfile import check_svhn_mat


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
