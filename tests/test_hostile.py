"""Hostile input, drawn by hypothesis: presets, sweep files and model files that are wrong in
many ways. Every draw must end as exit 2 with one line on stderr, no traceback, nothing written
(a model file that still loads after its mutation may load: the property is that nothing else
happens)."""

from __future__ import annotations

import io
from dataclasses import fields

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ncslim
from ncslim.cli import main
from ncslim.config import Config

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELD_TYPES = {f.name: {k.strip() for k in str(f.type).split("|")} for f in fields(Config)}

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
tables = st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), min_size=1, max_size=2)
arrays = st.lists(st.integers(), min_size=1, max_size=3)
fractional = st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v))


def wrong_value(name: str) -> st.SearchStrategy:
    """A TOML value that the field cannot take, whatever else the preset holds."""
    kinds = FIELD_TYPES[name]
    choices = [tables, arrays]
    if "str" not in kinds:
        choices.append(text)
    if "bool" not in kinds:
        choices.append(st.booleans())
    if not kinds & {"int", "float"}:
        choices.append(st.integers())
    if "float" not in kinds:
        choices.append(fractional)
    return st.one_of(choices)


@st.composite
def bad_presets(draw) -> dict:
    names = draw(st.lists(st.sampled_from(sorted(FIELD_TYPES)), min_size=1, max_size=3,
                          unique=True))
    return {name: draw(wrong_value(name)) for name in names}


def toml_text(table: dict, section: str | None = None) -> str:
    import json

    lines = [f"[{section}]"] if section else []
    for key, value in table.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def _exit_2_one_line(argv: list[str], capsys) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@SETTINGS
@given(preset=bad_presets())
def test_a_preset_with_values_of_the_wrong_type_is_one_line_and_writes_nothing(
        tmp_path, capsys, preset):
    path = tmp_path / "p.toml"
    path.write_text(toml_text(preset), encoding="utf-8")
    out = tmp_path / "out"
    err = _exit_2_one_line(["train", "--config", str(path), "--out", str(out)], capsys)
    assert any(f"--{name.replace('_', '-')} " in err for name in preset), err
    assert not out.exists()


SWEEP_FAULTS = ["seed in base", "out in grid", "nested list", "seeds not ints", "ratios out",
                "grid a table", "base an array", "collision", "path in name", "too many",
                "bad field type", "unknown key"]


@st.composite
def bad_sweeps(draw) -> tuple[str, str]:
    fault = draw(st.sampled_from(SWEEP_FAULTS))
    penalty = draw(st.sampled_from(sorted(ncslim.sparsity.penalties.PENALTIES)))
    grid = f'[[grid]]\npenalty = "{penalty}"\n'
    if fault == "seed in base":
        return fault, f"[base]\nseed = {draw(st.integers(0, 9))}\n{grid}"
    if fault == "out in grid":
        return fault, f'{grid}out = "{draw(st.sampled_from(["a", "b/c"]))}"\n'
    if fault == "nested list":
        return fault, f"{grid}lam = [[{draw(st.floats(0, 1))}]]\n"
    if fault == "seeds not ints":
        bad = draw(st.sampled_from(['"0"', "1.5", "-1", "true", "4294967296"]))
        return fault, f"seeds = [{bad}]\n{grid}"
    if fault == "ratios out":
        bad = draw(st.sampled_from(["1.0", "-0.1", '"0.5"', "true", "7"]))
        return fault, f"ratios = [{bad}]\n{grid}"
    if fault == "grid a table":
        return fault, f'grid = {{ penalty = "{penalty}" }}\n'
    if fault == "base an array":
        return fault, f"base = [1]\n{grid}"
    if fault == "collision":
        value = draw(st.floats(0.01, 0.9))
        return fault, f"{grid}lam = [{value!r}, {value * (1 + 1e-9)!r}]\n"
    if fault == "path in name":
        return fault, f'{grid}data_dir = ["../{draw(st.sampled_from(["x", "y/z"]))}"]\n'
    if fault == "too many":
        return fault, f"seeds = [0, 1]\n{grid}lam = {list(range(5001, 10001))}\n"
    if fault == "bad field type":
        name = draw(st.sampled_from(sorted(set(FIELD_TYPES) - {"seed", "out"})))
        return fault, toml_text({name: draw(wrong_value(name))}, "base") + grid
    return fault, f"{draw(st.sampled_from(['colour', 'seed', 'runs']))} = 1\n{grid}"


@SETTINGS
@given(sweep=bad_sweeps())
def test_a_bad_sweep_file_is_one_line_and_runs_nothing(tmp_path, capsys, sweep):
    fault, text_ = sweep
    path = tmp_path / "s.toml"
    path.write_text(f'out = "{tmp_path / "runs"}"\n' + text_, encoding="utf-8")
    _exit_2_one_line(["sweep", str(path)], capsys)
    assert not (tmp_path / "runs").exists(), fault


class ModelBytes(bytes):
    def __repr__(self) -> str:  # a failing example prints this, not 60 KB
        return f"<a tiny VGG-11 model file, {len(self)} bytes>"


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(ncslim.models.files.model_payload(ncslim.build_model("vgg", depth=11, width=0.0625,
                                                          num_classes=10, in_channels=1)),
               buffer)
    return ModelBytes(buffer.getvalue())


MUTATIONS = ["truncate", "flip bytes", "spec int", "drop tensor", "reshape tensor", "spec type",
             "config key", "format"]


@st.composite
def mutated_models(draw, original: bytes) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "truncate":
        return kind, original[:draw(st.integers(0, len(original) - 1))]
    if kind == "flip bytes":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return kind, bytes(data)
    payload = torch.load(io.BytesIO(original), weights_only=True)
    state, channels = payload["state_dict"], payload["config"]["channels"]
    names = sorted(state)
    if kind == "spec int":
        index = draw(st.sampled_from([i for i, c in enumerate(channels) if c != "M"]))
        channels[index] = draw(st.sampled_from([0, -3, 10**6, 10**12, 3]))
    elif kind == "drop tensor":
        del state[draw(st.sampled_from(names))]
    elif kind == "reshape tensor":
        name = draw(st.sampled_from([n for n in names if state[n].dim()]))
        state[name] = torch.zeros(draw(st.integers(1, 5000)))
    elif kind == "spec type":
        payload["config"]["channels"] = draw(st.sampled_from(["x", 3, {"a": 1}, [], None]))
    elif kind == "config key":
        key = draw(st.sampled_from(["arch", "num_classes", "in_channels"]))
        payload["config"][key] = draw(st.sampled_from(["resnet", "alexnet", -1, 10**9, None]))
    else:
        payload["format"] = draw(st.sampled_from(["other", None, 3]))
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return kind, buffer.getvalue()


@SETTINGS
@given(data=st.data())
def test_a_mutated_model_file_loads_or_is_one_line(tmp_path, capsys, model_bytes, data):
    kind, content = data.draw(mutated_models(model_bytes))
    path = tmp_path / "m.pt"
    path.write_bytes(content)
    capsys.readouterr()
    code = main(["prune", "--checkpoint", str(path), "--dry-run", "--ratios", "0.3"])
    err = capsys.readouterr().err.strip()
    if code != 0:  # a mutation may leave a loadable file: then it is pruned, as any
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (kind, err)
        assert str(path) in err, (kind, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
