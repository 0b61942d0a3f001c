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

Before any pixel is decoded, the size that will be decoded is checked against
:data:`MAX_PIXELS`: a JPEG's size after the draft (a 100-megapixel photo decodes at 1/8 scale
to 1.6 megapixels, and is accepted), any other format's size in its header. A JPEG in several
scans (progressive) is decoded by libjpeg through a buffer of every coefficient of the full-size
image, whatever the draft: that buffer counts too, in pixels of :data:`PEAK_BYTES_PER_PIXEL`
bytes (a progressive 4:2:0 JPEG is accepted up to ~190 megapixels). A small file that
promises a huge image (a decompression bomb, a 16-bit PNG of 13000 x 13000) is refused in one
line naming it, in this process or in a worker. Pillow's own limit is not the rule: its warning
(over 89 megapixels, before the draft) is ignored, its error (over 179 megapixels) refuses any
format but JPEG, whose size after the draft is checked as any other's.

Files are decoded in chunks by a pool of worker processes (forked: nothing is imported again;
threads where ``fork`` does not exist), or in this process for a few hundred images or
``workers=1``: ``benchmarks/folder_decode.py`` measures threads against processes. Every worker
may be decoding an image at the budget at the same moment, so the pool has at most
:func:`pool_workers` workers: the images being decoded at once take at most
:data:`DECODE_MEMORY` (4 GiB) together, whatever the number of cores.

Formats that Pillow decodes by running another program (EPS and PostScript: Ghostscript, with
no time limit) are not images here: a folder's ``.eps`` is not counted, and such a file under an
image's name is refused in one line without running anything.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import multiprocessing
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..util.regular import open_regular
from .catalog import DataError, _one_line
from .jpegscan import coefficient_buffer
from .orphan import die_with_parent

log = logging.getLogger("ncslim")

CONVERSION = "jpeg-draft/exif/16-bit-top-byte/rgb-drop-alpha/center-square/bilinear-aa"
SERIAL_BELOW = 512  # fewer images than this are decoded in this process: a pool costs more
CHUNK = 256  # images per task: few enough tasks for little overhead, enough to share the work
POOLS = ("processes", "threads")
POOL = "processes"  # the default: see benchmarks/folder_decode.py and docs/performance.md
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# pixels one image may decode to: 2^25 (33.5 megapixels, e.g. 8192 x 4096), a JPEG after its
# draft. Pillow's own limit (89 megapixels) only warns, and refuses only above 179 megapixels
MAX_PIXELS = 1 << 25
# the most memory decoding one image may take, in bytes a pixel of the budget: Pillow keeps up
# to 4 bytes a pixel and the conversion makes a few copies. Measured (peak RSS over the
# process's, 8192 x 4096): 16.3 for a 32-bit TIFF turned by its EXIF orientation, 13 for a float
# TIFF, 12 for RGBA or CMYK, 8 for a 16-bit PNG: ~0.53 GiB an image at the budget
PEAK_BYTES_PER_PIXEL = 17
# the most memory the images being decoded at once may take together: a pool decodes one image
# a worker at the same time, so without a bound 16 cores would peak near 8.5 GiB on a folder of
# images at the budget (16 small PNG bombs). 4 GiB leaves room for the training run beside it
# on a 16 GB machine and still gives 7 workers (pool_workers)
DECODE_MEMORY = 4 << 30


def pillow() -> Any:
    """``PIL.Image``, or a one-line error saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install 'ncslim[folder]'"
                        ) from None
    return Image


_UNDECODABLE = {"MPEG"}  # Pillow identifies these files but cannot decode their pixels
# formats Pillow decodes by running another program: EPS/PS run Ghostscript, with no time limit
# (a looping PostScript file would hang the run, and gs outlives a killed worker)
_EXTERNAL = {"EPS": "an EPS or PostScript file, which Pillow decodes by running Ghostscript"}


def image_suffixes() -> frozenset[str]:
    """The lower-case file suffixes of every format this Pillow can decode (``.jpg``, ``.png``,
    ``.webp``, ...); other files in a folder are not images. Stub formats (HDF5, GRIB, BUFR,
    WMF: Pillow only recognises them) are not images either: a folder's ``.h5`` is data; nor are
    the formats Pillow decodes by running another program (``.eps``, ``.ps``: Ghostscript)."""
    image = pillow()
    from PIL import ImageFile

    image.init()
    stub = ImageFile.StubImageFile
    readable = {fmt for fmt, (factory, _) in image.OPEN.items()
                if fmt not in _UNDECODABLE and fmt not in _EXTERNAL
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
            _check_pixels(path, img.size, (width, height), coefficient_buffer(img))
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


# held while Pillow's warning filter is changed: warnings.catch_warnings saves and restores the
# process's filters, so two threads that interleave would leave one's filter in place for good
_FILTERS = threading.Lock()


def _new_lock() -> None:
    global _FILTERS
    _FILTERS = threading.Lock()


if hasattr(os, "register_at_fork"):  # a worker forked while a thread held it must not wait
    os.register_at_fork(after_in_child=_new_lock)


def _formats(image: Any) -> tuple[str, ...]:
    """The formats :func:`_open` tries, in Pillow's order: all but :data:`_EXTERNAL`."""
    image.init()
    return tuple(fmt for fmt in image.ID if fmt not in _EXTERNAL)


