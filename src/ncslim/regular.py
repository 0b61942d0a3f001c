"""Moved to :mod:`ncslim.util.regular` (issue 26); this name stays for one release: each name is
looked up there."""

from typing import Any

from .util import regular as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
