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

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..util.escape import first_line
from ..util.files import atomic_path as atomic_path  # re-exported: older callers import it here
from ..util.files import atomic_save
from ..util.files import atomic_write_text as atomic_write_text  # re-exported, as atomic_path
from ..util.liverun import run_lock as run_lock  # re-exported: its documented home
from ..util.regular import NotAFileError, check_regular, open_regular
from ..util.regular import not_a_file as not_a_file  # re-exported: older callers import it here
from . import SlimmableNet, build_model
from .base import CHANNEL_STATES
from .imported import require_consent
from .record import check_pruned_from, check_trained_on
from .scales import unwrap

FORMAT = "ncslim.model"
CHECKPOINT_FORMAT = "ncslim.checkpoint"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A file that is not a readable ncslim model (corrupt, truncated, or something else)."""


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; unreadable files raise :class:`ModelFileError`."""
    path = Path(path)
    check_regular(path)
    if isinstance(map_location, (str, torch.device)):
        target = torch.device(map_location)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{path}: cannot be loaded onto {target}: no CUDA GPU is available "
                             f"here; load it onto the cpu")
    try:
        with open_regular(path) as f:  # never a FIFO or device swapped in since the check
            return torch.load(f, map_location=map_location, weights_only=True)
    except (FileNotFoundError, NotAFileError):
        raise
    except Exception as err:  # noqa: BLE001  anything a damaged pickle makes the unpickler raise
        # (KeyError, IndexError, AttributeError, ... besides UnpicklingError): an unreadable file
        reason = first_line(err)
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
    for name, state in model.channel_state.items():
        if name not in CHANNEL_STATES or name in payload:
            raise ValueError(f"the model's channel state {name!r} is no registered state "
                             f"(ncslim.models.base.register_channel_state)")
        payload[name] = {k: v.detach().cpu() for k, v in state.items()}
    return payload


def model_from_payload(payload: Any, source: str, trust_code: Any = None) -> SlimmableNet:
    """Rebuild a model from the dict that :func:`model_payload` made (``source`` names it).

    A training checkpoint (``last.pt``) holds such a dict under ``"model"``; it is accepted too.
    A ``--model`` network's spec names a builder: its module is imported only if ``trust_code``
    names it (see :mod:`ncslim.models.imported`), else a :class:`ModelFileError` says so.
    """
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        payload = payload.get("model")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{source}: not an ncslim model file (save one with "
                             f"ncslim.save_model)")
    if payload.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{source}: model format version {payload.get('version')} is not "
                             f"supported (this ncslim reads version {FORMAT_VERSION})")
    _consent(payload.get("config"), source, trust_code)
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
        model.pruned_from = check_pruned_from(_pruned_from(payload.get("pruned_from")), model)
        model.channel_state = {name: _channel_state(model, name, payload[name])
                               for name in CHANNEL_STATES if payload.get(name) is not None}
        model.trained_on = check_trained_on(payload.get("trained_on"), model.num_classes,
                                            model.input_size)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        first = first_line(err)
        raise ModelFileError(f"{source}: the stored architecture and weights do not fit "
                             f"together: {first}") from err
    return model


def _consent(config: Any, source: str, trust_code: Any) -> None:
    """Refuse a spec naming a builder module that ``trust_code`` does not name, before anything
    is imported."""
    if isinstance(config, dict) and config.get("arch") == "imported":
        channels = config.get("channels")
        try:
            require_consent(channels.get("builder") if isinstance(channels, dict) else None,
                            trust_code, source)
        except ValueError as err:
            raise ModelFileError(str(err)) from None


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
    # a view (expand, stride 0) promises more elements than a file holds: a tiny file must not
    # make ncslim build, and fill, a network of gigabytes
    claimed = sum(t.numel() * t.element_size() for t in stored.values())
    held = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in stored.values() if t.numel()}.values())
    if claimed > held:
        raise ValueError(f"its tensors claim {claimed:,} bytes but hold {held:,}: they are "
                         f"expanded views, not weights")


def _pruned_from(record: Any) -> dict[str, int] | None:
    if record is None:
        return None
    if not isinstance(record, dict) or set(record) != {"params", "flops", "channels"} or not all(
            isinstance(v, int) and v > 0 for v in record.values()):
        raise ValueError(f"'pruned_from' must hold positive params, flops and channels counts, "
                         f"got {record!r}")
    return {k: int(v) for k, v in record.items()}


def _channel_state(model: SlimmableNet, name: str, record: Any) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    if not isinstance(record, dict) or not all(
            isinstance(v, torch.Tensor) and k in modules
            and getattr(modules[k], "weight", None) is not None
            and v.shape == modules[k].weight.shape for k, v in record.items()):
        raise ValueError(f"{name!r} must map BN layer names to tensors of their shape")
    return dict(record)


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's architecture spec and weights to ``path`` (atomically)."""
    atomic_save(model_payload(model), path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               trust_code: str | Iterable[str] | None = None) -> SlimmableNet:
    """Rebuild a model saved by :func:`save_model`, full or pruned, in evaluation mode.

    A file of a ``--model`` network names the module that builds it; loading it imports that
    module only if ``trust_code`` names it (or a package holding it), like
    ``trust_remote_code``: ``load_model("final.pt", trust_code="mymodels")``. Without that
    consent it raises :class:`ModelFileError` naming the module; nothing is imported.
    """
    return model_from_payload(safe_load(path, device), str(path),
                              trust_code).to(device).eval()
