"""Slim a model you already trained: ``--init FILE`` starts sparsity training from its weights.

    ncslim train --penalty none --epochs 30 --out runs/plain               # train once
    ncslim run --init runs/plain/model.pt --lam auto --ratio 0.5 --lr 0.01 ...  # per budget

``FILE`` is an ncslim model file of the full (unpruned) network: ``model.pt`` of a ``train`` or
``run``, ``best.pt``, or a ``last.pt`` checkpoint. For a ``--model`` network it may also be a
plain ``state_dict`` of your own network (``torch.save(net.state_dict(), FILE)``). The file is
read with ``weights_only=True`` and must fit the network the configuration builds tensor for
tensor; the first tensor that does not is named. Imports :mod:`ncslim.models.files` and the
models only.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models import SlimmableNet
from ..models.files import CHECKPOINT_FORMAT, FORMAT, check_shapes, nonfinite_entry, safe_load

PREFIX = "net."  # where an --model network's own state_dict sits inside ncslim's wrapper


def init_weights(model: SlimmableNet, path: str) -> None:
    """Load the weights of model file ``path`` into ``model`` (a new, full network), or raise a
    one-line ValueError naming the file and the first tensor that does not fit."""
    payload = safe_load(path)
    state = _state_of(payload, path, imported=model.config().get("arch") == "imported")
    bad = nonfinite_entry(state)
    if bad is not None:
        raise ValueError(f"--init {path}: holds NaN or infinite values ({bad}), the trace of a "
                         f"diverged training; train it again with a lower --lr")
    own = model.state_dict()  # names only: the shapes are checked against it below
    if not any(name in own for name in state) and any(PREFIX + name in own for name in state):
        state = {PREFIX + name: tensor for name, tensor in state.items()}  # a plain state dict
    try:
        check_shapes(model, state, against="the network")
    except ValueError as err:
        raise ValueError(f"--init {path} does not fit this network: {err}; train with the "
                         f"--arch, --depth and --width (or --model) and the dataset it was made "
                         f"with") from None
    model.load_state_dict(state)


def _state_of(payload: Any, path: str, imported: bool) -> dict[str, torch.Tensor]:
    """The weights a file holds: an ncslim model (or checkpoint), or a plain state dict."""
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        payload = payload.get("model")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("pruned_from") is not None:
            raise ValueError(f"--init {path} is a pruned model; start from the full model it was "
                             f"pruned from (RUN/train/model.pt), or fine-tune this one with "
                             f"ncslim finetune")
        payload = payload.get("state_dict")
    elif not imported:
        raise ValueError(f"--init {path}: not an ncslim model file (a plain state_dict is taken "
                         f"for --model networks only; save an --arch model with "
                         f"ncslim.save_model)")
    if not isinstance(payload, dict) or not payload or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in payload.items()):
        raise ValueError(f"--init {path}: holds no state_dict (a mapping of names to tensors)")
    return payload

