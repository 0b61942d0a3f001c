"""`--help` tells the truth: the defaults shown are what runs, each once; choices come from the
registries; each command lists only the flags that act on it."""

from __future__ import annotations

import re

import pytest

from ncslim.cli import build_parser, main
from ncslim.config import COMMANDS, command_config, config_fields
from ncslim.data import dataset_names
from ncslim.models import model_names
from ncslim.sparsity.penalties import L1, PENALTIES
from ncslim.sparsity.regularizer import MODES


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _flag_texts(text: str) -> dict[str, str]:
    """{flag: its help text, joined over lines} from argparse's output."""
    entries: dict[str, str] = {}
    current = None
    for line in text.split("options:", 1)[1].splitlines():
        match = re.match(r"  (--[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith(" " * 10):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {flag: re.sub(r"\s+", " ", body) for flag, body in entries.items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_default_shown_is_the_value_that_runs(command, capsys):
    texts = _flag_texts(_help(capsys, command))
    runs = command_config(command, None, {})
    checked = 0
    for name, _, _ in config_fields():
        flag = "--" + name.replace("_", "-")
        if flag not in texts:
            continue
        shown = re.findall(r"\(default: ([^);]+)[);]", texts[flag])
        assert len(shown) <= 1, f"{flag} shows its default {len(shown)} times: {texts[flag]}"
        if not shown or getattr(runs, name) is None:
            continue
        value = getattr(runs, name)
        if command == "finetune" and name == "epochs":
            value = runs.finetune_epochs if runs.finetune_epochs is not None else runs.epochs
        if command in ("prune", "finetune") and name == "dataset":
            assert shown[0] == f"the one the model file records, else {value}"
        elif isinstance(value, bool):
            assert shown[0] == ("on" if value else "off"), flag
        elif isinstance(value, float):
            assert float(shown[0]) == value, flag
        else:
            assert shown[0] == str(value), flag
        checked += 1
    assert checked >= 5


def test_run_shows_the_demo_preset_that_plain_run_uses(capsys):
    text = _help(capsys, "run")
    texts = _flag_texts(text)
    assert "(default: fashion-mnist)" in texts["--dataset"]
    assert "(default: tl1)" in texts["--penalty"] and "(default: 0.003)" in texts["--lam"]
    assert "(default: runs/demo)" in texts["--out"]
    assert "the same as --epochs when --epochs is given" in texts["--finetune-epochs"]
    assert "defaults shown are the demo preset's" in re.sub(r"\s+", " ", text)


def test_choices_are_read_from_the_registries(capsys, monkeypatch):
    texts = _flag_texts(_help(capsys, "run"))
    assert f"--penalty {{{','.join(('none', *PENALTIES, 'vcp'))}}}" in texts["--penalty"]
    assert f"--mode {{{','.join(MODES)}}}" in texts["--mode"]
    assert f"--arch {{{','.join(model_names())}}}" in texts["--arch"]
    assert f"--dataset {{{','.join(dataset_names())}}}" in texts["--dataset"]
    monkeypatch.setitem(PENALTIES, "l1copy", L1)  # a new penalty: one registry line
    assert "l1copy" in _flag_texts(_help(capsys, "run"))["--penalty"]
    assert command_config("run", None, {"penalty": "l1copy"}).penalty == "l1copy"


@pytest.mark.parametrize("command, absent", [
    ("prune", ["--lr", "--momentum", "--epochs", "--lam", "--arch", "--width", "--amp",
               "--batch-size", "--seed"]),
    ("finetune", ["--lam", "--penalty", "--ratio", "--arch", "--depth", "--finetune-epochs",
                  "--target-flops"]),
    ("train", ["--threshold", "--compensate", "--finetune-epochs", "--vcp-mu"]),
    ("export", ["--lr", "--dataset", "--epochs", "--config"]),
    ("info", ["--lr", "--dataset", "--epochs", "--lam", "--config"]),
])
def test_a_command_lists_only_the_flags_that_act_on_it(command, absent, capsys):
    listed = set(_flag_texts(_help(capsys, command)))  # the options --help lists
    assert listed and not listed & set(absent), f"{command} --help lists {listed & set(absent)}"


def test_a_flag_of_another_command_is_named_as_such(capsys):
    assert main(["train", "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ncslim train: error: unrecognized arguments: --threshold 0.5 (--threshold "
                   "acts on run, prune, not on train) (see ncslim train --help)")


def test_the_parser_builds_every_command_from_the_config_fields():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in COMMANDS:
        flags = {o for a in sub.choices[command]._actions for o in a.option_strings}
        for name, _, meta in config_fields():
            assert (("--" + name.replace("_", "-")) in flags) == (command in meta["commands"])


def test_every_command_of_the_table_has_a_parser_and_a_handler(capsys):
    from ncslim.cli import handlers
    from ncslim.config.commands import ALL_COMMANDS, COMMAND_TABLE

    assert tuple(handlers()) == ALL_COMMANDS
    for command in COMMAND_TABLE:
        text = _help(capsys, command.name)
        assert command.help.split(" (")[0] in " ".join(text.split())
        assert ("--resume" in text) == command.trains
        assert ("--checkpoint" in text) == (command.checkpoint is not None)
        assert ("--config" in text) == command.takes_config
