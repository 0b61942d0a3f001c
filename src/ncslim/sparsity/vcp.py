"""The paper's Bayesian baseline: variational channel pruning (VCP; Zhao et al., CVPR 2019).

Each BN channel's scale becomes a Gaussian random variable, gamma_c ~ N(mu_c, sigma_c^2): mu_c is
the BN weight itself (so checkpoints, pruning and export see an ordinary model), sigma_c lives here
as log sigma_c. Training draws one gamma per channel per step (mu + sigma * eps) and adds to the
mean cross-entropy the KL term of a zero-mean prior whose variance equals the posterior's,
``kl_weight * sum_c mu_c^2 / (2 sigma_c^2)``; evaluation uses gamma = mu. Channels with
|mu_c| <= mu_threshold and sigma_c <= sigma_threshold are pruned; the ratio is an outcome.

What the paper leaves open, and what we chose (docs/results.md lists it too): the KL weight
(default 1 / N_train, from the ELBO), the initial sigma (default 0.01), gamma = mu at evaluation,
no weight decay on log sigma, "<=" at the thresholds (the paper writes "<"; equality has measure 0).

    vcp = ncslim.sparsity.vcp.VariationalScales(model, kl_weight=1 / len(train_set))
    opt = torch.optim.SGD(vcp.param_groups(weight_decay=1e-4), lr=0.1, momentum=0.9)
    loss = F.cross_entropy(model(x), y) + vcp.kl()        # each step
    small, report = ncslim.prune_model(model, threshold=1.0, scores=vcp.scores())
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import register_channel_state
from ..models.scales import LayerFilter, find_scales
from ..util import distributed
from .method import SparsityMethod
from .registry import MethodField, MethodSpec, Stage, register_method

SIGMAS = "vcp_sigma"  # its sigmas in a model and its files (the name older files use)
register_channel_state(SIGMAS)

MU_THRESHOLD = 0.02
SIGMA_THRESHOLD = 0.01
SIGMA_INIT = 0.01


def _sampled_batch_norm(bn: nn.modules.batchnorm._BatchNorm, log_sigma: torch.Tensor,
                        noise: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """``bn``'s forward with gamma = mu + sigma * eps in training (one eps per channel)."""
    if not bn.training:
        return type(bn).forward(bn, x)
    momentum = bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    eps = torch.randn(log_sigma.shape, generator=noise, device=noise.device)
    gamma = bn.weight + log_sigma.exp() * eps.to(bn.weight.device, bn.weight.dtype)
    return F.batch_norm(x, bn.running_mean, bn.running_var, gamma, bn.bias, True,
                        0.0 if momentum is None else momentum, bn.eps)


