"""Reading user paths without hanging: every file ncslim reads is a regular file.

A FIFO named ``results.json`` or ``cat.jpg`` would block a plain ``open`` forever, a device could
be read without end, a socket cannot be opened at all. :func:`open_regular` opens a path with
``O_NONBLOCK`` (so that opening a FIFO returns at once instead of waiting for a writer), checks
the open descriptor with ``fstat`` (so the check is of the very file that is read, not of what
the name pointed to a moment before), and only then hands back an ordinary blocking file.
Symlinks to regular files are followed; a symlink loop is refused.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> os.mkfifo(os.path.join(folder, "results.json"))
    >>> not_a_file(os.path.join(folder, "results.json"))
    'is a FIFO, not a regular file'
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
from pathlib import Path
from typing import IO, Any

FIX = "give a regular file"


class NotAFileError(ValueError):
    """A path that is something other than a readable regular file (a FIFO, a directory, ...)."""


def kind_problem(mode: int) -> str | None:
    """Why a file of ``st_mode`` ``mode`` cannot be read as a regular file; None if it can."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    return f"is {kind}, not a regular file"


def not_a_file(path: str | os.PathLike) -> str | None:
    """What keeps ``path`` from being read as a regular file, in words; None if nothing does.
    Nothing is opened: reading a FIFO or a device could block or never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symlink loop, not a file"
        return f"cannot be read ({err.strerror or err})"
    problem = kind_problem(mode)
    if problem is None and not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return problem


def _refuse(path: str | os.PathLike, problem: str, what: str, fix: str = FIX) -> Exception:
    label = f"{what} {path}" if what else str(path)
    if problem == "no such file":
        return FileNotFoundError(f"{label}: no such file")
    return NotAFileError(f"{label}: {problem}; {fix}")


def check_regular(path: str | os.PathLike, what: str = "", fix: str = FIX) -> Path:
    """``path`` if it is a readable regular file, else a one-line error naming it (``what``
    names the role, e.g. ``"config file"``; ``fix`` says what to do): FileNotFoundError or
    :class:`NotAFileError`."""
    problem = not_a_file(path)
    if problem:
        raise _refuse(path, problem, what, fix)
    return Path(path)


def open_regular(path: str | os.PathLike, mode: str = "rb", *, what: str = "", fix: str = FIX,
                 encoding: str | None = None) -> IO[Any]:
    """``open(path, mode)`` for reading (``"rb"`` or ``"r"``) that never blocks on a FIFO and
    never reads a device: the descriptor is opened non-blocking and checked with ``fstat``."""
    if mode not in ("rb", "r"):
        raise ValueError(f"open_regular reads only ('rb' or 'r'), not {mode!r}")
    check_regular(path, what, fix)  # nothing opened yet: a device is never even opened
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:  # replaced since the check by a socket (ENXIO), a loop, ...
        raise _refuse(path, f"cannot be read ({err.strerror or err})", what, fix) from None
    try:
        problem = kind_problem(os.fstat(fd).st_mode)
        if problem:
            raise _refuse(path, problem, what, fix)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        raw = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    if mode == "rb":
        return raw
    return io.TextIOWrapper(raw, encoding=encoding or "utf-8")


MiB = 1 << 20
# The most ncslim reads of a JSON record it writes itself: a run's ``config.json`` (a few KB) or
# ``results.json`` (a few KB, up to some MB with the |gamma| of every channel of a wide network).
JSON_RECORD_LIMIT = 64 * MiB


def _too_large(path: str | os.PathLike, what: str, fix: str, limit: int,
               size: int | None) -> ValueError:
    """The one-line error for a file over ``limit`` bytes (``size``: None when it grew past the
    limit while it was read)."""
    label = f"{what} {path}" if what else str(path)
    has = f"{size:,} bytes, more" if size is not None else "more"
    return ValueError(f"{label}: {has} than the {_amount(limit)} ncslim reads there; is it the "
                      f"right file? {fix}")


def _amount(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB and limit % MiB == 0 else f"{limit:,} bytes"


def read_bytes(path: str | os.PathLike, *, limit: int, what: str = "", fix: str = FIX) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them: a larger file is a
    one-line ValueError naming it, its size and the limit, told from its size before a byte is
    read (and a file that grows past the limit while read is refused all the same)."""
    with open_regular(path, "rb", what=what, fix=fix) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise _too_large(path, what, fix, limit, size)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _too_large(path, what, fix, limit, None)
    return data


def read_text(path: str | os.PathLike, *, limit: int, what: str = "", fix: str = FIX,
              encoding: str = "utf-8") -> str:
    """The text of the regular file ``path`` of at most ``limit`` bytes (see
    :func:`read_bytes`); text that is not ``encoding`` is a UnicodeDecodeError (a ValueError)."""
    return read_bytes(path, limit=limit, what=what, fix=fix).decode(encoding)
