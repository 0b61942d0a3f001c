"""Moved to :mod:`ncslim.sparsity.penalty_registry` (issue 26); this name stays for one
release: each name is looked up there."""

from typing import Any

from .sparsity import penalty_registry as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
