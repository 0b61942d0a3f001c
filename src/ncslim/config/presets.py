"""Presets and the configuration of a command: a preset's keys (``configs/*.toml`` or a TOML
file) under the flags given, validated into one :class:`~ncslim.config.fields.Config`."""

from __future__ import annotations

import difflib
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..sparsity.penalty_registry import param_names
from .checks import check_value_types, layer_targets, one_target
from .fields import COMMANDS, DEFAULT_PRESET, MAX_TOML_BYTES, PRESET_DIR, Config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_preset(name_or_path: str) -> dict[str, Any]:
    """The keys of a preset (by name) or of a TOML file (by path)."""
    from ..util.regular import check_regular, read_bytes

    path = Path(name_or_path)
    is_name = not path.suffix and "/" not in name_or_path and not path.exists()
    if is_name:
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            close = difflib.get_close_matches(name_or_path, preset_names(), n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ValueError(f"unknown preset {name_or_path!r}{hint}; presets: "
                             f"{', '.join(preset_names())}; or pass a .toml path")
    check_regular(path, "config file")
    if path.stat().st_size > MAX_TOML_BYTES:
        raise ValueError(f"config file {path}: {path.stat().st_size:,} bytes, more than a "
                         f"configuration needs ({MAX_TOML_BYTES:,}); is it the right file?")
    try:
        return tomllib.loads(read_bytes(path, what="config file",
                                        limit=MAX_TOML_BYTES).decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path}: not UTF-8 text (byte {err.start}); TOML files "
                         f"are UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path}: invalid TOML: {err}") from err


def load_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """A validated :class:`Config`: defaults, then the preset's keys, then ``overrides``."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Config)}
    if preset is not None:
        for key, value in read_preset(preset).items():
            name = key.replace("-", "_")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"config {preset}: unknown key {key!r}{hint}")
            values[name] = value
        try:  # the preset itself, also where a flag overrides one of its values
            check_value_types(values, {f.name: f.type for f in fields(Config)})
            one_target(values)
        except ValueError as err:
            raise ValueError(f"config {preset}: {err}") from None
    overrides = overrides or {}
    one_target(overrides)
    if overrides.get("penalty", values.get("penalty")) != values.get("penalty", Config.penalty):
        # a preset's penalty parameters belong to the penalty it names (the demo's TL1 a = 1 is
        # no SCAD a): another penalty takes its own defaults, or the flags given
        for name in param_names():
            values.pop(name, None)
    values = layer_targets(values, overrides)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    return Config(**values).validate()


# what a model file records of its data (a folder dataset's record adds its classes and split)
DATA_RECORD = ("dataset", "limit_train", "limit_test", "svhn_extra", "input_size")


def command_config(command: str, preset: str | None, given: dict[str, Any],
                   recorded: dict[str, Any] | None = None) -> Config:
    """The configuration of one ``ncslim`` command, in this order of precedence:

    1. the flags ``given`` on the command line;
    2. (prune, finetune) the data a model was trained on, as its file records it (``recorded``),
       unless ``--dataset`` is given;
    3. the preset (``--config``; :data:`DEFAULT_PRESET` when none is named), then the defaults.

    ``--epochs`` given without ``--finetune-epochs`` sets both stages' length (for ``finetune``,
    --epochs is the fine-tuning's length): a preset's fine-tuning length belongs to its epochs.
    Likewise ``finetune``'s --lr and --schedule are the fine-tuning's, over a preset's
    ``finetune_lr`` and ``finetune_schedule`` (the names of ``run``'s second stage).

    >>> command_config("run", None, {"epochs": 1}).finetune_epochs is None
    True
    >>> command_config("finetune", None, {}, {"dataset": "svhn"}).dataset
    'svhn'
    """
    if command not in COMMANDS:
        raise ValueError(f"{command!r} takes no configuration; one of {', '.join(COMMANDS)} does")
    values: dict[str, Any] = {}
    if recorded and "dataset" not in given:
        values.update({k: v for k, v in recorded.items() if k in DATA_RECORD})
    values.update(given)
    both = [f"--{key}" for key in ("arch", "depth", "width") if key in given]
    if given.get("model") is not None and both:
        raise ValueError(f"--model builds your own network; leave out {', '.join(both)}")
    if "epochs" in given and "finetune_epochs" not in given:
        values["finetune_epochs"] = None
    if command == "finetune":  # its --lr and --schedule are the fine-tuning's own
        values.update({f"finetune_{key}": None for key in ("lr", "schedule") if key in given})
    return load_config(preset or DEFAULT_PRESET, values)
