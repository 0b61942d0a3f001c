"""A run that diverged, and the advice it gives: "lower --lr and run again" works in the same
``--out``.

When a stage diverges inside a claimed run folder, :func:`noted` records it in
``OUT/diverged.json``. A fresh run (no ``--resume``) in a folder holding that record does not
refuse the folder as taken: it first moves the diverged run, every file of it, into
``OUT/diverged-N/`` (N = 1, 2, ...; nothing is deleted), then starts there. A run that finishes
(a resume that got through, say) drops the record, so a finished run is never set aside. A
sweep does the same per run when its settings change (:mod:`ncslim.run.sweep`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..util.files import atomic_write_text
from ..util.liverun import LOCK_NAME
from .train import TrainingDiverged

MARK = "diverged.json"
ASIDE = "diverged-"  # OUT/diverged-N/: a diverged run set aside by the fresh run after it


def holds_one(out: Path) -> bool:
    """Whether ``out`` holds a run that diverged (and nothing has finished there since)."""
    return (out / MARK).is_file() and not (out / MARK).is_symlink()


def set_aside(out: Path) -> Path:
    """Move everything in ``out`` but its lock and earlier set-aside runs into a new
    ``out/diverged-N/``; returns that folder. Call it holding ``out``'s lock."""
    if not holds_one(out):  # it may have finished or been set aside since it was looked at
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose "
                         f"another --out")
    n = 1 + max((int(p.name[len(ASIDE):]) for p in out.iterdir()
                 if p.name.startswith(ASIDE) and p.name[len(ASIDE):].isdigit()), default=0)
    aside = out / f"{ASIDE}{n}"
    aside.mkdir()
    for entry in sorted(out.iterdir()):
        if entry.name != LOCK_NAME and not entry.name.startswith(ASIDE):
            os.replace(entry, aside / entry.name)  # the same folder tree: a rename, never a copy
    return aside


@contextmanager
def noted(out: Path, writes: bool, advice: str = "with the same --out, the new run first moves "
                                                 "this one to {aside}N/") -> Iterator[None]:
    """Around a claimed run in ``out``: a divergence is recorded (by the process that ``writes``)
    and its ``advice`` says how the corrected run takes its place (``{aside}``: where the
    diverged run goes then); a run that gets through drops an earlier record."""
    try:
        yield
    except TrainingDiverged as err:
        if writes:
            atomic_write_text(out / MARK, json.dumps({"diverged": str(err)}, indent=2) + "\n")
        raise TrainingDiverged(f"{err} ({advice.format(aside=out / ASIDE)})") from None
    if writes:
        (out / MARK).unlink(missing_ok=True)
