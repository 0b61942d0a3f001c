"""Moved to :mod:`ncslim.models.export` (issue 26); this name stays for one release: each name is
looked up there."""

from typing import Any

from .models import export as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
