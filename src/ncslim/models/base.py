"""What every prunable ncslim model shares: the registry, the pruning slots, channel selection.

The architecture of a model is *data*: its ``channels`` spec (plain lists, ints and dicts). Pruning
changes nothing but the spec; a model is rebuilt from ``(arch, num_classes, in_channels, channels)``
and its state dict, so a checkpoint never holds a pickled class.

    >>> from ncslim.models import build_model
    >>> model = build_model("vgg", num_classes=10, width=0.25)
    >>> [slot.bn for slot in model.prune_slots()][:2]
    ['features.1', 'features.4']
"""

from __future__ import annotations

import abc
import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

BN_INIT_SCALE = 0.5  # the reference code starts every BN gamma at 0.5

_REGISTRY: dict[str, type[SlimmableNet]] = {}
# sane limits: a typo or a hostile file must not build a network of terabytes
MAX_DEPTH, MAX_WIDTH, MAX_CLASSES, MAX_CHANNELS = 2000, 16.0, 100_000, 4096
MAX_LAYER_CHANNELS = 65_536
MAX_INPUT_SIZE = 4096
# what a sparsity method may leave on a model for its files (SlimmableNet.channel_state): each
# name registered by its method (ncslim.sparsity.vcp: "vcp_sigma"), stored under that name
CHANNEL_STATES: list[str] = []
DEFAULT_INPUT_SIZE = 32  # CIFAR's; files written before sizes were recorded hold this




def register_channel_state(name: str) -> None:
    """Let model files carry the per-channel state ``name`` (read back into
    ``model.channel_state[name]``); a name already registered stays as it is."""
    if name not in CHANNEL_STATES:
        CHANNEL_STATES.append(name)
@dataclass(frozen=True)
class PruneSlot:
    """One prunable group of channels, scored by the gammas of one BatchNorm.

    ``producer`` is the conv whose output channels these are; ``None`` means the BN sits on a
    stream that other layers also read (pre-activation nets), so the stream keeps its width and a
    channel selection in front of the BN feeds the surviving channels to the consumers only.
    ``fold`` says where the constant output of a removed channel goes when pruning compensates:
    the name of a BN whose running mean absorbs it, or ``None`` for the consumer's own bias.
    """

    bn: str
    producer: str | None
    consumers: tuple[str, ...]
    fold: str | None = None


class ChannelSelect(nn.Module):
    """Gathers the channels ``index`` of its input (dim 1); the identity when ``index`` is None."""

    def __init__(self, index: list[int] | None = None) -> None:
        super().__init__()
        self.register_buffer(
            "index", None if index is None else torch.tensor(index, dtype=torch.long),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return x
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last):
            # index_select would return NCHW at ~3x the cost; gathering along the last dim of the
            # NHWC view keeps channels-last (benchmarks/channel_select.py)
            return x.permute(0, 2, 3, 1)[..., self.index].permute(0, 3, 1, 2)
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return "all" if self.index is None else f"{self.index.numel()} channels"


