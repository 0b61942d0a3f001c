"""A dataset's two splits read into CPU uint8 tensors: :class:`ImageData`, :func:`load_dataset`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .catalog import FOLDER, DataError, DatasetInfo, _info, cache_root, candidate_dirs
from .download import download_dataset
from .files import _locate, _not_found, _scan
from .folder import read_folder
from .formats import _LOADERS


@dataclass(eq=False, repr=False)
class ImageData:
    """Both splits of a dataset: uint8 ``[N, C, S, S]`` images (S = ``info.image_size``) and
    int64 ``[N]`` labels."""

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
                 include_extra: bool = True, verify: bool = True,
                 input_size: int | None = None) -> ImageData:
    """Read dataset ``name`` (see :func:`dataset_names`) into CPU uint8 tensors.

    ``limit_train`` / ``limit_test`` keep the first N images of a split. ``include_extra``
    (SVHN) adds the 531k ``extra`` images to the training set, as in the paper. ``download``
    fetches missing files into ``data_dir`` (or the cache folder) when none is found;
    ``verify=False`` skips the md5 check of local files. ``name="folder"`` reads the image
    folder ``data_dir`` (:mod:`ncslim.data.folder`), resized to ``input_size`` squared (default
    32); the built-in datasets take no other size than their own.
    """
    _check_limit("limit_train", limit_train)
    _check_limit("limit_test", limit_test)
    if name == FOLDER:
        return _load_folder(data_dir, input_size, download, limit_train, limit_test)
    info = _info(name)
    if input_size is not None and input_size != info.image_size:
        raise DataError(f"{name} images are {info.image_size}x{info.image_size}; --input-size "
                        f"resizes image folders (--dataset {FOLDER}) only; leave it out")
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


def _load_folder(data_dir: str | Path | None, input_size: int | None, download: bool,
                 limit_train: int | None, limit_test: int | None) -> ImageData:
    if data_dir is None:
        raise DataError(f"--dataset {FOLDER} reads the images in --data-dir D (D/train/<class>/"
                        f"..., D/val/<class>/...); give --data-dir")
    if download:
        raise DataError(f"--download fetches the built-in datasets; --dataset {FOLDER} reads "
                        f"--data-dir only; leave --download out")
    train_x, train_y, test_x, test_y, info = read_folder(data_dir, input_size)
    return ImageData(*(_first(t.numpy(), limit) for t, limit in (
        (train_x, limit_train), (train_y, limit_train), (test_x, limit_test),
        (test_y, limit_test))), info)
