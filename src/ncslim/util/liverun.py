"""Run folders: claiming one for a process (:func:`run_lock`), and which run folders near a
path are in use by a live ncslim process (:func:`refuse_near_live_run`).

:func:`run_lock` guards a run folder with an ``flock`` on its ``.lock``; a run writes into its
subfolders (``train/``, ``finetune/``, a sweep's ratio folders) without locking them. So
a command that writes into a folder must also look *above* it (``prune --out RUN/train`` while
``run --out RUN`` is alive) and *below* it (``run --out RUN --resume`` while ``prune --out
RUN/train`` holds that folder): :func:`refuse_near_live_run` does both, and names the holder.

A folder's holder is probed with a shared, non-blocking ``flock`` that is let go at once; a
``.lock`` that is not a regular file is never opened for more than that probe, and never claimed:
a symbolic link, a FIFO or a directory there is refused, so the pid is never written through a
link into a file outside the run.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"
PARTIAL = ".tmp"  # io.atomic_path's temporary files: ".<name>.<random>.tmp" beside the target
# exactly the names files._create_beside gives them (``secrets.token_hex(4)``: 8 lowercase hex
# digits): a user's ".notes.tmp" or ".draft.tmp" beside them is never taken for one
PARTIAL_NAME = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(PARTIAL), re.DOTALL)
# how deep below a claimed folder its cut-short writers' partial files are looked for: the
# deepest a run nests its stages is a sweep run's ratio-R/passN/finetune/ (3); ``run --passes``
# writes passN/train/ (2), run and baselines train/ and finetune/ (1). Deeper folders, hidden
# folders (ncslim names no stage ".x") and links to folders are not ncslim's stages: never walked
STAGE_DEPTH = 3
BELOW = 4  # how deep below a folder held subfolders are looked for (sweep/run/pass2/train: 3)
HELD: set[Path] = set()  # the run folders this process holds (resolved): never its own obstacle


def holder(folder: Path) -> str | None:
    """The pid (as text; "" when unrecorded) of another live process holding ``folder``'s lock,
    else None (no lock file, a lock nobody holds, or one this process holds)."""
    import fcntl

    if folder in HELD:
        return None
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None  # missing or unreadable: nothing there guards a run
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_text(os.read(fd, 32).decode("ascii", "replace"))
        except OSError:  # a file system without locks: no holder can be seen
            return None
        return None  # closing the descriptor lets the probe's shared lock go
    finally:
        os.close(fd)


def refuse_near_live_run(path: str | os.PathLike, what: str = "--out") -> None:
    """Refuse (:class:`ValueError`) to write at ``path`` when it is, or lies inside, a folder
    held by another live ncslim process, or when a folder below it is held."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        pid = holder(folder)
        if pid is not None:
            who = f" (pid {pid})" if pid else ""
            if folder == path:  # as io.run_lock words it
                raise ValueError(f"{path} is in use by another running ncslim process{who}; "
                                 f"wait for it to finish or choose another {what}")
            raise ValueError(f"{what} {path} is inside {folder}, a run in progress (another "
                             f"ncslim process{who}); writing there could damage it; wait for "
                             f"it to finish or choose {what} outside it")
    if not path.is_dir():
        return
    for folder, subfolders, files in os.walk(path):  # links to folders are not followed
        if len(Path(folder).relative_to(path).parts) >= BELOW:
            subfolders.clear()  # deeper than any run nests its stages: not searched
        if LOCK_NAME in files and Path(folder) != path:
            pid = holder(Path(folder))
            if pid is not None:
                who = f" (pid {pid})" if pid else ""
                raise ValueError(f"{what} {path} holds {folder}, in use by another running "
                                 f"ncslim process{who}; wait for it to finish or choose "
                                 f"another {what}")


@contextmanager
def run_lock(out: str | os.PathLike, fresh: bool) -> Iterator[None]:
    """Claim the run directory ``out`` for this process.

    A second live process is refused: an advisory ``flock`` on ``out/.lock``, which the kernel
    releases when the process ends, however it ends (even SIGKILL). A run that ends removes the
    file while it still holds the lock; the next claimant re-checks after its ``flock`` that the
    path still names the file it locked, so removing it opens no race. A SIGKILLed run cannot
    remove it: the file stays, but unlocked it is harmless and the next run takes it over.
    ``fresh`` asks for a directory that holds no earlier run (``--resume`` not given; a ``.lock``
    alone is no run); otherwise the half-written temporary files of a killed writer are removed.
    """
    out = Path(out)
    refuse_near_live_run(out)  # inside a live run (its train/), or holding one below
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    handle, locked = _claim(lock, out)
    held = out.resolve()
    HELD.add(held)
    try:
        refuse_near_live_run(out)  # again, holding the lock: one may have started meanwhile
        if fresh and any(p.name != LOCK_NAME for p in out.iterdir()):
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose "
                             f"another --out")
        for partial in _partials_covered_by(out):
            partial.unlink(missing_ok=True)
        if locked:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield
    finally:
        HELD.discard(held)
        if locked:  # only a holder removes it: without a lock, another process may hold one
            lock.unlink(missing_ok=True)
        handle.close()


