"""Networks: what they are, how they are stored, and what they cost.

- the reference families, built by name (``build_model("vgg" | "densenet" | "resnet")``) from
  their registry (:mod:`.base`, with the pruning slots that say which layers a BatchNorm
  couples), and networks imported with ``--model`` (:mod:`.imported`, :mod:`.graph`: their
  couplings as Torch-Pruning traces them);
- where the BatchNorm scaling factors are (:mod:`.scales`), memory estimates (:mod:`.memory`);
- model files (:mod:`.files`: save and load, ``weights_only``) and the record of the data and
  the original a model carries (:mod:`.record`); export to ONNX and TorchScript (:mod:`.export`);
- counting parameters and FLOPs, and measuring latency (:mod:`.measure`).

Imports :mod:`ncslim.util` and :mod:`ncslim.data` (a model's record names its data set) only.
"""

from . import densenet, imported, resnet, vgg  # noqa: F401  (each module registers its family)
from .base import PruneSlot, SlimmableNet, TracedNet, build_model, check_arch, model_names

__all__ = ["PruneSlot", "SlimmableNet", "TracedNet", "build_model", "check_arch", "model_names"]
