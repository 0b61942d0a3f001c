"""Run folders: claiming one for a process (:func:`run_lock`), and which run folders near a
path are in use by a live ncslim process (:func:`refuse_near_live_run`).

:func:`ncslim.io.run_lock` guards a run folder with an ``flock`` on its ``.lock``; a run writes
into its subfolders (``train/``, ``finetune/``, a sweep's ratio folders) without locking them. So
a command that writes into a folder must also look *above* it (``prune --out RUN/train`` while
``run --out RUN`` is alive) and *below* it (``run --out RUN --resume`` while ``prune --out
RUN/train`` holds that folder): :func:`refuse_near_live_run` does both, and names the holder.

A folder's holder is probed with a shared, non-blocking ``flock`` that is let go at once; a
``.lock`` that is not a regular file is never opened for more than that probe.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"
PARTIAL = ".tmp"  # io.atomic_path's temporary files: ".<name>.<random>.tmp" beside the target
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
            return os.read(fd, 32).decode("ascii", "replace").strip()
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
    lock = out / ".lock"
    handle, locked = _claim(lock, out)
    held = out.resolve()
    HELD.add(held)
    try:
        refuse_near_live_run(out)  # again, holding the lock: one may have started meanwhile
        if fresh and any(p.name != ".lock" for p in out.iterdir()):
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
    """The temporary files of cut-short writers in ``out`` and its subfolders, except those
    below a subfolder that holds its own ``.lock``: another run's, live or not, to clean."""
    found = []
    for folder, subfolders, files in os.walk(out):
        subfolders[:] = [d for d in subfolders if not (Path(folder, d) / ".lock").exists()]
        found += [Path(folder, f) for f in files if f.startswith(".") and f.endswith(PARTIAL)]
    return found


def _claim(lock: Path, out: Path) -> tuple[IO[str], bool]:
    """Open and ``flock`` ``lock``: its handle, and whether it is locked (False where the file
    system has no locks). A live holder is refused with a :class:`ValueError` naming its pid."""
    import fcntl

    while True:
        handle = lock.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _still_names(lock, handle):  # its holder has removed it and is letting go
                handle.close()
                continue
            handle.seek(0)
            holder = handle.read().strip()
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
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
