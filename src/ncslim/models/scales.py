"""Where a network's BatchNorm scaling factors are: the model inside its wrappers
(DistributedDataParallel, DataParallel, torch.compile) and the affine BatchNorm weights a
penalty regularises and the cut ranks. Imports nothing of ncslim."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

__all__ = ["LayerFilter", "find_scales", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model


LayerFilter = Iterable[str] | Callable[[str, nn.Module], bool] | None


def find_scales(model: nn.Module, layers: LayerFilter = None) -> dict[str, nn.Parameter]:
    """The scaling factors (BN weights) to regularise, keyed by their BN's module name.

    ``layers`` is None (every affine BatchNorm), a list of BN module names, or a predicate
    ``(name, module) -> bool`` over the BatchNorm modules.
    """
    bns = {name: m for name, m in unwrap(model).named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}
    if layers is None:
        chosen = bns
    elif callable(layers):
        chosen = {name: m for name, m in bns.items() if layers(name, m)}
    else:
        names = list(layers)
        unknown = [n for n in names if n not in bns]
        if unknown:
            raise ValueError(f"layers {unknown} are not affine BatchNorm layers of the model; "
                             f"BatchNorm layers are: {', '.join(bns) or 'none'}")
        chosen = {n: bns[n] for n in names}
    if not chosen:
        raise ValueError("the model has no BatchNorm scaling factors to regularise")
    return {name: m.weight for name, m in chosen.items()}
