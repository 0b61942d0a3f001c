"""Moved to :mod:`ncslim.sparsity.penalty_base` (issue 26); this name stays for one
release: each name is looked up there."""

from typing import Any

from .sparsity import penalty_base as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
