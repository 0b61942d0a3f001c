"""Image folders as a dataset: ``load_dataset("folder", D, input_size=S)``, ``--dataset folder``.

    ncslim run --dataset folder --data-dir D --input-size 32 --out runs/mine

Layout (the class names are the folder names, sorted; label i is the i-th name):

- ``D/train/<class>/...`` and ``D/val/<class>/...`` (or ``D/test/<class>/...``; with both, val/
  is the test set and test/ is left alone). Every class of val/ must be a class of train/; val/
  may lack some.
- ``D/train/<class>/...`` alone, or ``D/<class>/...`` (no train/, val/ or test/ in D): 10 % of
  each class (:data:`HOLDOUT`; at least one image of a class with two or more) is held out as the
  test set. The rule is fixed, without a seed: the held-out files of a class are those whose
  SHA-256 of their relative path is smallest, so the split is the same on every machine and run,
  and adding a file moves no other. The split is logged and recorded in the model file.

Images are found at any depth below a class folder; hidden files and folders (``.name``) and
files whose suffix no Pillow format claims (``.txt``, ``.csv``, ...) are skipped. JPEG, PNG and
every format Pillow opens are read; every image becomes RGB (3 channels, also when all are
grayscale) and S x S (default 32; :mod:`ncslim.data.decode` states the rule). An unreadable
image is a one-line :class:`DataError` naming the file.

Both splits are stored in a fixed pseudo-random order (by SHA-256 of the path), so
``limit_train``/``limit_test`` take a sample of every class, not the first classes. The mean and
std are those of the training images (per channel, /255); training augments as CIFAR does (zero
padding in proportion to S, random crop, horizontal flip). Decoding runs once, in parallel; the
result is cached (:mod:`ncslim.data.foldercache`) so the next run starts in seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..util.regular import kind_problem
from .catalog import FOLDER, DataError, DatasetInfo, _one_line
from .decode import (
    CONVERSION,
    POOL,
    decode_images,
    default_workers,
    image_suffixes,
    pillow,
    pool_text,
)
from .foldercache import cache_dir, cache_key, read_cache, write_cache
from .layoutcheck import check_one_place

log = logging.getLogger("ncslim")

DEFAULT_SIZE = 32  # S when no input_size is given: the built-in architectures' 32x32
MIN_SIZE, MAX_SIZE = 8, 1024
HOLDOUT = 0.10  # share of each class held out as the test set when D has no val/ or test/
MAX_CLASSES = 10_000  # more class folders than this is refused (a model file records them all)
MAX_CLASS_NAME = 255  # characters: the longest file name of common file systems
HELD_OUT = ("val", "test")  # the test set's folder, in order of preference


@dataclass(frozen=True)
class ImageFile:
    """One image: its path relative to D (``/``-separated), label, size and mtime."""

    path: str
    label: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FolderLayout:
    """What :func:`scan_folder` found: the classes and both splits, in their stored order."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[ImageFile, ...]
    test: tuple[ImageFile, ...]
    test_split: str  # where the test images come from, in words
    skipped: int  # files below the class folders that are not images (by their suffix)


def _hash(salt: str, path: str) -> bytes:
    return hashlib.sha256(f"{salt}:{path}".encode()).digest()


def _classes(folder: Path) -> list[str]:
    """The class folders in ``folder``, sorted; a name that cannot be a class is refused."""
    entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    for e in entries:
        if e.is_symlink() and not os.path.exists(e.path):  # a loop, or its target is gone
            raise DataError(f"{e.path}: a link that leads nowhere (a loop or a missing "
                            f"target); remove it or link it to a class folder")
    names = sorted(e.name for e in entries if e.is_dir())
    for name in names:
        if len(name) > MAX_CLASS_NAME or not name.isprintable():
            raise DataError(f"{str(folder / name)!r}: a class folder name must be printable "
                            f"and at most {MAX_CLASS_NAME} characters; rename it")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{folder}: {len(names):,} class folders, more than {MAX_CLASSES:,}; "
                        f"is --data-dir the folder that holds the class folders?")
    return names


