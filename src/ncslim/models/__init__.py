"""The reference architectures, built by name: ``build_model("vgg" | "densenet" | "resnet")``."""

from . import densenet, imported, resnet, vgg  # noqa: F401  (each module registers its family)
from .base import PruneSlot, SlimmableNet, TracedNet, build_model, check_arch, model_names

__all__ = ["PruneSlot", "SlimmableNet", "TracedNet", "build_model", "check_arch", "model_names"]
