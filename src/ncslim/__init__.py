"""ncslim: network slimming with nonconvex regularization.

Train with a sparsity penalty on the BatchNorm scaling factors, prune the weak channels
physically, fine-tune, and measure what was gained.
"""

from .models import PruneSlot, SlimmableNet, build_model, model_names
from .models.export import export_model
from .models.files import ModelFileError, load_model, save_model
from .models.measure import count_flops, count_params
from .prune import PruneReport, prune_model
from .sparsity import SparsityMethod
from .sparsity.controller import LambdaController
from .sparsity.penalties import PENALTIES, Penalty, make_penalty
from .sparsity.regularizer import SparsityRegularizer
from .util.version import __version__ as __version__

__all__ = [
    "PENALTIES",
    "LambdaController",
    "ModelFileError",
    "Penalty",
    "PruneReport",
    "PruneSlot",
    "SlimmableNet",
    "SparsityMethod",
    "SparsityRegularizer",
    "build_model",
    "count_flops",
    "count_params",
    "export_model",
    "load_model",
    "make_penalty",
    "model_names",
    "prune_model",
    "save_model",
]
