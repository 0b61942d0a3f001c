"""Worker processes that die with their parent: a killed ``ncslim`` leaves no decoder behind.

A worker of a process pool waits for work on a pipe that it holds both ends of (it was forked
with them), so it would wait forever once its parent is killed (SIGKILL runs no cleanup). Each
worker runs :func:`die_with_parent` first: on Linux the kernel sends it SIGKILL when its parent
dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent's pid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 1.0  # where prctl is missing: how often a worker looks for its parent


def _prctl_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)  # the parent is gone: nobody waits for this worker's results


def die_with_parent(parent: int) -> None:
    """A pool's ``initializer``: end this worker when process ``parent`` ends (pass the pool
    owner's ``os.getpid()``). If the parent is already gone, end at once."""
    if not _prctl_death_signal():
        threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)
