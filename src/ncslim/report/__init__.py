"""What a run leaves for people to read: the results table of a folder of runs and its summary
(``make``), the comparison and one-run figures (``figures``, ``runfigures``, ``figurebase``),
the reading of a run's records (``rundata``), the results table printed after a run
(``summary``) and TensorBoard (``tensorboard_log``). It may import the model, data, sparsity
and configuration layers and ``util``, never the run layer or the CLI (docs/architecture.md).
"""

from .make import collect, report, summary_table

__all__ = ["collect", "report", "summary_table"]
