"""Fetching the official files of a dataset, verified before they are kept."""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .catalog import _IDX_MAX_CONTENT, MD5, URLS, DataError, _info, _one_line
from .files import _md5_file, _md5_gunzip, _scan

log = logging.getLogger("ncslim")


def _fetch(name: str, url: str, dest: Path, expected: str, gz_content: bool) -> None:
    """``url`` to a temporary file beside ``dest``, renamed only once its md5 matches."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    shutil.copyfileobj(response, out, 1 << 20)
            except urllib.error.HTTPError as err:
                err.close()  # it holds the connection
                raise DataError(f"{name}: download of {url} failed: HTTP {err.code} "
                                f"{_one_line(err.reason)}; check the URL ($NCSLIM_DOWNLOAD_URL) "
                                f"or put {dest.name} into {dest.parent} by hand") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                raise DataError(f"{name}: download of {url} failed ({_one_line(err)}); check "
                                f"the network or $NCSLIM_DOWNLOAD_URL, or put {dest.name} into "
                                f"{dest.parent} by hand") from None
        try:
            actual = (_md5_gunzip(name, tmp, _IDX_MAX_CONTENT) if gz_content
                      else _md5_file(tmp))
        except DataError:
            actual = "of invalid gzip data"
        if actual != expected:
            raise DataError(f"{name}: {url} failed verification: checksum mismatch (md5 "
                            f"{actual}, expected {expected}); nothing was saved; try again or "
                            f"use another mirror ($NCSLIM_DOWNLOAD_URL)")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_dataset(name: str, root: str | Path, *, include_extra: bool = True) -> None:
    """Fetch the official files of ``name`` missing from ``root`` into ``root``, verified."""
    _info(name)
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{name}: cannot create {root} ({_one_line(err)}); pass a writable "
                        f"--data-dir DIR") from None
    base = (os.environ.get("NCSLIM_DOWNLOAD_URL") or URLS[name]).rstrip("/")
    _, missing = _scan(name, root, include_extra)
    for fname in missing:
        url = f"{base}/{fname}"
        log.info("%s: downloading %s -> %s", name, url, root / fname)
        _fetch(name, url, root / fname, MD5[name][fname], gz_content=name == "fashion-mnist")
