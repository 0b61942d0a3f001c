"""The fields of a run's configuration: one typed dataclass (:class:`Config`), each field with
its default, its help (the ``--help`` of its flag), the commands that take it and its choices
(read from their registries); and what a config derives: the prune rule, the penalty's
parameters, compensation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from ..prune.rule import KINDS, PruneRule
from ..prune.selection import DEFAULT_MIN_CHANNELS
from ..sparsity.penalty_registry import (
    param_default,
    param_help,
    param_unset,
    resolve_params,
)
from ..sparsity.registry import method_fields
from .checks import AUTO, check_config
from .commands import CONFIG_COMMANDS, TRAINING_COMMANDS

PRESET_DIR = Path(__file__).parent.parent / "configs"
DEFAULT_PRESET = "demo"  # what a command uses when --config is not given
MAX_TOML_BYTES = 1 << 20  # a preset or sweep file is a few KB
COMMANDS = CONFIG_COMMANDS  # the commands that take a configuration (the command table)
RUN_TRAIN = ("run", "train")
FITS = TRAINING_COMMANDS  # the commands that train
# learning-rate schedules (ncslim.run.steps.lr_at); constant: the classic fine-tuning at a small lr
SCHEDULES = ("step", "cosine", "constant")
AMP_DTYPES = ("auto", "float16", "bfloat16")  # ncslim.run.device.amp_dtype
PRUNE_TARGET = ("run", "train", "prune")  # train: the target of --lam auto


def penalty_choices() -> tuple[str, ...]:
    """Every registered sparsity method: ``none``, the penalties, ``vcp`` (the Bayesian
    baseline), ... (:mod:`ncslim.sparsity.registry`)."""
    from ..sparsity.registry import method_names

    return method_names()


def _mode_choices() -> tuple[str, ...]:
    from ..sparsity.regularizer import MODES

    return MODES


def _ranking_choices() -> tuple[str, ...]:
    from ..prune.selection import RANKINGS

    return ("auto", *RANKINGS)


def _arch_choices() -> tuple[str, ...]:
    from ..models import model_names

    return tuple(model_names())


def _dataset_choices() -> tuple[str, ...]:
    from ..data import dataset_names

    return tuple(dataset_names())


def _opt(default: Any, help: str, commands: tuple[str, ...] = COMMANDS,
         choices: Callable[[], tuple[str, ...]] | tuple[str, ...] | None = None,
         unset: str | None = None) -> Any:
    """A field: its ``help``, the ``commands`` it acts on, its ``choices`` (a registry lookup)
    and what ``None`` means (``unset``), all read by the command line."""
    return field(default=default, metadata={"help": help, "commands": commands,
                                            "choices": choices, "unset": unset})


@dataclass
class Config:
    # model
    arch: str = _opt("vgg", "architecture", RUN_TRAIN, _arch_choices)
    depth: int | None = _opt(None, "depth (vgg 11/13/16/19, densenet 3n+4, resnet 9n+2)",
                             RUN_TRAIN, unset="19 / 40 / 164 by --arch")
    width: float = _opt(1.0, "channel width multiplier", RUN_TRAIN)
    model: str | None = _opt(None, "your own CNN instead of --arch: package.module:function, "
                                   "called with num_classes= and in_channels=, pruned through "
                                   "Torch-Pruning's graph", RUN_TRAIN, unset="the --arch family")
    init: str | None = _opt(None, "start sparsity training from the weights of this model file "
                                  "(a full ncslim model; for --model, also a plain state_dict): "
                                  "slim a model you already trained", RUN_TRAIN,
                            unset="fresh weights")
    # data
    dataset: str = _opt("cifar10", "dataset", COMMANDS, _dataset_choices)
    data_dir: str | None = _opt(None, "dataset folder (--dataset folder: the image folder, "
                                      "required)", COMMANDS,
                                unset="$NCSLIM_DATA/NAME, /usr/share/datasets/NAME, then the "
                                      "cache")
    input_size: int | None = _opt(None, "resize images to S x S; folder datasets only", COMMANDS,
                                  unset="32 for folder datasets; the built-in ones keep their "
                                        "own size")
    download: bool = _opt(False, "download the official files if missing (checksums verified)")
    limit_train: int | None = _opt(None, "use only the first N training images", FITS,
                                   unset="all")
    limit_test: int | None = _opt(None, "use only the first N test images", unset="all")
    svhn_extra: bool = _opt(True, "SVHN: train on train + extra, as the paper", FITS)
    # optimisation
    epochs: int = _opt(160, "epochs of sparsity training", FITS)
    finetune_epochs: int | None = _opt(None, "epochs of fine-tuning", ("run",),
                                       unset="the same as --epochs")
    batch_size: int = _opt(64, "training batch size (the global batch under torchrun: each of "
                                "N processes takes 1/N of it)", FITS)
    lr: float = _opt(0.1, "initial learning rate", FITS)
    finetune_lr: float | None = _opt(None, "initial learning rate of fine-tuning", ("run",),
                                     unset="the same as --lr")
    momentum: float = _opt(0.9, "SGD momentum", FITS)
    nesterov: bool = _opt(False, "Nesterov momentum", FITS)
    weight_decay: float = _opt(1e-4, "weight decay", FITS)
    schedule: str = _opt("step", "learning-rate schedule: step (/10 at 50%% and 75%%), cosine, "
                                 "or constant", FITS, SCHEDULES)
    finetune_schedule: str | None = _opt(None, "learning-rate schedule of fine-tuning", ("run",),
                                         SCHEDULES, unset="the same as --schedule")
    # fine-tuning by knowledge distillation (ncslim.run.distill)
    distill: bool = _opt(False, "fine-tune by knowledge distillation from the sparsity-trained "
                                "(unpruned) model", ("run", "finetune"))
    distill_temperature: float = _opt(4.0, "distillation: softmax temperature T of teacher and "
                                           "student", ("run", "finetune"))
    distill_weight: float = _opt(0.9, "distillation: weight A of the soft term; loss = (1-A) CE "
                                      "+ A T^2 KL(teacher || student)", ("run", "finetune"))
    teacher: str | None = _opt(None, "with --distill: the model file to distil from, e.g. the "
                                     "full model the checkpoint was pruned from", ("finetune",),
                               unset="none")
    # sparsity
    penalty: str = _opt("l1", "sparsity method on the BN scaling factors: a penalty, none, or "
                              "vcp (the Bayesian baseline, variational channel pruning)",
                        ("run", "train", "prune"), penalty_choices)
    lam: float | str = _opt(1e-4, "penalty strength lambda, or auto: adapted while training "
                                   "to reach the pruning target (--ratio, --target-flops or "
                                   "--target-params)", RUN_TRAIN)
    # Penalty parameters, help and defaults from the registry
    # (ncslim.sparsity.penalty_registry): the default the penalties taking it share, else None,
    # each one's own. A parameter without a field always takes its penalty's default.
    p: float | None = _opt(param_default("p"), param_help("p"), RUN_TRAIN, unset=param_unset("p"))
    a: float | None = _opt(param_default("a"), param_help("a"), RUN_TRAIN, unset=param_unset("a"))
    gamma: float | None = _opt(param_default("gamma"), param_help("gamma"), RUN_TRAIN,
                               unset=param_unset("gamma"))
    mode: str = _opt("subgradient", "how the penalty acts", RUN_TRAIN, _mode_choices)
    decay_gammas: bool = _opt(True, "apply weight decay to the BN scaling factors too", RUN_TRAIN)
    # pruning
    ratio: float | None = _opt(0.5, "prune this fraction of channels (lowest |gamma| first, "
                                    "as --ranking compares layers)",
                               PRUNE_TARGET)
    threshold: float | None = _opt(None, "prune channels with |gamma| <= this instead of --ratio",
                                   ("run", "prune"), unset="off")
    target_flops: float | None = _opt(None, "prune until FLOPs <= this fraction of the original",
                                      PRUNE_TARGET, unset="off")
    target_params: float | None = _opt(None, "prune until parameters <= this fraction of the "
                                             "original", PRUNE_TARGET, unset="off")
    cost_weighted: bool = _opt(False, "a --target-flops/--target-params budget removes channels "
                                      "by |gamma| per unit of what removing them saves "
                                      "(MorphNet's weighting) instead of by |gamma|; measured "
                                      "worse in 10 of 10 settings (docs/lambda-controller.md)",
                               PRUNE_TARGET)
    ranking: str = _opt("auto", "how a ratio or budget ranks channels of different layers: "
                                "global: raw |gamma| over the whole network; layer: each |gamma| "
                                "over its layer's mean, as Torch-Pruning (spreads the cut over "
                                "the layers); auto: layer for --target-flops, else global (the "
                                "winner of each, docs/lambda-controller.md); the --lam auto aim "
                                "ranks as the cut does", PRUNE_TARGET, _ranking_choices)
    min_channels: int = _opt(DEFAULT_MIN_CHANNELS, "never keep fewer channels in a layer (2: a "
                                                   "layer of one channel can die in training, "
                                                   "and the network with it)", PRUNE_TARGET)
    round_to: int = _opt(1, "round kept channel counts up to a multiple of this", PRUNE_TARGET)
    max_layer_ratio: float | None = _opt(None, "never remove more than this fraction of one "
                                               "layer's channels in one pruning (network "
                                               "slimming's multi-pass runs use 0.5)",
                                         PRUNE_TARGET, unset="no cap")
    compensate: bool | None = _opt(None, "fold the mean output of removed channels into the next "
                                         "layer", ("run", "prune"),
                                   unset="on with --lam auto (its pruned channels are near zero, "
                                         "their constant output is what is left), else off")
    # multi-pass slimming (network slimming's section 4.4)
    passes: int = _opt(1, "train with the penalty, prune and fine-tune this many times, each pass "
                          "starting from the last one's fine-tuned model (in OUT/pass1, "
                          "OUT/pass2, ...)", ("run",))
    pass_target: str = _opt("each", "with --passes > 1, what --ratio, --target-flops and "
                                    "--target-params measure: each: every pass, against the "
                                    "model it starts with; total: the final model, against "
                                    "the original, each pass taking an even geometric share "
                                    "(--threshold: each)", ("run",),
                            ("each", "total"))
    # system
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto")
    amp: bool = _opt(False, "mixed precision (float16 on CUDA, bfloat16 on CPU; see "
                            "--amp-dtype)", FITS)
    amp_dtype: str = _opt("auto", "the precision of --amp: auto (float16 on CUDA, bfloat16 on "
                                  "CPU), float16 (with a gradient scaler) or bfloat16 (no "
                                  "scaler needed)", FITS, AMP_DTYPES)
    channels_last: bool = _opt(False, "channels-last memory format", FITS)
    compile: bool = _opt(False, "torch.compile the model", FITS)
    sync_bn: bool = _opt(False, "under torchrun: BatchNorm statistics over the global batch", FITS)
    latency_threads: int = _opt(1, "CPU threads when timing latency (0: torch's default, "
                                   "one per core)", ("run",))
    tensorboard: bool = _opt(False, "TensorBoard logs of every epoch (losses, accuracies, lr, "
                                    "lam, |gamma| shares, |gamma| histograms per BN layer) in "
                                    "OUT/tensorboard/STAGE; pip install 'ncslim[tensorboard]'",
                             FITS)
    seed: int = _opt(0, "random seed (a run repeats bit for bit with the same torch build, "
                        "thread count and CPU instruction set)", FITS)
    out: str = _opt("runs/latest", "run directory")

    def penalty_params(self) -> dict[str, float]:
        """Keyword parameters of the chosen penalty (for ``make_penalty``): the field of each of
        its ``PARAM_NAMES``, or its default where that is None; {} for none and vcp."""
        return resolve_params(self.penalty, vars(self))

    def compensates(self) -> bool:
        """``compensate``, or when unset: on with ``--lam auto`` (for ``--arch`` families)."""
        if self.compensate is None:
            return self.lam == AUTO and self.model is None
        return self.compensate

    def prune_rule(self) -> PruneRule:
        """The one prune-rule value of this config: the first of threshold / target_flops /
        target_params / ratio that is set, with the layers' floor, cap, rounding, ranking and
        compensation (:class:`ncslim.prune.rule.PruneRule`).

        With ``penalty = "vcp"`` the pruning follows VCP's own rule instead (``prunerule.prune``).
        """
        kind = next((k for k in KINDS if getattr(self, k) is not None), "ratio")
        return PruneRule(kind, getattr(self, kind), min_channels=self.min_channels,
                         round_to=self.round_to, max_layer_ratio=self.max_layer_ratio,
                         ranking=self.ranking, compensate=self.compensates())

    def validate(self) -> Config:
        """This configuration, if every value and combination is allowed; else a ValueError
        naming the flag (:mod:`ncslim.config.checks`)."""
        check_config(self)
        return self

    def start_lam(self) -> float:
        """lambda at the first step: the fixed ``lam``, or the controller's starting value."""
        from ..sparsity.controller import START_LAM

        return START_LAM if self.lam == AUTO else float(self.lam)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _with_method_fields(base: type) -> type:
    """``base`` with the fields each sparsity method declares (:mod:`ncslim.sparsity.registry`),
    after its own: a method brings its flags with it."""
    extra = [(f.name, f.type, _opt(f.default, f.help, f.commands, unset=f.unset))
             for f in method_fields()]
    config = make_dataclass("Config", extra, bases=(base,))
    config.__module__, config.__qualname__, config.__doc__ = (base.__module__, "Config",
                                                             base.__doc__)
    return config


Config = _with_method_fields(Config)  # type: ignore[misc]


def field_choices(name: str) -> tuple[str, ...] | None:
    """The allowed values of a field, read from its registry (``None``: any value)."""
    choices = next(f for f in fields(Config) if f.name == name).metadata.get("choices")
    return choices() if callable(choices) else choices


def config_fields() -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, default, metadata) of every field, for building the command line."""
    return [(f.name, None if f.default is MISSING else f.default, dict(f.metadata))
            for f in fields(Config)]
