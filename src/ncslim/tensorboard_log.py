"""Moved to :mod:`ncslim.report.tensorboard_log` (issue 26); this name stays for one release:
each name is looked up there."""

from typing import Any

from .report import tensorboard_log as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
