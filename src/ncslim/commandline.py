"""The flags of the ``ncslim`` command line, built from the configuration's fields: each command
shows only the flags that act on it, with the default that applies and the choices that the
registries hold.

    >>> parser = build_parser()
    >>> parser.parse_args(["train", "--epochs", "2"]).epochs
    2
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, NoReturn

from .config import (
    AUTO,
    DEFAULT_PRESET,
    Config,
    config_fields,
    field_choices,
    load_config,
    preset_names,
)
from .config.commands import ALL_COMMANDS, COMMAND_TABLE, CONFIG_COMMANDS, TRAINING_COMMANDS
from .models import model_names
from .models.export import FORMATS
from .sparsity.registry import METHODS

COMMANDS = ALL_COMMANDS
_TYPES = {"int": int, "float": float, "str": str}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


FIELD_TYPES = {f.name: f.type for f in fields(Config)}  # its annotations, as written

# a flag whose meaning on one command differs from the field's help
COMMAND_HELP = {
    ("finetune", "epochs"): "epochs of fine-tuning",
    ("prune", "penalty"): "; ".join(
        f"{spec.name} prunes by its own rule ("
        + ", ".join(f"--{f.name.replace('_', '-')}" for f in spec.fields if "prune" in f.commands)
        + ")" for spec in METHODS.values() if spec.own_rule) + "; any other value by the |gamma| "
                                                              "ranking",
    ("prune", "dataset"): "with --evaluate: the test set",
    ("finetune", "distill"): "fine-tune by knowledge distillation from --teacher",
}
PRECEDENCE = ("defaults shown are the {preset} preset's, which applies when --config names no "
              "other; a flag given here wins over the preset{extra}")


def _add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The configuration flags that act on ``command``, each showing the default that runs."""
    defaults = load_config(DEFAULT_PRESET)
    parser.add_argument("--config", metavar="PRESET|FILE",
                        help=f"preset ({', '.join(preset_names())}) or a TOML file with the same "
                             f"keys (default: {DEFAULT_PRESET})")
    for name, _, meta in config_fields():
        if command not in meta["commands"]:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = str(FIELD_TYPES[name])
        text = COMMAND_HELP.get((command, name), meta["help"]).replace("%%", "%")
        text = (text + _default_text(command, name, defaults, meta)).replace("%", "%%")
        if annotation.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
            continue
        kind = _lam if name == "lam" else _TYPES[annotation.split(" ")[0]]
        choices = field_choices(name)
        parser.add_argument(flag, type=kind, choices=choices,
                            metavar=None if choices else name.upper(),
                            default=argparse.SUPPRESS, help=text)


def _default_text(command: str, name: str, defaults: Config, meta: dict[str, Any]) -> str:
    value = getattr(defaults, name)
    if command in ("prune", "finetune") and name == "dataset":
        return f" (default: the one the model file records, else {value})"
    if command == "run" and name == "finetune_epochs":
        return (f" (default: {value}; the same as --epochs when --epochs is given without it)"
                if value is not None else f" (default: {meta['unset']})")
    if command == "finetune" and name == "epochs" and defaults.finetune_epochs is not None:
        value = defaults.finetune_epochs  # the fine-tuning length is what finetune's --epochs sets
    if value is None:
        return f" (default: {meta['unset']})" if meta.get("unset") else ""
    if isinstance(value, bool):
        return f" (default: {'on' if value else 'off'})"
    return f" (default: {value:g})" if isinstance(value, float) else f" (default: {value})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ncslim", description="Network slimming with nonconvex regularization.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands = {c.name: sub.add_parser(
        c.name, help=c.help, description=c.help,
        epilog=(PRECEDENCE.format(preset=DEFAULT_PRESET, extra=c.precedence)
                if c.takes_config else None)) for c in COMMAND_TABLE}
    for name in CONFIG_COMMANDS:
        _add_config_flags(commands[name], name)
    for name in TRAINING_COMMANDS:
        commands[name].add_argument("--resume", action="store_true",
                                    help="continue the run in --out from its last checkpoint")
    for c in COMMAND_TABLE:
        if c.checkpoint is not None:
            commands[c.name].add_argument(
                "--checkpoint", required=c.checkpoint == "required",
                help="model file (model.pt, pruned.pt, best.pt or last.pt)")
    for name in ("prune", "finetune", "info", "export"):
        commands[name].add_argument(
            "--trust-model-code", action="append", metavar="MODULE",
            help="import MODULE (or a module of package MODULE) to rebuild a --model network a "
                 "model file names; without it such a file is refused (importing runs code)")
    commands["finetune"].add_argument("--from-scratch", action="store_true",
                                      help="re-initialise the pruned architecture first")
    _add_prune_flags(commands["prune"])
    _add_info_flags(commands["info"])
    _add_export_flags(commands["export"])
    sweep = commands["sweep"]
    sweep.add_argument("sweep_file", metavar="CONFIG", help="sweep TOML file")
    sweep.add_argument("--shard", help="I/N: run every N-th training run, starting at the I-th")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    report = commands["report"]
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="folder searched for results.json")
    report.add_argument("--out", help="where the table and figures go (default RUNS_DIR/report)")
    return parser


