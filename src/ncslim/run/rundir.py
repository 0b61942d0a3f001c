"""A run's folder: claiming it for one run, its ``config.json`` record, and what a resume must
agree with; a diverged run in it set aside (:mod:`ncslim.run.diverged`). Imports the file and
lock helpers (:mod:`ncslim.models.files`, :mod:`ncslim.liverun`, :mod:`ncslim.regular`), the
configuration, :mod:`ncslim.distributed` and :mod:`ncslim.run.diverged`.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..config import AUTO, Config
from ..util import distributed
from ..util.files import atomic_write_text
from ..util.liverun import refuse_near_live_run, run_lock
from ..util.regular import JSON_RECORD_LIMIT, read_bytes
from ..util.version import __version__
from . import diverged


def code_version() -> dict[str, Any]:
    """The package version, when run from a git checkout its commit, and what decides whether a
    CPU run repeats bit for bit: torch's thread count and CPU kernels (benchmarks/determinism.py).
    """
    version: dict[str, Any] = {"ncslim": __version__, "torch": torch.__version__,
                               "python": platform.python_version(),
                               # a CPU run repeats bit for bit only with the same two
                               "threads": torch.get_num_threads(),
                               "cpu_kernels": torch.backends.cpu.get_cpu_capability()}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5, check=True)
        version["commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version["commit"] = None
    return version


@contextmanager
def claim(out: Path, fresh: bool, resume: bool = False) -> Iterator[None]:
    """:func:`~ncslim.util.liverun.run_lock` in the process that writes (rank 0 under torchrun);
    ``resume`` asks for a directory that holds a run (:func:`require_run`)."""
    if resume:
        require_run(out)  # before the lock creates the directory
    main = distributed.is_main()
    replaces = fresh and diverged.holds_one(out)  # "lower --lr and run again": the same --out
    with run_lock(out, fresh and not replaces) if main else nullcontext():
        if resume:
            require_run(out)
        if replaces and main:
            diverged.set_aside(out)
        with diverged.noted(out, writes=main):
            yield


RUN_MARKS = ("config.json", "last.pt", "train/last.pt")  # a directory with one holds a run


def check_out(out: Path, resume: bool) -> None:
    """Before any work (reading data, building the model): refuse an ``out`` inside a live run
    or holding one (:func:`~ncslim.liverun.refuse_near_live_run`), and with ``resume`` one that
    holds no run. :func:`claim` checks both again, holding the lock."""
    refuse_near_live_run(out)
    if resume:
        require_run(out)


def require_run(out: Path) -> None:
    """Refuse to resume in a directory that holds no run."""
    if not any((out / name).is_file() for name in RUN_MARKS):
        raise ValueError(f"{out} holds no run to resume (no config.json or last.pt there); "
                         f"check --out, or start a new run without --resume")


FREE_ON_RESUME = {"device", "data_dir", "download", "compile", "channels_last", "amp", "amp_dtype",
                  "out", "latency_threads", "tensorboard"}


def write_config(cfg: Config, out: Path, command: str, fingerprint: str = "") -> None:
    """Record the run's settings in ``out/config.json``; a run already there must agree (and its
    record stays as it was: a resume refused later leaves the run untouched). ``fingerprint``:
    an image folder's (``DatasetInfo.fingerprint``), which a resumed run must match."""
    if not distributed.is_main():
        return
    if (out / "config.json").exists() or (out / "config.json").is_symlink():  # a resumed run
        check_same_run(cfg, out / "config.json", command, fingerprint)
        return
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "config": cfg.to_dict(), "version": code_version()}
    if fingerprint:
        record["data_fingerprint"] = fingerprint
    atomic_write_text(out / "config.json", json.dumps(record, indent=2) + "\n")


def _applied(config: dict[str, Any]) -> dict[str, Any]:
    """What a run's recorded settings applied where a setting may be left unset: compensation
    (unset: on with ``--lam auto`` for ``--arch`` families) and the ranking (``auto``
    resolved; runs from before the choice: global). An unreadable record: as it stands."""
    record = {"ranking": "global", **config}
    known = {f.name for f in fields(Config)}
    try:
        cfg = Config(**{k: v for k, v in record.items() if k in known})
        return {"compensate": cfg.compensates(), "ranking": cfg.prune_rule().applied_ranking}
    except (TypeError, ValueError):
        compensate = record.get("compensate")
        if compensate is None:
            compensate = record.get("lam") == AUTO and record.get("model") is None
        return {"compensate": compensate, "ranking": record.get("ranking")}


def check_same_run(cfg: Config, path: Path, command: str, fingerprint: str = "") -> None:
    data = read_bytes(path, limit=JSON_RECORD_LIMIT,  # NotAFileError, too large: named
                      fix="remove it or choose another --out")
    try:
        record = json.loads(data.decode("utf-8"))
        started, before = record["command"], record["config"]
        if not isinstance(started, str) or not isinstance(before, dict):
            raise TypeError("not a run record")
    except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path} is damaged; the run there cannot be resumed safely; choose "
                         f"another --out") from None
    if started != command:
        raise ValueError(f"{path.parent} holds a run of ncslim {started}; continue it with "
                         f"ncslim {started} --resume, or choose another --out")
    if fingerprint and record.get("data_fingerprint", fingerprint) != fingerprint:
        raise ValueError(f"resuming {path.parent}: the images in --data-dir {cfg.data_dir} are "
                         f"not the ones the run started with (a file added, removed or changed "
                         f"since); resume with those images, or choose another --out")
    before = {**before, **_applied(before)}
    now = {**cfg.to_dict(), "compensate": cfg.compensates(),
           "ranking": cfg.prune_rule().applied_ranking}
    changed = [k for k in now if k not in FREE_ON_RESUME and before.get(k, now[k]) != now[k]]
    if changed:
        shown = ", ".join(f"--{k.replace('_', '-')} {now[k]} (the run has {before[k]})"
                          for k in changed[:3])
        raise ValueError(f"resuming {path.parent} with other settings: {shown}; resume with the "
                         f"settings in {path} or choose another --out")