@contextmanager
def _open(image: Any, path: str) -> Iterator[Any]:
    """``image.open`` (lazy: the header only) on the file at ``path``, opened as a regular file
    (a FIFO put there since the folder was scanned is refused, never waited on); the file is
    closed with the image. Pillow's decompression-bomb warning (over 89 megapixels, from the
    header: before a JPEG's draft) is ignored here, in this call only: the budget is
    :func:`_check_pixels`'s, after the draft. Its error (over 179 megapixels) refuses the file
    in the same one line, but for a JPEG, which is opened without Pillow's check and decoded if
    its draft fits. A format Pillow decodes with another program (:data:`_EXTERNAL`) is never
    opened: such a file is refused in one line."""
    with open_regular(path, "rb", what="image", fix="remove or replace the file") as fp:
        try:
            with _FILTERS, warnings.catch_warnings():
                warnings.simplefilter("ignore", image.DecompressionBombWarning)
                img = image.open(fp, formats=_formats(image))
        except image.DecompressionBombError as err:
            img = _large_jpeg(fp)
            if img is None:
                pixels = re.search(r"\((\d+) pixels\)", str(err))
                count = f"{int(pixels[1]):,}" if pixels else "too many"
                raise DataError(f"{path}: {count} pixels, more than the {MAX_PIXELS:,} an image "
                                f"may decode to; downscale it or remove it") from None
        except image.UnidentifiedImageError:  # its message names the descriptor, not the file
            fp.seek(0)
            head = fp.read(16)
            for fmt, what in _EXTERNAL.items():
                accept = image.OPEN[fmt][1] if fmt in image.OPEN else None
                if accept is not None and accept(head):
                    raise DataError(f"{path}: {what}, with no time limit, so ncslim does not "
                                    f"decode it; convert it to PNG or remove it") from None
            raise DataError(f"{path}: cannot be read as an image (not a format Pillow "
                            f"identifies); remove or replace the file") from None
        with img:
            yield img


def _large_jpeg(fp: Any) -> Any:
    """The JPEG in ``fp`` opened without Pillow's decompression-bomb check (its header only), or
    None if ``fp`` does not hold a JPEG: :func:`decode_image` drafts it, then checks the size
    that will be decoded. (An MPO file is opened as its first image, as Pillow decodes it.)"""
    fp.seek(0)
    if fp.read(3) != b"\xff\xd8\xff":
        return None
    from PIL import JpegImagePlugin

    fp.seek(0)
    return JpegImagePlugin.JpegImageFile(fp)


def _check_pixels(path: str, size: tuple[int, int],
                  header: tuple[int, int] | None = None, buffer: int = 0) -> None:
    """Refuse an image that would decode to more than :data:`MAX_PIXELS` (before decoding):
    ``size`` is what will be decoded, ``header`` the size in the file when a JPEG's draft made
    it smaller, ``buffer`` the bytes libjpeg holds besides
    (:func:`~ncslim.data.jpegscan.coefficient_buffer`), counted as pixels of
    :data:`PEAK_BYTES_PER_PIXEL` bytes."""
    width, height = size
    pixels = width * height
    held = -(-buffer // PEAK_BYTES_PER_PIXEL)
    if pixels + held <= MAX_PIXELS:
        return
    if held and pixels <= MAX_PIXELS:
        whole = size if header is None else header
        raise DataError(f"{path}: {whole[0]} x {whole[1]} JPEG in several scans (progressive), "
                        f"which libjpeg decodes through all {buffer / (1 << 20):,.0f} MiB of its "
                        f"coefficients whatever the scale: as much memory as {pixels + held:,} "
                        f"pixels, more than the {MAX_PIXELS:,} an image may decode to; save it as "
                        f"a baseline JPEG, downscale it or remove it")
    scaled = "" if header in (None, size) else (f"{header[0]} x {header[1]}, decoded at a "
                                                f"reduced scale to ")
    raise DataError(f"{path}: {scaled}{width} x {height} = {pixels:,} pixels, more than the "
                    f"{MAX_PIXELS:,} an image may decode to; downscale it or remove it")


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


def pool_workers(workers: int) -> int:
    """How many of ``workers`` a decoding pool has: at most :data:`DECODE_MEMORY` //
    (:data:`MAX_PIXELS` x :data:`PEAK_BYTES_PER_PIXEL`), 7 (each worker may be decoding an
    image at the budget at the same moment), and at least 1. The budget of each image stays
    the same: which files are accepted does not depend on the machine."""
    return max(1, min(workers, DECODE_MEMORY // (MAX_PIXELS * PEAK_BYTES_PER_PIXEL)))


def _serial(n: int, workers: int) -> bool:
    return workers <= 1 or n < SERIAL_BELOW


def pool_text(n: int, workers: int, pool: str = POOL) -> str:
    """How :func:`decode_images` decodes ``n`` images with ``workers``, in words."""
    workers = pool_workers(workers)
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
    ``i``). ``workers`` (default: every core; at most :func:`pool_workers`, so that the images
    being decoded at once take at most :data:`DECODE_MEMORY`) decode chunks of :data:`CHUNK`
    files with a ``pool`` of processes or threads; ``done(k)`` is called as each k images are
    finished. The first unreadable file (in ``paths`` order) raises :class:`DataError` naming
    it."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    n = len(paths)
    rows = np.arange(n) if order is None else np.asarray(order)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    workers = pool_workers(default_workers() if workers is None else workers)
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
