"""Image files decoded with Pillow into one uint8 ``[N, 3, S, S]`` array, in parallel.

The conversion rule (:data:`CONVERSION`, part of the folder cache's key):

1. JPEG files are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the shorter side
   at least S (Pillow's ``draft``): a large photo costs a fraction of a full decode;
2. the EXIF orientation is applied (the image as a viewer shows it);
3. 16-bit grayscale is reduced to 8 bits by its top byte (Pillow would clip it to white); every
   mode then becomes RGB as torchvision's loader does (``convert("RGB")``: grayscale is copied
   to the three channels, an alpha channel is dropped, a palette is looked up);
4. the centred square of side ``min(width, height)`` is resized to S x S with Pillow's
   antialiased bilinear filter, in one step: the same as scaling the shorter side to S and
   cropping the centre.

Before any pixel is decoded, the size in the file's header (after the JPEG draft) is checked
against :data:`MAX_PIXELS`: a small file that promises a huge image (a decompression bomb, a
16-bit PNG of 13000 x 13000) is refused in one line naming it, in this process or in a worker.

Files are decoded in chunks by a pool of worker processes (forked: nothing is imported again;
threads where ``fork`` does not exist), or in this process for a few hundred images or
``workers=1``: ``benchmarks/folder_decode.py`` measures threads against processes.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import multiprocessing
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..regular import open_regular
from .catalog import DataError, _one_line
from .orphan import die_with_parent

log = logging.getLogger("ncslim")

CONVERSION = "jpeg-draft/exif/16-bit-top-byte/rgb-drop-alpha/center-square/bilinear-aa"
SERIAL_BELOW = 512  # fewer images than this are decoded in this process: a pool costs more
CHUNK = 256  # images per task: few enough tasks for little overhead, enough to share the work
POOLS = ("processes", "threads")
POOL = "processes"  # the default: see benchmarks/folder_decode.py and docs/performance.md
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# pixels one image may decode to: 2^25 (33.5 megapixels, e.g. 8192 x 4096). Pillow keeps up to
# 4 bytes a pixel and the conversion makes a few copies, so an image costs at most ~0.5 GiB;
# Pillow's own limit (89 megapixels) only warns, and refuses only above 179 megapixels
MAX_PIXELS = 1 << 25


def pillow() -> Any:
    """``PIL.Image``, or a one-line error saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install 'ncslim[folder]'"
                        ) from None
    return Image


_UNDECODABLE = {"MPEG"}  # Pillow identifies these files but cannot decode their pixels


def image_suffixes() -> frozenset[str]:
    """The lower-case file suffixes of every format this Pillow can decode (``.jpg``, ``.png``,
    ``.webp``, ...); other files in a folder are not images. Stub formats (HDF5, GRIB, BUFR,
    WMF: Pillow only recognises them) are not images either: a folder's ``.h5`` is data."""
    image = pillow()
    from PIL import ImageFile

    image.init()
    stub = ImageFile.StubImageFile
    readable = {fmt for fmt, (factory, _) in image.OPEN.items() if fmt not in _UNDECODABLE
                and not (isinstance(factory, type) and issubclass(factory, stub))}
    return frozenset(ext.lower() for ext, fmt in image.registered_extensions().items()
                     if fmt in readable)


