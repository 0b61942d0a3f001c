"""Moved to :mod:`ncslim.report.figures` (issue 26); this name stays for one release:
each name is looked up there."""

from typing import Any

from .report import figures as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
