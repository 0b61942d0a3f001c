"""Moved to :mod:`ncslim.sparsity.penalties` (issue 26); this name stays for one
release: each name is looked up there."""

from typing import Any

from .sparsity import penalties as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
