"""The decoded images of an image folder, kept on disk so that the next run starts in seconds.

One file per folder content and image size: ``${XDG_CACHE_HOME:-~/.cache}/ncslim/folders/
<key>.pt``, where the key is a hash of every image's relative path, size in bytes and
modification time, of the class list and the split, of S, of the conversion rule, of Pillow's
version and of :data:`CACHE_VERSION`. A file added, removed, touched or replaced is a new key;
old files are never removed (delete the folder to reclaim the space). A cache file is written
atomically (a temporary file beside it, then a rename), read with ``weights_only=True`` and
checked (shapes, types, statistics); one that fails is decoded again and rewritten, and one
that cannot be written is a warning, not an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..util.files import atomic_save
from ..util.regular import open_regular
from .catalog import _one_line, cache_root

log = logging.getLogger("ncslim")

CACHE_FORMAT = "ncslim.folder-cache"
CACHE_VERSION = 1  # raise it when what a cache file holds, or how it is made, changes


def cache_dir() -> Path:
    """Where folder caches live: ``${XDG_CACHE_HOME:-~/.cache}/ncslim/folders``."""
    return cache_root() / "folders"


def cache_key(description: dict[str, Any]) -> str:
    """A hex digest of ``description`` (plain data: the folder's files, S, the rule, ...)."""
    text = json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, **description},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write_cache(path: Path, key: str, images: tuple[Tensor, Tensor],
                stats: tuple[list[float], list[float]]) -> None:
    """Keep the (train, test) images and the (mean, std) at ``path``; a failure (a read-only
    or full disk) only costs the next run a decode."""
    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key,
               "train_images": images[0], "test_images": images[1],
               "mean": list(stats[0]), "std": list(stats[1])}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(payload, path)
    except OSError as err:
        log.warning("folder: cannot write the image cache %s (%s); the next run decodes the "
                    "images again", path, _one_line(err))
        return
    log.info("folder: decoded images cached in %s (%.1f MiB)", path,
             path.stat().st_size / 2**20)


def read_cache(path: Path, key: str, counts: tuple[int, int], size: int
               ) -> tuple[tuple[Tensor, Tensor], tuple[list[float], list[float]]] | None:
    """The (train, test) images and (mean, std) kept at ``path``, if it holds what ``key``
    describes: None if there is no file, or (with a warning) if it is damaged."""
    if not path.is_file():
        return None
    try:
        with open_regular(path) as f:  # a FIFO swapped in is refused, not waited on
            payload = torch.load(f, map_location="cpu", weights_only=True)
        problem = _check_payload(payload, key, counts, size)
    except Exception as err:  # noqa: BLE001  a damaged pickle raises nearly anything
        problem = f"unreadable: {_one_line(err)}"
    if problem:
        log.warning("folder: the image cache %s is damaged (%s); decoding the images again",
                    path, problem)
        return None
    return (payload["train_images"], payload["test_images"]), (payload["mean"], payload["std"])


def _check_payload(payload: Any, key: str, counts: tuple[int, int], size: int) -> str | None:
    """What is wrong with a cache payload, in words; None if nothing is."""
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        return "not a folder cache"
    if payload.get("version") != CACHE_VERSION or payload.get("key") != key:
        return "made for other files or by another version"
    for split, n in zip(("train", "test"), counts):
        images = payload.get(f"{split}_images")
        if not (torch.is_tensor(images) and images.dtype == torch.uint8
                and tuple(images.shape) == (n, 3, size, size)):
            return f"{split} images are not uint8 [{n}, 3, {size}, {size}]"
    for name, low in (("mean", 0.0), ("std", 1 / 255)):
        values = payload.get(name)
        if not (isinstance(values, list) and len(values) == 3 and all(
                isinstance(v, float) and math.isfinite(v) and low <= v <= 1 for v in values)):
            return f"{name} is not 3 numbers in [{low:.3g}, 1]"
    return None
