"""The commands of ``ncslim``, known once: what each does, whether it takes a configuration
(the config's fields as flags, a preset), whether it trains (torchrun may start it several
times, and ``--resume`` continues it), whether it reads a model file (``--checkpoint``), and what
its ``--help`` adds to the note on precedence. The parser, ``cli.main``'s dispatch and the
advice after an interruption read this table; a field lists the commands it acts on by these
names (:mod:`.fields`)."""

from __future__ import annotations

from dataclasses import dataclass

FROM_RECORD = "; the dataset is the one the model file records, unless --dataset"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    takes_config: bool = False
    trains: bool = False
    checkpoint: str | None = None  # "required" or "optional": it reads a model file
    precedence: str = ""  # what its --help adds to the note on precedence


COMMAND_TABLE = (
    Command("run", "train with the penalty, prune, fine-tune, and report (default preset: demo)",
            takes_config=True, trains=True,
            precedence="; --epochs alone sets the fine-tuning length too"),
    Command("train", "sparsity training only", takes_config=True, trains=True),
    Command("prune", "prune a trained model (or --dry-run several ratios)", takes_config=True,
            checkpoint="required", precedence=FROM_RECORD),
    Command("finetune", "retrain a pruned model without the penalty", takes_config=True,
            trains=True, checkpoint="required", precedence=FROM_RECORD),
    Command("info", "parameters, FLOPs, channels per layer and latency of a model",
            checkpoint="optional"),
    Command("sweep", "run a grid of penalties x parameters x lam x seeds x prune ratios"),
    Command("report", "table and figures from every results.json below a folder"),
    Command("export", "write a model as ONNX (checked in ONNX Runtime) or TorchScript"),
)
COMMANDS_BY_NAME = {command.name: command for command in COMMAND_TABLE}
ALL_COMMANDS = tuple(COMMANDS_BY_NAME)
CONFIG_COMMANDS = tuple(c.name for c in COMMAND_TABLE if c.takes_config)
TRAINING_COMMANDS = tuple(c.name for c in COMMAND_TABLE if c.trains)
