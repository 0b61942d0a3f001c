"""Moved to :mod:`ncslim.models.measure` (issue 26); this name stays for one release: each name is
looked up there."""

from typing import Any

from .models import measure as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
