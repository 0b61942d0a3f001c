"""Writes that never leave a half-written file: each goes to a temporary file beside its
target (named as :data:`ncslim.util.liverun.PARTIAL_NAME` says, so a later claim of the folder
cleans what a killed writer left), is flushed and synced, then renamed over the target. A full
disk or a read-only folder is one OSError naming the target, not the temporary file. Imports
nothing of ncslim outside ``util``."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .liverun import PARTIAL as _PARTIAL


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``; once the block has written it, it is synced and renamed
    to ``path`` (never half-written); if the block fails, it is removed.

    The file gets the permissions ``open(path, "w")`` would give it: those of the file it
    replaces, else 0o666 less the umask (and a directory's default ACL, where there is one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno and err.filename in (None, str(tmp)):
            # a full disk, found when the file is flushed: name the file meant, not the temporary
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
    _sync_directory(path.parent)


def _create_beside(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` beside ``path``, with ``path``'s mode if it
    exists. (``tempfile.mkstemp`` would make it 0600, and the rename would keep that.)"""
    try:
        keep: int | None = os.stat(path).st_mode & 0o777
    except OSError:
        keep = None
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_PARTIAL}")
        try:
            # 0o666 as open() asks: the kernel applies the umask (or a default ACL) itself, so the
            # umask is never read, and no other thread sees it changed
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            if keep is not None:
                os.fchmod(fd, keep)
        except OSError:  # a file system without Unix modes: its own default is all there is
            pass
        finally:
            os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: cannot create a temporary file beside {path.name}")


@contextmanager
def _atomic(path: Path) -> Iterator[Any]:
    """A binary file that becomes ``path`` only once fully written (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        yield f


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut cannot bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename itself is atomic
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it: never half-written.
    A write that fails (a full disk: torch reports it as a RuntimeError) is an :class:`OSError`
    naming ``path``."""
    with _atomic(Path(path)) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:
            raise _write_error(err, Path(path)) from err


def _write_error(err: RuntimeError, path: Path) -> BaseException:
    """The OSError behind a failed ``torch.save`` (torch wraps it in a RuntimeError), with
    ``path`` as its file; ENOSPC when the disk is full and nothing more is known; else ``err``."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        return OSError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path))
    try:
        full = os.statvfs(path.parent).f_bavail == 0
    except OSError:
        full = False
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) if full else err


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` the way :func:`atomic_save` writes checkpoints."""
    with _atomic(Path(path)) as f:
        f.write(text.encode())
