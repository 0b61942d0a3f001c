"""Run configuration: one typed dataclass, presets as TOML files, flags on top.

    >>> from ncslim.config import load_config
    >>> cfg = load_config("demo", {"epochs": 2})
    >>> cfg.dataset, cfg.epochs
    ('fashion-mnist', 2)

- :mod:`.fields`: :class:`Config`, its fields (default, help, commands, choices) and what it
  derives (:meth:`Config.prune_rule`);
- :mod:`.checks`: the checks of values and of their combinations, each error naming the flag;
- :mod:`.presets`: presets (``ncslim/configs/*.toml``, ``--config NAME``, or a TOML path with
  the same keys) and the configuration of a command (flags over the model's record over the
  preset).

Unknown keys and out-of-range values raise ``ValueError`` naming the flag. Imports
:mod:`ncslim.util`, :mod:`ncslim.data`, :mod:`ncslim.models`, :mod:`ncslim.prune` and
:mod:`ncslim.sparsity` only.
"""

from .checks import AUTO
from .fields import (
    AMP_DTYPES,
    COMMANDS,
    DEFAULT_PRESET,
    FITS,
    PRESET_DIR,
    RUN_TRAIN,
    SCHEDULES,
    Config,
    config_fields,
    field_choices,
    penalty_choices,
)
from .presets import DATA_RECORD, command_config, load_config, preset_names, read_preset

__all__ = ["AMP_DTYPES", "AUTO", "COMMANDS", "DATA_RECORD", "DEFAULT_PRESET", "FITS",
           "PRESET_DIR", "RUN_TRAIN", "SCHEDULES", "Config", "command_config", "config_fields",
           "field_choices", "load_config", "penalty_choices", "preset_names", "read_preset"]
