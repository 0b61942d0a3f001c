"""The packages of docs/architecture.md: moved modules keep their old names for one release."""

from __future__ import annotations

import importlib

import pytest

MOVED = {  # old name: (its package, one of its names)
    "regular": ("util", "read_text"), "escape": ("util", "shown"), "liverun": ("util", "run_lock"),
    "distributed": ("util", "is_main"), "progress": ("util", "RunProgress"),
    "figures": ("report", "plan"), "rundata": ("report", "run_curves"),
    "summary": ("report", "format_results"), "tensorboard_log": ("report", "TensorBoardLog")}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_reaches_the_moved_module(old):
    package, name = MOVED[old]
    alias = importlib.import_module(f"ncslim.{old}")
    moved = importlib.import_module(f"ncslim.{package}.{old}")
    assert getattr(alias, name) is getattr(moved, name)
    with pytest.raises(AttributeError):
        alias.no_such_name  # noqa: B018