def _images(folder: Path, root: Path, label: int, suffixes: frozenset[str]
            ) -> tuple[list[ImageFile], int]:
    """The image files at any depth below ``folder`` (hidden ones skipped), sorted by path, and
    the number of other files skipped. (Plain strings, not pathlib: 50k files in a second.)"""
    found, skipped = [], 0
    top, base = str(folder), folder.relative_to(root).as_posix()
    for where, subfolders, files in os.walk(top):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        sub = where[len(top):].strip(os.sep).replace(os.sep, "/")
        prefix = f"{base}/{sub}/" if sub else f"{base}/"
        for name in files:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() not in suffixes:
                skipped += 1
                continue
            try:
                st = os.stat(os.path.join(where, name))
            except OSError as err:
                raise DataError(f"{os.path.join(where, name)}: cannot be read "
                                f"({_one_line(err)}); remove or replace the file") from None
            problem = kind_problem(st.st_mode)  # a FIFO would block its decoding forever
            if problem:
                raise DataError(f"{os.path.join(where, name)}: {problem}; remove it or put "
                                f"the image file there")
            found.append(ImageFile(prefix + name, label, st.st_size, st.st_mtime_ns))
    return sorted(found, key=lambda f: f.path), skipped


def _hold_out(files: list[ImageFile]) -> tuple[list[ImageFile], list[ImageFile]]:
    """(kept, held out) of one class: :data:`HOLDOUT` of it, by the smallest path hashes."""
    held = max(1, round(HOLDOUT * len(files))) if len(files) >= 2 else 0
    ranked = sorted(files, key=lambda f: _hash("holdout", f.path))
    return ranked[held:], ranked[:held]


def _split_dirs(root: Path) -> tuple[Path, Path | None]:
    """The training folder and the test set's folder (None: hold images out of training)."""
    if not root.is_dir():
        raise DataError(f"--data-dir {root}: no such folder; give the folder that holds train/ "
                        f"(and val/), or the class folders themselves")
    train = root / "train"
    if not train.is_dir():
        held = [name for name in HELD_OUT if (root / name).is_dir()]
        if held:
            raise DataError(f"{root} has {held[0]}/ but no train/; put the training images in "
                            f"{root / 'train'}/<class>/")
        return root, None
    test = next((root / name for name in HELD_OUT if (root / name).is_dir()), None)
    return train, test


def scan_folder(data_dir: str | Path) -> FolderLayout:
    """The classes and files of an image folder (see the module docstring); nothing is decoded.

    Every problem (no class folders, an empty class, a val/ class that train/ lacks) raises a
    one-line :class:`DataError`.
    """
    root = Path(data_dir).expanduser()
    train_dir, test_dir = _split_dirs(root)
    classes = _classes(train_dir)
    if not classes:
        raise DataError(f"{train_dir}: no class folders; put the images in "
                        f"{train_dir}/<class>/ (one folder per class)")
    if len(classes) == 1:
        raise DataError(f"{train_dir}: one class folder ({classes[0]}/), and a classifier needs "
                        f"two or more; give the folder that holds the class folders, one per "
                        f"class")
    folders = [train_dir / name for name in classes]
    if test_dir is not None:
        folders += [test_dir / name for name in _classes(test_dir)]
    check_one_place(root, [train_dir] if test_dir is None else [train_dir, test_dir], folders)
    suffixes = image_suffixes()
    train, test, skipped = [], [], 0
    for label, name in enumerate(classes):
        files, skips = _images(train_dir / name, root, label, suffixes)
        skipped += skips
        if not files:
            raise DataError(f"{train_dir / name}: the class folder holds no images (JPEG, PNG "
                            f"or another format Pillow reads); add images or remove the folder")
        if test_dir is None:
            files, held = _hold_out(files)
            test += held
        train += files
    if test_dir is None:
        where = "" if train_dir == root else f"{train_dir.name}/"
        split = f"{HOLDOUT:.0%} of each class of {where or 'the folder'} held out (by path hash)"
    else:
        test, skips = _test_images(test_dir, root, classes, suffixes)
        skipped += skips
        split = f"{test_dir.name}/"
    if not test:
        raise DataError(f"{root}: no test images ({split}); add images to {test_dir or root}, or "
                        f"at least two per class to hold one out")
    return FolderLayout(root, tuple(classes), _ordered(train), _ordered(test), split, skipped)


