"""Saving and loading models: the architecture spec travels with the weights.

    >>> import ncslim, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
    >>> ncslim.save_model(ncslim.build_model("vgg", width=0.25), path)
    >>> ncslim.load_model(path).arch
    'vgg'

A file holds plain data only (dicts, lists, strings, numbers, tensors) and is read with
``torch.load(..., weights_only=True)``: loading a model never executes code from the file.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .data import MAX_CLASS_NAME, MAX_CLASSES
from .models import SlimmableNet, build_model
from .regularizer import unwrap

FORMAT = "ncslim.model"
CHECKPOINT_FORMAT = "ncslim.checkpoint"
FORMAT_VERSION = 1
_PARTIAL = ".tmp"  # atomic_save's temporary files: ".<name>.<random>.tmp" beside the target


class ModelFileError(ValueError):
    """A file that is not a readable ncslim model (corrupt, truncated, or something else)."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``; once the block has written it, it is synced and renamed
    to ``path`` (never half-written); if the block fails, it is removed.

    The file gets the permissions ``open(path, "w")`` would give it: those of the file it
    replaces, else 0o666 less the umask (and a directory's default ACL, where there is one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _create_beside(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` beside ``path``, with ``path``'s mode if it
    exists. (``tempfile.mkstemp`` would make it 0600, and the rename would keep that.)"""
    try:
        keep: int | None = os.stat(path).st_mode & 0o777
    except OSError:
        keep = None
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_PARTIAL}")
        try:
            # 0o666 as open() asks: the kernel applies the umask (or a default ACL) itself, so the
            # umask is never read, and no other thread sees it changed
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            if keep is not None:
                os.fchmod(fd, keep)
        except OSError:  # a file system without Unix modes: its own default is all there is
            pass
        finally:
            os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: cannot create a temporary file beside {path.name}")


@contextmanager
def _atomic(path: Path) -> Iterator[Any]:
    """A binary file that becomes ``path`` only once fully written (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        yield f


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut cannot bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename itself is atomic
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it: never half-written."""
    with _atomic(Path(path)) as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` the way :func:`atomic_save` writes checkpoints."""
    with _atomic(Path(path)) as f:
        f.write(text.encode())


def not_a_file(path: Path) -> str | None:
    """What keeps ``path`` from being read as a regular file, in words; None if nothing does.
    Checked before opening it: reading a FIFO or a device could block or never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file")
        return f"is {kind}, not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; unreadable files raise :class:`ModelFileError`."""
    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise FileNotFoundError(f"{path}: {problem}")
    if isinstance(map_location, (str, torch.device)):
        target = torch.device(map_location)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{path}: cannot be loaded onto {target}: no CUDA GPU is available "
                             f"here; load it onto the cpu")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001  anything a damaged pickle makes the unpickler raise
        # (KeyError, IndexError, AttributeError, ... besides UnpicklingError): an unreadable file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"{path}: not a readable ncslim file (corrupt, truncated or not "
                             f"saved by ncslim): {reason}") from err