def decode_image(path: str, size: int) -> np.ndarray:
    """One file as uint8 ``[3, size, size]`` (the rule in the module docstring); a file Pillow
    cannot read raises :class:`DataError` naming it."""
    image = pillow()
    try:
        with _open(image, path) as img:
            width, height = img.size
            side = min(width, height)
            img.draft(None, (-(-width * size // side), -(-height * size // side)))
            _check_pixels(path, img.size)
            img = _upright(img)
            if img.mode in _SIXTEEN_BIT:  # in the file's own integer type: no int64 copy
                top = np.right_shift(np.asarray(img), 8).clip(0, 255).astype(np.uint8)
                img = image.fromarray(top, "L")
            img = img.convert("RGB")
            width, height = img.size
            side = min(width, height)
            box = ((width - side) / 2, (height - side) / 2, (width + side) / 2,
                   (height + side) / 2)
            out = img.resize((size, size), image.Resampling.BILINEAR, box=box)
            return np.asarray(out).transpose(2, 0, 1)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001  a damaged file makes Pillow raise nearly anything
        raise DataError(f"{path}: cannot be read as an image ({_one_line(err)}); remove or "
                        f"replace the file") from None


@contextmanager
def _open(image: Any, path: str) -> Iterator[Any]:
    """``image.open`` (lazy: the header only) on the file at ``path``, opened as a regular file
    (a FIFO put there since the folder was scanned is refused, never waited on), with Pillow's
    decompression-bomb warning (over 89 megapixels) and error (over 179) turned into the one
    line of :func:`_check_pixels`; the file is closed with the image."""
    with open_regular(path, "rb", what="image", fix="remove or replace the file") as fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", image.DecompressionBombWarning)
                img = image.open(fp)
        except (image.DecompressionBombWarning, image.DecompressionBombError) as err:
            pixels = re.search(r"\((\d+) pixels\)", str(err))
            count = f"{int(pixels[1]):,}" if pixels else "too many"
            raise DataError(f"{path}: {count} pixels, more than the {MAX_PIXELS:,} an image "
                            f"may decode to; downscale it or remove it") from None
        except image.UnidentifiedImageError:  # its message names the descriptor, not the file
            raise DataError(f"{path}: cannot be read as an image (not a format Pillow "
                            f"identifies); remove or replace the file") from None
        with img:
            yield img


def _check_pixels(path: str, size: tuple[int, int]) -> None:
    """Refuse an image whose header promises more than :data:`MAX_PIXELS` (before decoding)."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise DataError(f"{path}: {width} x {height} = {width * height:,} pixels, more than "
                        f"the {MAX_PIXELS:,} an image may decode to; downscale it or remove it")


def _upright(img: Any) -> Any:
    """``img`` turned as its EXIF orientation says (most files have none: returned as is)."""
    if img.getexif().get(0x0112, 1) in (None, 1):
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def _decode_chunk(paths: Sequence[str], size: int) -> np.ndarray:
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, size)
    return out


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _serial(n: int, workers: int) -> bool:
    return workers <= 1 or n < SERIAL_BELOW


def pool_text(n: int, workers: int, pool: str = POOL) -> str:
    """How :func:`decode_images` decodes ``n`` images with ``workers``, in words."""
    return "in this process" if _serial(n, workers) else f"with {workers} {pool}"


def _executor(pool: str, workers: int) -> futures.Executor:
    if pool == "processes" and "fork" in multiprocessing.get_all_start_methods():
        # fork: the workers need no import of their own (spawn would import torch in each) and
        # touch nothing but Pillow and numpy, so the parent's threads cannot hurt them; each
        # dies with this process (orphan.die_with_parent), also when it is SIGKILLed
        return futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                           initializer=die_with_parent, initargs=(os.getpid(),))
    return futures.ThreadPoolExecutor(workers)


def decode_images(paths: Sequence[str], size: int, order: np.ndarray | None = None, *,
                  workers: int | None = None, pool: str = POOL,
                  done: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 ``[N, 3, size, size]``: image ``i`` of ``paths`` at row ``order[i]`` (default: row
    ``i``). ``workers`` (default: every core) decode chunks of :data:`CHUNK` files with a
    ``pool`` of processes or threads; ``done(k)`` is called as each k images are finished.
    The first unreadable file (in ``paths`` order) raises :class:`DataError` naming it."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    n = len(paths)
    rows = np.arange(n) if order is None else np.asarray(order)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    workers = default_workers() if workers is None else workers
    spans = [(first, min(first + CHUNK, n)) for first in range(0, n, CHUNK)]
    if _serial(n, workers):
        for first, stop in spans:
            out[rows[first:stop]] = _decode_chunk(paths[first:stop], size)
            if done is not None:
                done(stop - first)
        return out
    executor = _executor(pool, workers)
    try:
        tasks = [executor.submit(_decode_chunk, list(paths[first:stop]), size)
                 for first, stop in spans]
        for (first, stop), task in zip(spans, tasks):
            out[rows[first:stop]] = task.result()
            if done is not None:
                done(stop - first)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return out