def _add_prune_flags(prune: argparse.ArgumentParser) -> None:
    prune.add_argument("--dry-run", action="store_true", help="report, write nothing")
    prune.add_argument("--ratios", help="with --dry-run: comma-separated ratios, e.g. 0.3,0.5,0.7")
    prune.add_argument("--evaluate", action="store_true",
                       help="measure test accuracy before and after pruning (with --dry-run: "
                            "after pruning at each ratio); needs the data")
    prune.add_argument("--again", action="store_true",
                       help="prune an already pruned model further (the ratio then counts its "
                            "remaining channels)")
    prune.add_argument("--overwrite", action="store_true",
                       help="write into --out even where its pruned.pt is not an earlier "
                            "prune's (a run's folder)")


def _add_info_flags(info: argparse.ArgumentParser) -> None:
    threads = load_config(DEFAULT_PRESET).latency_threads
    info.add_argument("--arch", choices=model_names(), default="vgg",
                      help="without --checkpoint: the architecture to describe (default: vgg)")
    info.add_argument("--depth", type=int, help="default: 19 / 40 / 164 by --arch")
    info.add_argument("--width", type=float, default=1.0, help="default: 1.0")
    info.add_argument("--num-classes", type=int, default=10, help="default: 10")
    info.add_argument("--in-channels", type=int, default=3, help="default: 3")
    info.add_argument("--batch-size", type=int, default=64,
                      help="the second batch size timed, besides 1 (default: 64)")
    info.add_argument("--latency-threads", type=int, default=threads,
                      help=f"CPU threads when timing latency (0: torch's default; default: "
                           f"{threads}, as ncslim run)")
    info.add_argument("--device", default="cpu", help="default: cpu")
    info.add_argument("--json", action="store_true", help="print JSON")


def _add_export_flags(export: argparse.ArgumentParser) -> None:
    export.add_argument("model", metavar="MODEL", help="model file (model.pt, final.pt, ...)")
    export.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    export.add_argument("--output", "-o", help="file to write (default: MODEL with the format's "
                                               "suffix, .onnx or .ts)")
    export.add_argument("--input-shape", help="B,C,H,W of the example input (default: "
                                              "1,C,32,32 from the model)")
    export.add_argument("--fixed-batch", action="store_true",
                        help="ONNX: a fixed batch size instead of a dynamic one")
    export.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace --output even if it is not an earlier export")
    export.add_argument("--no-check", action="store_true",
                        help="skip comparing the exported file's outputs with PyTorch's")
    export.add_argument("--verbose", "-v", action="store_true",
                        help="show the exporter's own log (shown anyway if the export fails)")


def _lam(text: str) -> float | str:
    """``--lam``: a number or ``auto``."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or {AUTO}, got {text!r}") from None


def unknown_flags(command: str, extra: list[str]) -> str:
    """One line for flags the command does not take, naming the commands they act on."""
    notes = []
    for word in extra:
        name = word.split("=")[0].lstrip("-").replace("-", "_")
        owners = next((meta["commands"] for field, _, meta in config_fields() if field == name),
                      None)
        if word.startswith("--") and owners:
            notes.append(f"{word.split('=')[0]} acts on {', '.join(owners)}, not on {command}")
    why = f" ({'; '.join(notes)})" if notes else ""
    return (f"ncslim {command}: error: unrecognized arguments: {' '.join(extra)}{why} "
            f"(see ncslim {command} --help)\n")