def nonfinite_entry(state_dict: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, else None."""
    floats = [(name, t) for name, t in state_dict.items()
              if torch.is_tensor(t) and t.is_floating_point()]
    if not floats:
        return None
    device = floats[0][1].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in floats]).tolist()
    return next((name for (name, _), ok in zip(floats, finite) if not ok), None)


def model_payload(model: nn.Module) -> dict[str, Any]:
    model = unwrap(model)
    if not isinstance(model, SlimmableNet):
        raise TypeError(f"save_model saves ncslim architectures; got {type(model).__name__}")
    bad = nonfinite_entry(model.state_dict())
    if bad is not None:
        raise ValueError(f"the model holds NaN or infinite values ({bad}) and is not written: "
                         f"its training diverged; lower --lr (or --lam) and train again")
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "config": model.config(),
               "state_dict": model.state_dict()}
    if model.pruned_from is not None:
        payload["pruned_from"] = dict(model.pruned_from)
    if model.trained_on is not None:
        payload["trained_on"] = dict(model.trained_on)
    if model.vcp_sigma is not None:
        payload["vcp_sigma"] = {k: v.detach().cpu() for k, v in model.vcp_sigma.items()}
    return payload


def model_from_payload(payload: Any, source: str) -> SlimmableNet:
    """Rebuild a model from the dict that :func:`model_payload` made (``source`` names it).

    A training checkpoint (``last.pt``) holds such a dict under ``"model"``; it is accepted too.
    """
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        payload = payload.get("model")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{source}: not an ncslim model file (save one with "
                             f"ncslim.save_model)")
    if payload.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{source}: model format version {payload.get('version')} is not "
                             f"supported (this ncslim reads version {FORMAT_VERSION})")
    try:
        config = dict(payload["config"])
        arch = config.pop("arch")
        check_shapes(build_skeleton(arch, config), payload["state_dict"])
        model = build_model(arch, **config)
        model.load_state_dict(payload["state_dict"])
        bad = nonfinite_entry(payload["state_dict"])
        if bad is not None:
            raise ModelFileError(f"{source}: holds NaN or infinite values ({bad}), the trace of a "
                                 f"diverged training; it cannot be used: train it again with a "
                                 f"lower --lr (or --lam)")
        model.pruned_from = _pruned_from(payload.get("pruned_from"))
        model.vcp_sigma = _vcp_sigma(model, payload.get("vcp_sigma"))
        model.trained_on = _trained_on(payload.get("trained_on"))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"{source}: the stored architecture and weights do not fit "
                             f"together: {first}") from err
    return model


def build_skeleton(arch: str, config: dict[str, Any]) -> nn.Module:
    """The model a spec describes, on the meta device: its shapes, no memory for its weights."""
    with torch.device("meta"):
        return build_model(arch, **config)


def check_shapes(skeleton: nn.Module, stored: Any, against: str = "the spec") -> None:
    """The stored tensors are exactly those of ``skeleton``, shape for shape, else a ValueError
    naming the first that differs (``against`` names what the skeleton is). Model files check
    this before the real model is built, so a small file cannot make ncslim allocate a large
    network; ``--init`` checks a file against the network it is to start."""
    if not isinstance(stored, dict) or not all(torch.is_tensor(t) for t in stored.values()):
        raise ValueError("the state_dict is not a mapping of names to tensors")
    wanted = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    if missing or extra:
        raise ValueError(f"missing {missing[:3]} and unexpected {extra[:3]} tensors "
                         f"(against {against})")
    wrong = [name for name in wanted if tuple(stored[name].shape) != wanted[name]]
    if wrong:
        name = wrong[0]
        raise ValueError(f"{name} has shape {tuple(stored[name].shape)}, {against} says "
                         f"{wanted[name]}")


def _pruned_from(record: Any) -> dict[str, int] | None:
    if record is None:
        return None
    if not isinstance(record, dict) or set(record) != {"params", "flops", "channels"} or not all(
            isinstance(v, int) and v > 0 for v in record.values()):
        raise ValueError(f"'pruned_from' must hold positive params, flops and channels counts, "
                         f"got {record!r}")
    return {k: int(v) for k, v in record.items()}


def _trained_on(record: Any) -> dict[str, Any] | None:
    """The record of the data a model was trained on: plain values, and for an image folder
    the list of its class names (bounded: at most MAX_CLASSES names, each a short string)."""
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("dataset"), str) or not all(
            _class_names(v) if k == "classes" else isinstance(v, (str, int, bool, type(None)))
            for k, v in record.items()):
        shown = repr(record)
        raise ValueError(f"'trained_on' must name the dataset (and an image folder's classes), "
                         f"got {shown[:200]}{'...' if len(shown) > 200 else ''}")
    return dict(record)


def _class_names(value: Any) -> bool:
    return isinstance(value, list) and 0 < len(value) <= MAX_CLASSES and all(
        isinstance(name, str) and 0 < len(name) <= MAX_CLASS_NAME for name in value)


def _vcp_sigma(model: SlimmableNet, record: Any) -> dict[str, torch.Tensor] | None:
    if record is None:
        return None
    modules = dict(model.named_modules())
    if not isinstance(record, dict) or not all(
            isinstance(v, torch.Tensor) and k in modules
            and getattr(modules[k], "weight", None) is not None
            and v.shape == modules[k].weight.shape for k, v in record.items()):
        raise ValueError("'vcp_sigma' must map BN layer names to sigmas of their shape")
    return dict(record)


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's architecture spec and weights to ``path`` (atomically)."""
    atomic_save(model_payload(model), path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> SlimmableNet:
    """Rebuild a model saved by :func:`save_model`, full or pruned, in evaluation mode."""
    return model_from_payload(safe_load(path, device), str(path)).to(device).eval()


@contextmanager
def run_lock(out: str | os.PathLike, fresh: bool) -> Iterator[None]:
    """Claim the run directory ``out`` for this process.

    A second live process is refused: an advisory ``flock`` on ``out/.lock``, which the kernel
    releases when the process ends, however it ends (even SIGKILL). A run that ends removes the
    file while it still holds the lock; the next claimant re-checks after its ``flock`` that the
    path still names the file it locked, so removing it opens no race. A SIGKILLed run cannot
    remove it: the file stays, but unlocked it is harmless and the next run takes it over.
    ``fresh`` asks for a directory that holds no earlier run (``--resume`` not given; a ``.lock``
    alone is no run); otherwise the half-written temporary files of a killed writer are removed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    handle, locked = _claim(lock, out)
    try:
        if fresh and any(p.name != ".lock" for p in out.iterdir()):
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose "
                             f"another --out")
        for partial in _partials_covered_by(out):
            partial.unlink(missing_ok=True)
        if locked:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield
    finally:
        if locked:  # only a holder removes it: without a lock, another process may hold one
            lock.unlink(missing_ok=True)
        handle.close()


def _partials_covered_by(out: Path) -> list[Path]:
    """The temporary files of cut-short writers in ``out`` and its subfolders, except those
    below a subfolder that holds its own ``.lock``: another run's, live or not, to clean."""
    found = []
    for folder, subfolders, files in os.walk(out):
        subfolders[:] = [d for d in subfolders if not (Path(folder, d) / ".lock").exists()]
        found += [Path(folder, f) for f in files if f.startswith(".") and f.endswith(_PARTIAL)]
    return found


def _claim(lock: Path, out: Path) -> tuple[IO[str], bool]:
    """Open and ``flock`` ``lock``: its handle, and whether it is locked (False where the file
    system has no locks). A live holder is refused with a :class:`ValueError` naming its pid."""
    import fcntl

    while True:
        handle = lock.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _still_names(lock, handle):  # its holder has removed it and is letting go
                handle.close()
                continue
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            who = f" (pid {holder})" if holder else ""
            raise ValueError(f"{out} is in use by another running ncslim process{who}; wait for "
                             f"it to finish or choose another --out") from None
        except OSError as err:  # a file system without locks: run unguarded
            logging.getLogger("ncslim").warning("cannot lock %s (%s); a second run there would "
                                                "not be refused", out, err)
            return handle, False
        if _still_names(lock, handle):
            return handle, True
        # a holder removed the file between our open and our flock: what we hold guards nothing
        handle.close()


def _still_names(path: Path, handle: IO[str]) -> bool:
    """Whether ``path`` still names the file open as ``handle`` (a missing path does not)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
