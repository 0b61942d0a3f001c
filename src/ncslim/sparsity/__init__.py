"""Sparsity: what training does to the BatchNorm scaling factors.

- :mod:`.method`: the one protocol of sparsity methods (:class:`SparsityMethod`), the hooks a
  training loop calls whatever the method;
- :mod:`.penalties`: the penalties (l1, lp, TL1, MCP, SCAD), their registry and their exact
  proximal steps;
- :mod:`.regularizer`: a penalty on the scaling factors, in the loop (subgradient or proximal);
- :mod:`.controller`: ``--lam auto``, lambda found while training for a pruning target;
- :mod:`.vcp`: the Bayesian baseline (variational channel pruning);
- :mod:`.registry`: the methods by name (``none``, the penalties: :mod:`.penalized`, ``vcp``),
  read by the config, the run, the cut, sweeps and reports.

Imports :mod:`ncslim.util`, :mod:`ncslim.models` and :mod:`ncslim.prune` only.
"""

from ..models.scales import unwrap
from . import penalized, vcp  # noqa: F401  (each registers its methods, in this order)
from .method import SparsityMethod

__all__ = ["SparsityMethod", "unwrap"]
