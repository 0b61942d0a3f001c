"""The packages of docs/architecture.md: moved modules keep their old names for one release."""

from __future__ import annotations

import importlib

import pytest

MOVED = {"regular": "read_text", "escape": "shown", "liverun": "run_lock",
         "distributed": "is_main", "progress": "RunProgress"}  # old name: one of its names


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_reaches_the_moved_module(old):
    alias = importlib.import_module(f"ncslim.{old}")
    moved = importlib.import_module(f"ncslim.util.{old}")
    assert getattr(alias, MOVED[old]) is getattr(moved, MOVED[old])
    with pytest.raises(AttributeError):
        alias.no_such_name  # noqa: B018