class SlimmableNet(nn.Module, abc.ABC):
    """Base of the reference families: the spec in, the pruning slots out.

    Subclasses set ``arch``, build themselves from ``channels`` and implement
    :meth:`prune_slots` and :meth:`channels_after` (the spec once slots keep fewer channels).
    """

    arch: ClassVar[str]
    listed: ClassVar[bool] = True  # a choice of --arch
    # (width, depth) -> the channel spec of the full network; raises ValueError on bad values
    default_channels: ClassVar[Callable[[float, int | None], Any]]

    def __init__(self, num_classes: int, in_channels: int, channels: Any,
                 input_size: int = DEFAULT_INPUT_SIZE) -> None:
        super().__init__()
        if isinstance(input_size, bool) or not isinstance(input_size, int) or not (
                1 <= input_size <= MAX_INPUT_SIZE):
            raise ValueError(f"input_size must be an integer in [1, {MAX_INPUT_SIZE}], "
                             f"got {input_size!r}")
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
        if not 1 <= in_channels <= MAX_CHANNELS:
            raise ValueError(f"in_channels must be in [1, {MAX_CHANNELS}], got {in_channels}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.channels = channels
        self.input_size = input_size  # images are input_size x input_size (CIFAR: 32)
        # set by pruning: the full model's size {"params", "flops", "channels"}; None when full
        self.pruned_from: dict[str, int] | None = None
        # set by training: the data it saw {"dataset", "limit_train", "limit_test", "svhn_extra"}
        self.trained_on: dict[str, Any] | None = None
        # set by a sparsity method: per-channel state that travels in the model's files, by the
        # name its method registered (CHANNEL_STATES), each keyed by BN name
        self.channel_state: dict[str, dict[str, torch.Tensor]] = {}

    @abc.abstractmethod
    def prune_slots(self) -> list[PruneSlot]:
        """The prunable channel groups, in network order."""

    @abc.abstractmethod
    def channels_after(self, keep: dict[str, list[int]], stream_bias: bool) -> Any:
        """The spec of this model once each slot (keyed by its BN name) keeps ``keep[bn]``.

        ``stream_bias`` asks for a bias on the convs that write to a shared stream, where
        pruning with compensation folds the constant output of removed channels.
        """

    def compact(self) -> SlimmableNet:
        """The same function with channels that nothing reads removed (``self`` if none)."""
        return self

    @staticmethod
    def recorded_config(config: Any) -> Any:
        """A model file's ``config`` as :meth:`config` gives it today: one written before
        input sizes were recorded is for 32x32 images."""
        if isinstance(config, dict) and "input_size" not in config:
            return {**config, "input_size": DEFAULT_INPUT_SIZE}
        return config

    def title(self) -> str:
        """The architecture in a few words, for people."""
        return self.arch

    def config(self) -> dict[str, Any]:
        """Everything :func:`build_model` needs to rebuild this architecture."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "channels": self.channels,
            "input_size": self.input_size,
        }

    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.input_size, self.input_size)


class TracedNet(SlimmableNet):
    """A family pruned through Torch-Pruning's traced graph (:mod:`ncslim.prune.generic`) instead of
    prune slots: its spec records each pruning (:meth:`record_pruning`) and rebuilds from it."""

    def prune_slots(self) -> list[PruneSlot]:
        return []  # the traced graph finds the coupled layers

    def channels_after(self, keep: dict[str, list[int]], stream_bias: bool) -> Any:
        return self.channels  # no slot: a slot pruning keeps the spec as it is

    @abc.abstractmethod
    def record_pruning(self, kept: list[tuple[str, int]]) -> None:
        """Add one traced pruning to the spec: each pruned layer of ``self`` and the output
        channels it kept."""


def downsampled(arch: str, input_size: int, halvings: int, ceil: bool = False) -> int:
    """The side of the last feature map after ``halvings`` stride-2 steps (rounding down, or
    up with ``ceil``), which the final pooling averages whole."""
    if input_size < 2**halvings:
        raise ValueError(f"{arch}: input_size {input_size} is too small for its {halvings} "
                         f"downsamplings; it needs at least {2**halvings}")
    size = input_size
    for _ in range(halvings):
        size = (size + 1) // 2 if ceil else size // 2
    return size


def init_weights(model: nn.Module) -> None:
    """The reference initialisation: He-normal convs, gamma 0.5 / beta 0, small linear weights.
    A network on the meta device (shapes only) has no values to set: it is left as it is
    (``normal_`` there would import torch's reference kernels, ~1 s)."""
    first = next(model.parameters(), None)
    if first is not None and first.is_meta:
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.constant_(module.weight, BN_INIT_SCALE)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


def scaled(count: int, width: float) -> int:
    """A channel count times the width multiplier, never below 1."""
    return max(1, int(round(count * width)))


def check_counts(arch: str, channels: list[int], layers: int) -> None:
    """A channel spec within sane limits: a hostile or broken file must not make ncslim build
    (or even describe) a network of terabytes."""
    if layers > MAX_DEPTH:
        raise ValueError(f"{arch} channels: {layers:,} layers, more than {MAX_DEPTH}")
    widest = max(channels, default=0)
    if widest > MAX_LAYER_CHANNELS:
        raise ValueError(f"{arch} channels: a layer of {widest:,} channels, more than "
                         f"{MAX_LAYER_CHANNELS:,}")


def check_width(width: float) -> None:
    if not width > 0 or width != width or width == float("inf"):
        raise ValueError(f"width must be a positive finite number, got {width}")


def check_arch(name: str, depth: int | None, width: float) -> None:
    """Raise ValueError unless ``build_model(name, depth=depth, width=width)`` would build (the
    channel spec only: no module is made)."""
    if depth is not None and not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be an integer in [1, {MAX_DEPTH}], got {depth}")
    if not width <= MAX_WIDTH:
        raise ValueError(f"width must be at most {MAX_WIDTH}, got {width}")
    _lookup(name).default_channels(width, depth)
    _fits(name, depth, width)


@functools.lru_cache(maxsize=64)
def _fits(name: str, depth: int | None, width: float) -> None:
    """:func:`_check_fits` of the default network (10 classes, 3 channels; cached: a sweep
    checks the same architecture for every point)."""
    with torch.device("meta"):
        _check_fits(_lookup(name)(num_classes=10, in_channels=3, width=width, depth=depth,
                                  channels=None))


def register_model(cls: type[SlimmableNet]) -> type[SlimmableNet]:
    _REGISTRY[cls.arch] = cls
    return cls


def model_names() -> list[str]:
    """The families ``--arch`` chooses from."""
    return sorted(name for name, cls in _REGISTRY.items() if cls.listed)


def _lookup(name: str) -> type[SlimmableNet]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(f"unknown architecture {name!r}{hint}; known: {', '.join(model_names())}")
    return _REGISTRY[name]


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    depth: int | None = None,
    channels: Any = None,
    input_size: int = 32,
    check_fits: bool = True,
) -> SlimmableNet:
    """Build a reference architecture by name: ``vgg``, ``densenet`` or ``resnet``.

    ``channels`` (a spec from :meth:`SlimmableNet.config`) rebuilds an exact, possibly pruned,
    architecture; otherwise ``width`` and ``depth`` define the default one. ``input_size`` is
    the side of the square images it takes (the final pooling averages the last feature map).
    ``check_fits`` first builds it on the meta device and refuses one too large for the memory
    available (pruning, whose spec is a part of a network that exists, skips it).
    """
    cls = _lookup(name)
    builder: Callable[..., SlimmableNet] = cls
    options = dict(num_classes=num_classes, in_channels=in_channels, width=width, depth=depth,
                   channels=channels, input_size=input_size)
    if check_fits and torch.get_default_device().type != "meta":  # counted with no storage
        with torch.device("meta"):
            _check_fits(builder(**options))
    return builder(**options)


def _check_fits(skeleton: SlimmableNet) -> None:
    """Refuse a network (built on the meta device) too large for the memory available."""
    from .memory import check_memory, tensor_bytes

    params = sum(p.numel() for p in skeleton.parameters())
    check_memory(f"{skeleton.arch}: a network of {params:,} parameters", tensor_bytes(skeleton),
                 "choose a smaller --width or --depth (or a smaller spec)")
