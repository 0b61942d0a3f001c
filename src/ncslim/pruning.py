"""Moved to :mod:`ncslim.prune` (issue 26); this name stays for one release: each name is
looked up there."""

from typing import Any

from . import prune as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
