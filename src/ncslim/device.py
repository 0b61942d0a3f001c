"""Moved to :mod:`ncslim.run.device` (issue 26); this name stays for one
release: each name is looked up there."""

from typing import Any

from .run import device as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