def _partials_covered_by(out: Path) -> list[Path]:
    """The temporary files of cut-short ncslim writers (named as :data:`PARTIAL_NAME`, regular
    files, not links) in ``out`` and its stage subfolders down to :data:`STAGE_DEPTH`, except
    below a subfolder that holds its own ``.lock``: another run's, live or not, to clean."""
    found, folders = [], [(out, 0)]
    while folders:
        folder, depth = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:  # unreadable, or gone meanwhile: nothing of ours to clean there
            continue
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    if PARTIAL_NAME.fullmatch(entry.name):
                        found.append(Path(entry.path))
                elif (entry.is_dir(follow_symlinks=False) and depth < STAGE_DEPTH
                      and not entry.name.startswith(".")
                      and not os.path.lexists(os.path.join(entry.path, LOCK_NAME))):
                    folders.append((Path(entry.path), depth + 1))
            except OSError:
                continue
    return found


def _not_the_lock(lock: Path, kind: str) -> ValueError:
    return ValueError(f"{lock} is {kind}, not ncslim's lock file; remove it or choose another "
                      f"--out")


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")


def _open_lock(lock: Path) -> IO[str]:
    """``lock`` opened for reading and writing, created if missing; anything but a regular file
    of one name there (a symbolic link, dangling or not, a hard link, a FIFO, a directory, ...)
    is refused with a :class:`ValueError` naming it, before anything is written. A link is never
    followed, and a FIFO or device is never opened (it is refused from ``lstat``; one swapped in
    meanwhile is opened non-blocking, so it cannot hang, and refused from ``fstat``)."""
    try:
        mode = os.lstat(lock).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(mode):
            raise _not_the_lock(lock, _kind(mode))
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(lock, flags, 0o644)
    except OSError as err:  # replaced since the lstat
        kinds = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a directory",
                 errno.ENXIO: "a socket"}
        if err.errno in kinds:
            raise _not_the_lock(lock, kinds[err.errno]) from None
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise _not_the_lock(lock, _kind(opened.st_mode))
        if opened.st_nlink > 1:  # ncslim never links it: another name would lose its content
            raise _not_the_lock(lock, f"a hard link to another file ({opened.st_nlink} names)")
        os.set_blocking(fd, True)
        return open(fd, "r+", encoding="utf-8", errors="replace")
    except BaseException:
        os.close(fd)
        raise


def _pid_text(text: str) -> str:
    """The pid a lock file records, or "" when it records none (only digits are shown)."""
    text = text.strip()
    return text if text.isdigit() else ""


def _claim(lock: Path, out: Path) -> tuple[IO[str], bool]:
    """Open and ``flock`` ``lock``: its handle, and whether it is locked (False where the file
    system has no locks). A live holder is refused with a :class:`ValueError` naming its pid, and
    so is a ``lock`` that is not a regular file (:func:`_open_lock`)."""
    import fcntl

    while True:
        handle = _open_lock(lock)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _still_names(lock, handle):  # its holder has removed it and is letting go
                handle.close()
                continue
            handle.seek(0)
            holder = _pid_text(handle.read(32))
            handle.close()
            who = f" (pid {holder})" if holder else ""
            raise ValueError(f"{out} is in use by another running ncslim process{who}; wait for "
                             f"it to finish or choose another --out") from None
        except OSError as err:  # a file system without locks: run unguarded
            logging.getLogger("ncslim").warning("cannot lock %s (%s); a second run there would "
                                                "not be refused", out, err)
            return handle, False
        if _still_names(lock, handle):
            return handle, True
        # a holder removed the file between our open and our flock: what we hold guards nothing
        handle.close()


def _still_names(path: Path, handle: IO[str]) -> bool:
    """Whether ``path`` still names the file open as ``handle`` (a missing path does not)."""
    try:
        named = os.lstat(path)  # a link put there names the link, never the file we hold
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