class VariationalScales(SparsityMethod):
    """Gaussian BN scales for ``model``: installs the sampling, holds sigma, gives the KL term.

    ``kl_weight`` multiplies the summed KL (against the *mean* cross-entropy: 1 / N_train is the
    ELBO's weight). The model's BN layers sample while it trains until :meth:`remove` is called.
    """

    def __init__(self, model: nn.Module, kl_weight: float, sigma_init: float = SIGMA_INIT,
                 layers: LayerFilter = None, seed: int = 0) -> None:
        if not (kl_weight >= 0 and math.isfinite(kl_weight)):
            raise ValueError(f"vcp: kl_weight must be a finite number >= 0, got {kl_weight}")
        if not (sigma_init > 0 and math.isfinite(sigma_init)):
            raise ValueError(f"vcp: sigma_init must be a finite number > 0, got {sigma_init}")
        super().__init__(model)
        self.kl_weight = float(kl_weight)
        scales = find_scales(self.model, layers)
        modules = dict(self.model.named_modules())
        self.names = list(scales)
        self.mus = list(scales.values())
        self.log_sigmas = [nn.Parameter(torch.full_like(mu.detach(), math.log(sigma_init)))
                           for mu in self.mus]
        self._noise = torch.Generator(device=self.mus[0].device)
        self.reseed(seed, 0)
        for name, log_sigma in zip(self.names, self.log_sigmas):
            bn = modules[name]
            bn.forward = partial(_sampled_batch_norm, bn, log_sigma, self._noise)

    def __repr__(self) -> str:
        return (f"VariationalScales(kl_weight={self.kl_weight:g}, {len(self.mus)} layers, "
                f"{sum(m.numel() for m in self.mus)} channels)")

    def reseed(self, seed: int, epoch: int) -> None:
        """The noise of an epoch comes from (seed, epoch): a resumed run draws the same."""
        self._noise.manual_seed(seed * 1_000_003 + epoch + 7)

    # the sparsity-method hooks (ncslim.sparsity)
    def begin_epoch(self, seed: int, epoch: int) -> None:
        self.reseed(seed, epoch)

    def loss_term(self) -> torch.Tensor:
        return self.kl()

    def after_backward(self) -> None:
        self.average_gradients()  # under torchrun: log sigma lives outside DDP's model

    def end_epoch(self) -> dict[str, float]:
        self._leave_sigmas()
        return {"lam": 0.0, "penalty": float(self.penalty_value())}

    def finish(self) -> None:
        """Sampling ends; the sigmas stay on the model."""
        self.remove()
        self._leave_sigmas()

    def _leave_sigmas(self) -> None:
        """Put the sigmas on the model: they travel in every model file (any CNN keeps them as
        an attribute)."""
        if not isinstance(getattr(self.model, "channel_state", None), dict):
            self.model.channel_state = {}
        self.model.channel_state[SIGMAS] = self.sigmas()

    def remove(self) -> None:
        """Stop sampling: the BN layers are plain again (gamma = mu)."""
        modules = dict(self.model.named_modules())
        for name in self.names:
            modules[name].__dict__.pop("forward", None)

    def average_gradients(self) -> None:
        """Average the log sigma gradients over processes (torchrun); nothing in one process."""
        if not distributed.active():
            return
        grads = [s.grad if s.grad is not None else torch.zeros_like(s) for s in self.log_sigmas]
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= distributed.world_size()
        for s, part in zip(self.log_sigmas, flat.split([g.numel() for g in grads])):
            s.grad = part.view_as(s)

    def kl(self) -> torch.Tensor:
        """``kl_weight * sum_c mu_c^2 / (2 sigma_c^2)``, differentiable in mu and log sigma."""
        mu = torch.cat([m.flatten() for m in self.mus]).float()
        log_sigma = torch.cat([s.flatten() for s in self.log_sigmas]).float()
        return self.kl_weight * 0.5 * (mu.square() * torch.exp(-2.0 * log_sigma)).sum()

    def penalty_value(self) -> torch.Tensor:
        with torch.no_grad():
            return self.kl()

    def sigmas(self) -> dict[str, torch.Tensor]:
        return {n: s.detach().exp().clone() for n, s in zip(self.names, self.log_sigmas)}

    def scores(self, mu_threshold: float = MU_THRESHOLD,
               sigma_threshold: float = SIGMA_THRESHOLD) -> dict[str, torch.Tensor]:
        """Per channel ``max(|mu| / mu_threshold, sigma / sigma_threshold)``: pruning with
        ``threshold=1.0`` on these removes exactly the channels VCP's rule removes."""
        return vcp_scores(dict(zip(self.names, self.mus)), self.sigmas(), mu_threshold,
                          sigma_threshold)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The model's parameters with ``weight_decay``; log sigma without (decay would pull
        sigma towards 1)."""
        return [{"params": list(self.model.parameters()), "weight_decay": weight_decay},
                {"params": self.log_sigmas, "weight_decay": 0.0}]

    def state_dict(self) -> dict[str, Any]:
        return {"log_sigma": {n: s.detach().clone() for n, s in zip(self.names, self.log_sigmas)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "log_sigma" not in state:
            raise ValueError("the checkpoint was not trained with --penalty vcp; resume it with "
                             "its own settings (config.json) or choose another --out")
        stored = state["log_sigma"]
        if set(stored) != set(self.names):
            raise ValueError("the checkpoint's VCP sigmas belong to other BN layers")
        with torch.no_grad():
            for name, log_sigma in zip(self.names, self.log_sigmas):
                log_sigma.copy_(stored[name])


def vcp_scores(mus: dict[str, torch.Tensor], sigmas: dict[str, torch.Tensor],
               mu_threshold: float = MU_THRESHOLD,
               sigma_threshold: float = SIGMA_THRESHOLD) -> dict[str, torch.Tensor]:
    """``max(|mu| / mu_threshold, sigma / sigma_threshold)`` per channel of each BN."""
    if not (mu_threshold > 0 and sigma_threshold > 0):
        raise ValueError(f"vcp thresholds must be > 0, got mu {mu_threshold}, "
                         f"sigma {sigma_threshold}")
    return {name: torch.maximum(mu.detach().abs().float() / mu_threshold,
                                sigmas[name].to(mu.device).float() / sigma_threshold)
            for name, mu in mus.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _build(stage: Stage) -> VariationalScales:
    cfg = stage.cfg
    kl_weight = 1.0 / stage.n_train if cfg.vcp_kl_weight is None else cfg.vcp_kl_weight
    return VariationalScales(stage.model, kl_weight, cfg.vcp_sigma_init, seed=cfg.seed)


def rule_scores(model: nn.Module, cfg: Any) -> dict[str, torch.Tensor]:
    """Scores that a threshold of 1 turns into VCP's pruning rule, from the model's sigmas."""
    sigmas = getattr(model, "channel_state", {}).get(SIGMAS)
    if sigmas is None:
        raise ValueError("--penalty vcp prunes by VCP's rule, which needs the sigmas of a model "
                         "trained with --penalty vcp; this model has none (prune it with "
                         "another --penalty, or train it with vcp)")
    return vcp_scores(find_scales(model), sigmas, cfg.vcp_mu, cfg.vcp_sigma)


def _describe(cfg: Any) -> str:
    kl = "1/N" if cfg.vcp_kl_weight is None else f"{cfg.vcp_kl_weight:g}"
    return f"kl={kl} sigma0={cfg.vcp_sigma_init:g}"


register_method(MethodSpec(
    "vcp", "the Bayesian baseline, variational channel pruning", build=_build,
    fields=(
        MethodField("vcp_kl_weight", None, "vcp: weight of the KL term against the mean "
                    "cross-entropy", ("run", "train"),
                    lambda v: v is None or (_number(v) and v >= 0), "a finite number >= 0",
                    type="float | None", unset="1/N_train"),
        MethodField("vcp_sigma_init", 0.01, "vcp: initial sigma of every BN scale",
                    ("run", "train"), lambda v: _number(v) and v > 0, "a number > 0"),
        MethodField("vcp_mu", 0.02, "vcp: prune channels with |mu| <= this and sigma <= "
                    "--vcp-sigma", ("run", "prune"), lambda v: _number(v) and v > 0,
                    "a number > 0"),
        MethodField("vcp_sigma", 0.01, "vcp: the sigma threshold of that rule", ("run", "prune"),
                    lambda v: _number(v) and v > 0, "a number > 0"),
    ),
    no_sync_bn="samples each BN scale itself",
    # its sigmas would restart at --vcp-sigma-init beside the grown mus of a trained model,
    # where the KL term's gradient (mu / sigma^2) throws training into NaN
    no_passes="its sigmas do not survive pruning",
    pruning_scores=rule_scores, rule_label="VCP rule", describe=_describe))
