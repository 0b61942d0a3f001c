"""The callback itself (see :mod:`ncslim.lightning`)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import SlimmableNet, TracedNet
from ..models.scales import LayerFilter, find_scales, unwrap
from ..prune import PruneReport
from ..prune.rule import PruneRule
from ..prune.selection import DEFAULT_MIN_CHANNELS, DEFAULT_RANKING, resolve_ranking
from ..sparsity import SparsityMethod
from ..sparsity.controller import START_LAM, LambdaController
from ..sparsity.penalties import make_penalty
from ..sparsity.regularizer import SparsityRegularizer
from ..util.files import atomic_write_text
from .checks import check_args, check_max_layer_ratio, gamma_group, gamma_shares

try:
    from lightning.pytorch import Callback
except ImportError:  # the module still imports (docs, doctest collection); construction says why
    Callback = object

log = logging.getLogger("ncslim")

SEED = 0  # begin_epoch's seed: penalties draw nothing, so one constant keeps resumes exact


class SlimmingCallback(Callback):  # type: ignore[misc,valid-type]
    """Train with ``penalty`` on the BN scaling factors of ``network``; prune it when the fit ends.

    ``penalty``, ``lam``, ``mode`` and the penalty's parameters (``a=``, ``p=``, ...) are those of
    ``ncslim run``; ``lam="auto"`` is the lambda controller (:mod:`ncslim.sparsity.controller`),
    which needs a ``ratio``, ``target_flops`` or ``target_params`` and the Trainer's ``max_epochs``
    or ``max_steps`` (its ramp spans the fit). One of ``ratio``, ``threshold``, ``target_flops``,
    ``target_params`` is the pruning rule applied in ``on_fit_end``; without one nothing is pruned.
    ``min_channels``, ``max_layer_ratio``, ``round_to``, ``ranking``, ``compensate`` and
    ``ignored_layers`` go to :func:`ncslim.prune_model`; under ``lam="auto"`` the controller aims
    within ``min_channels`` and ``max_layer_ratio``, ranking as the cut does (``auto``: ``layer``
    for ``target_flops``, else ``global``).

    ``network`` names the submodule to slim (``"net"``, ``"backbone.body"``); by default the
    LightningModule itself. A model that is not an ncslim architecture is pruned through
    Torch-Pruning (``pip install 'ncslim[generic]'``), traced on ``example_inputs`` (default:
    the LightningModule's ``example_input_array``). After the fit, :attr:`pruned` holds the
    smaller copy and :attr:`report` its :class:`~ncslim.PruneReport`; the trained module is left
    whole. ``save_to`` (a folder) receives ``prune.json`` and the pruned model: ``pruned.pt``
    (``ncslim.load_model``) for ncslim architectures, else ``pruned.ts`` (TorchScript).

    The optimizer is yours (``configure_optimizers``): it must train the BN weights, and in
    proximal mode all in one parameter group, whose learning rate the proximal step uses.
    """

    def __init__(
        self,
        penalty: str = "l1",
        lam: float | str = 1e-4,
        mode: str = "subgradient",
        *,
        ratio: float | None = None,
        threshold: float | None = None,
        target_flops: float | None = None,
        target_params: float | None = None,
        min_channels: int = DEFAULT_MIN_CHANNELS,
        max_layer_ratio: float | None = None,
        round_to: int = 1,
        ranking: str = DEFAULT_RANKING,
        compensate: bool = False,
        network: str | None = None,
        layers: LayerFilter = None,
        example_inputs: torch.Tensor | None = None,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        save_to: str | os.PathLike | None = None,
        **params: float,
    ) -> None:
        if Callback is object:
            raise ImportError("SlimmingCallback needs PyTorch Lightning: "
                              "pip install 'ncslim[lightning]'")
        super().__init__()
        given = {"ratio": ratio, "threshold": threshold, "target_flops": target_flops,
                 "target_params": target_params}
        rules = {k: v for k, v in given.items() if v is not None}
        check_args(lam, mode, rules, min_channels, round_to, network, example_inputs,
                    compensate, save_to)
        check_max_layer_ratio(max_layer_ratio, rules)
        self.penalty_name, self.params, self.lam, self.mode = penalty, params, lam, mode
        # built now to validate the name and parameters; each fit builds its own
        make_penalty(penalty, START_LAM if lam == "auto" else lam, **params)
        self.rule = None if not rules else PruneRule(
            *next(iter(rules.items())), min_channels=min_channels, round_to=round_to,
            max_layer_ratio=max_layer_ratio, ranking=ranking, compensate=compensate)
        # the ranking that applies: the rule's own, resolved by its measure (checked either way)
        self.ranking = self.rule.applied_ranking if self.rule else resolve_ranking(ranking)
        self.network, self.layers, self.example_inputs = network, layers, example_inputs
        self.ignored_layers = ignored_layers
        self.save_to = None if save_to is None else Path(save_to)
        self.method: SparsityMethod | None = None
        self.pruned: nn.Module | None = None
        self.report: PruneReport | None = None
        self._restored: dict[str, Any] | None = None  # checkpoint state waiting for the method
        self._optimizer: torch.optim.Optimizer | None = None
        self._group = 0  # the optimizer's parameter group that holds the gammas
        self._lr: float | None = None  # the lr of the step taken in the current batch, if any

    def __repr__(self) -> str:
        rule = "no pruning" if self.rule is None else f"{self.rule.kind}={self.rule.value}"
        return (f"SlimmingCallback({self.penalty_name!r}, lam={self.lam!r}, mode={self.mode!r}, "
                f"{rule})")

    def settings(self) -> dict[str, Any]:
        """What shapes the training (a checkpoint is resumed only with the same)."""
        return {"penalty": self.penalty_name, "params": dict(self.params), "lam": self.lam,
                "mode": self.mode,
                "target": [self.rule.kind, self.rule.value] if self.lam == "auto" else None}

    # -- where the network and its inputs come from ------------------------------------------

    def network_of(self, pl_module: nn.Module) -> nn.Module:
        """The module this callback slims: ``network`` inside ``pl_module``, or ``pl_module``."""
        if self.network is None:
            return unwrap(pl_module)
        try:
            return unwrap(pl_module.get_submodule(self.network))
        except AttributeError:
            children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
            raise ValueError(f"network={self.network!r} is not a submodule of "
                             f"{type(pl_module).__name__}; its submodules are: {children}"
                             ) from None

    def _inputs(self, pl_module: nn.Module, network: nn.Module) -> torch.Tensor | None:
        """The batch pruning traces the network on, on the network's device (None: not needed
        or not given)."""
        inputs = self.example_inputs
        if inputs is None:
            inputs = getattr(pl_module, "example_input_array", None)
            if inputs is not None and not isinstance(inputs, torch.Tensor):
                raise ValueError(f"{type(pl_module).__name__}.example_input_array is a "
                                 f"{type(inputs).__name__}; pruning traces the network on one "
                                 f"tensor batch: pass SlimmingCallback(example_inputs=...)")
        if inputs is None:
            return None
        reference = next(network.parameters())
        return inputs.to(reference.device)

    # -- Lightning hooks ----------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Check everything the fit will need before it trains a step."""
        if stage != "fit":
            return
        network = self.network_of(pl_module)
        find_scales(network, self.layers)  # ValueError: no BatchNorm, or unknown layers
        ours = isinstance(network, SlimmableNet)
        if self.rule is not None and self.rule.compensate and not ours:
            raise ValueError(f"compensate=True works for ncslim architectures only, not "
                             f"{type(network).__name__}; leave it out")
        if self.rule is None or ours:
            return
        inputs = self._inputs(pl_module, network)
        if inputs is None:
            raise ValueError(f"pruning {type(network).__name__} traces it on a batch: pass "
                             f"SlimmingCallback(example_inputs=...) or set "
                             f"{type(pl_module).__name__}.example_input_array")
        if self.save_to is not None and inputs.dim() != 4:
            raise ValueError(f"save_to writes the pruned {type(network).__name__} as TorchScript "
                             f"traced on image batches (N, C, H, W); example_inputs has shape "
                             f"{tuple(inputs.shape)}: leave save_to out and save it yourself")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        network = self.network_of(pl_module)
        self.method = self._build(trainer, pl_module, network)
        self._optimizer, self._group = gamma_group(trainer.optimizers, self._regularizer(),
                                                    self.mode)
        self._lr = None
        if self._restored is not None:
            self.method.load_state_dict(self._restored["method"])
            self._restored = None
        log.info("sparsity training with %r", self.method)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.method is None or getattr(optimizer, "optimizer", optimizer) is not self._optimizer:
            return
        self._lr = float(self._optimizer.param_groups[self._group]["lr"])  # host value, no sync
        self.method.after_backward()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.method is not None and self._lr is not None:  # this batch stepped
            self.method.after_step(self._lr)
            self._lr = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.method is not None:
            self.method.begin_epoch(SEED, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.method is None:
            return
        metrics = {**self.method.end_epoch(), **gamma_shares(self._regularizer())}
        pl_module.log_dict({f"slim/{k}": float(v) for k, v in metrics.items()},
                           on_step=False, on_epoch=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.method is not None:
            self.method.finish()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.rule is None:
            return
        network = self.network_of(pl_module)
        inputs = self._inputs(pl_module, network)
        self.pruned, self.report = self._prune(network, inputs)
        log.info("pruned %s:\n%s", type(network).__name__, self.report)
        if self.save_to is not None and trainer.is_global_zero:
            self._save(self.pruned, self.report, inputs)

    def state_dict(self) -> dict[str, Any]:
        if self.method is None:  # not trained yet in this process: what a checkpoint gave
            return dict(self._restored or {})
        return {"settings": self.settings(), "method": self.method.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("settings")
        if saved is not None and saved != self.settings():
            raise ValueError(f"the checkpoint was trained by SlimmingCallback with {saved}, this "
                             f"one has {self.settings()}: resume with the same settings")
        if "method" not in state_dict:  # saved before this callback trained a step
            return
        self._restored = dict(state_dict)
        if self.method is not None:  # Lightning restored after on_train_start
            self.method.load_state_dict(state_dict["method"])
            self._restored = None

    # -- the method and the pruning ------------------------------------------------------------

    def _regularizer(self) -> SparsityRegularizer:
        method = self.method
        return method.reg if isinstance(method, LambdaController) else method  # type: ignore

    def _build(self, trainer: Any, pl_module: Any, network: nn.Module) -> SparsityMethod:
        auto = self.lam == "auto"
        penalty = make_penalty(self.penalty_name, START_LAM if auto else float(self.lam),
                               **self.params)
        regularizer = SparsityRegularizer(network, penalty, self.mode, layers=self.layers)
        if not auto:
            return regularizer
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError("lam='auto' ramps its target over the whole fit: give the Trainer "
                             "max_epochs or max_steps")
        rule: PruneRule = self.rule  # type: ignore[assignment]
        target: Any = rule.value
        inputs = self._inputs(pl_module, network)
        if rule.budget is not None:  # the share of channels pruning to it removes now

            def target(model: nn.Module) -> float:
                return self._prune(model, inputs, compensate=False)[1].removed_fraction

        units = None  # coupled channels, cut through Torch-Pruning's graph: aim at its groups
        traced = not isinstance(network, SlimmableNet) or isinstance(network, TracedNet)
        if traced and inputs is not None and not self.ignored_layers and self.layers is None:
            from ..prune.generic import channel_groups

            units = channel_groups(network, inputs[:1], regularizer.names)
        return LambdaController(regularizer, target, total_steps=int(steps),
                                min_channels=rule.min_channels, units=units,
                                max_layer_ratio=rule.max_layer_ratio,
                                ranking=rule.applied_ranking)

    def _prune(self, network: nn.Module, inputs: torch.Tensor | None,
               compensate: bool | None = None) -> tuple[nn.Module, PruneReport]:
        return self.rule.cut(network, compensate=compensate,  # type: ignore[union-attr]
                             example_inputs=inputs, ignored_layers=self.ignored_layers)

    def _save(self, small: nn.Module, report: PruneReport, inputs: torch.Tensor | None) -> None:
        from ..models.export import export_model
        from ..models.files import save_model

        folder = self.save_to
        folder.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        atomic_write_text(folder / "prune.json", json.dumps(report.to_dict(), indent=2) + "\n")
        if isinstance(small, SlimmableNet):
            save_model(small, folder / "pruned.pt")
        else:
            export_model(small, folder / "pruned.ts", format="torchscript",
                         input_shape=tuple(inputs[:1].shape))  # type: ignore[index]
        log.info("wrote the pruned model and prune.json to %s", folder)
