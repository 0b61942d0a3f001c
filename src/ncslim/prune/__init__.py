"""Pruning: which channels go, and a smaller dense network without them.

- :mod:`.selection`: the one channel rule (rank the scores, the floor, the cap, rounding),
  shared by the cut, the budget search and the lambda controller's aim;
- :mod:`.cut`: :func:`prune_model`, the physical cut of ncslim's families (along their
  :class:`~ncslim.models.PruneSlot` couplings) and of any other CNN (:mod:`.generic`, through
  Torch-Pruning's dependency graph);
- :mod:`.compensation`: the removed channels' mean output folded into their readers;
- :mod:`.budget`: the ratio that meets a FLOPs or parameter budget;
- :mod:`.costs`: what removing a channel saves, for cost-weighted budgets;
- :mod:`.report`: what one pruning did (:class:`PruneReport`).

Imports :mod:`ncslim.util` and :mod:`ncslim.models` only.
"""

from .budget import MEASURES, prune_to_budget, prune_to_flops
from .cut import prune_model
from .report import LayerReport, PruneReport, inherit_record, pruning_report
from .selection import DEFAULT_MIN_CHANNELS, DEFAULT_RANKING, RANKINGS

__all__ = ["DEFAULT_MIN_CHANNELS", "DEFAULT_RANKING", "MEASURES", "RANKINGS", "LayerReport",
           "PruneReport", "inherit_record", "prune_model", "prune_to_budget", "prune_to_flops",
           "pruning_report"]