def _test_images(test_dir: Path, root: Path, classes: list[str], suffixes: frozenset[str]
                 ) -> tuple[list[ImageFile], int]:
    labels = {name: i for i, name in enumerate(classes)}
    found, skipped = [], 0
    for name in _classes(test_dir):
        if name not in labels:
            raise DataError(f"{test_dir / name}: class {name!r} is not a class of the training "
                            f"set ({len(classes)} folders in {root / 'train'}); add it there "
                            f"or remove it here")
        files, skips = _images(test_dir / name, root, labels[name], suffixes)
        found += files
        skipped += skips
    return found, skipped


def _ordered(files: list[ImageFile]) -> tuple[ImageFile, ...]:
    """The stored order: by path hash, a fixed shuffle (a limit takes a sample of each class)."""
    return tuple(sorted(files, key=lambda f: _hash("order", f.path)))


def check_input_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(f"--input-size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got "
                        f"{size!r}")


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images, /255 (std at least 1/255, so
    that a constant channel still normalises), summed in float64 in chunks of ~4M values."""
    n, channels, height, width = images.shape
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(max(1, (1 << 22) // max(1, channels * height * width))):
        x = chunk.to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = n * height * width
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt()
    return (mean / 255).tolist(), (std / 255).clamp(min=1 / 255).tolist()


def _decode(layout: FolderLayout, size: int, workers: int | None, pool: str
            ) -> tuple[Tensor, Tensor]:
    files = layout.train + layout.test
    by_path = sorted(range(len(files)), key=lambda i: files[i].path)  # disk order
    workers = default_workers() if workers is None else workers
    log.info("folder: decoding %d images to %dx%d %s; later runs read them from the cache",
             len(files), size, size, pool_text(len(files), workers, pool))
    started, step, progress = time.perf_counter(), max(1, len(files) // 10), [0]

    def done(k: int) -> None:
        before, progress[0] = progress[0], progress[0] + k
        if progress[0] // step > before // step and progress[0] < len(files):
            log.info("folder: %d of %d images decoded", progress[0], len(files))

    images = decode_images([str(layout.root / files[i].path) for i in by_path], size,
                           np.asarray(by_path), workers=workers, pool=pool, done=done)
    log.info("folder: %d images decoded in %.1f s", len(files), time.perf_counter() - started)
    n = len(layout.train)
    return torch.from_numpy(images[:n]), torch.from_numpy(images[n:].copy())


def read_folder(data_dir: str | Path, input_size: int | None = None, *,
                workers: int | None = None, pool: str = POOL
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, DatasetInfo]:
    """(train images, train labels, test images, test labels, info) of an image folder: uint8
    ``[N, 3, S, S]`` and int64 ``[N]``, from the cache when it holds them, else decoded (with
    ``workers`` processes or threads, ``pool``) and cached."""
    size = DEFAULT_SIZE if input_size is None else input_size
    check_input_size(size)
    layout = scan_folder(data_dir)
    names = ", ".join(layout.classes[:10]) + (", ..." if len(layout.classes) > 10 else "")
    log.info("folder %s: %d classes (%s); %d training images, %d test images (%s)%s",
             layout.root, len(layout.classes), names, len(layout.train), len(layout.test),
             layout.test_split,
             f"; skipped {layout.skipped} file(s) that are not images" if layout.skipped else "")
    files = {"classes": list(layout.classes),
             "train": [[f.path, f.label, f.size, f.mtime_ns] for f in layout.train],
             "test": [[f.path, f.label, f.size, f.mtime_ns] for f in layout.test]}
    key = cache_key({**files, "size": size, "conversion": CONVERSION,
                     "pillow": _pillow_version()})
    path = cache_dir() / f"{key}.pt"
    cached = read_cache(path, key, (len(layout.train), len(layout.test)), size)
    if cached is not None:
        (train, test), stats = cached
        log.info("folder: images read from the cache %s", path)
    else:
        train, test = _decode(layout, size, workers, pool)
        stats = channel_stats(train)
        write_cache(path, key, (train, test), stats)
    info = DatasetInfo(FOLDER, len(layout.classes), 3, tuple(stats[0]), tuple(stats[1]),
                       augment=True, image_size=size, classes=layout.classes,
                       test_split=layout.test_split, fingerprint=cache_key(files))
    labels = [torch.tensor([f.label for f in split], dtype=torch.int64)
              for split in (layout.train, layout.test)]
    return train, labels[0], test, labels[1], info


def _pillow_version() -> str:
    pillow()  # the one-line error if it is missing
    import PIL

    return PIL.__version__
