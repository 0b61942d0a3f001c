"""What a model file says about its data, checked against the model before it is used or shown.

A model file records the data it was trained on (``trained_on``: the dataset, its limits, and
for an image folder the input size, class names and test split). ``prune`` and ``finetune``
take the dataset from it and ``info`` prints it, so each field is checked against the weights
first: an image folder's class names must be as many as the network's outputs and distinct, its
input size the model's own, a built-in dataset's classes as many as the outputs, the other
fields plain values of their kind. Text from a file
reaches the terminal through :func:`shown`, which escapes control characters and ANSI escapes.
"""

from __future__ import annotations

from typing import Any

from ..data import DATASETS, MAX_CLASS_NAME, MAX_CLASSES, dataset_names
from ..util.escape import shown

MAX_TEXT = 4096  # characters of a recorded dataset name or test split
# the kinds of every field a file may record: those of DATA_RECORD, and an image folder's
_KINDS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "limit_train": (int, type(None)), "limit_test": (int, type(None)),
    "svhn_extra": (bool,), "input_size": (int, type(None)), "test_split": (str,),
    "classes": (list,)}


def check_trained_on(record: Any, num_classes: int, input_size: int) -> dict[str, Any] | None:
    """``record`` (a file's ``trained_on``) if it fits a model of ``num_classes`` outputs and
    ``input_size`` x ``input_size`` inputs, else a ValueError naming the field."""
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("dataset"), str):
        raise _bad(f"got {shown(repr(record))}")
    for key, value in record.items():
        if key not in _KINDS:
            raise _bad(f"an unknown field {shown(repr(key))}")
        kinds = _KINDS[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise _bad(f"its {key} is a {type(value).__name__}: {shown(repr(value))}")
        if isinstance(value, str) and not 0 < len(value) <= MAX_TEXT:
            raise _bad(f"its {key} must be 1 to {MAX_TEXT} characters")
        if key in ("limit_train", "limit_test", "input_size") and value is not None and value < 1:
            raise _bad(f"its {key} must be positive, got {value}")
    _check_dataset(record["dataset"], num_classes)
    if record.get("input_size") not in (None, input_size):
        raise ValueError(f"'trained_on' says {record['input_size']}x{record['input_size']} "
                         f"images, but the model takes {input_size}x{input_size}")
    if "classes" in record:
        _check_classes(record["classes"], num_classes)
    return dict(record)


def _check_dataset(name: str, num_classes: int) -> None:
    """A dataset ncslim knows, and for a built-in one, as many classes as the network has
    outputs (an image folder's are checked by its class names)."""
    if name not in dataset_names():
        raise _bad(f"an unknown dataset {shown(repr(name))}; ncslim knows "
                   f"{', '.join(dataset_names())}")
    if name in DATASETS and DATASETS[name].num_classes != num_classes:
        raise ValueError(f"'trained_on' says {name}, which has {DATASETS[name].num_classes} "
                         f"classes, but the network has {num_classes:,} outputs")


def _bad(detail: str) -> ValueError:
    return ValueError(f"'trained_on' must name the dataset and hold plain values of the fields "
                      f"ncslim records ({detail})")


def _check_classes(names: list[Any], num_classes: int) -> None:
    if not 0 < len(names) <= MAX_CLASSES or not all(
            isinstance(name, str) and 0 < len(name) <= MAX_CLASS_NAME for name in names):
        raise _bad(f"an image folder's classes are 1 to {MAX_CLASSES:,} names of 1 to "
                   f"{MAX_CLASS_NAME} characters")
    if len(names) != num_classes:
        raise ValueError(f"'trained_on' names {len(names):,} classes, but the network has "
                         f"{num_classes:,} outputs")
    if len(set(names)) != len(names):
        twice = next(name for i, name in enumerate(names) if name in names[:i])
        raise ValueError(f"'trained_on' names the class {shown(repr(twice))} twice")


def check_pruned_from(record: dict[str, int] | None, model: Any) -> dict[str, int] | None:
    """A pruned model's record of its full model (checked for form by the loader): the full
    model cannot have had fewer parameters than ``model`` has now (its FLOPs, which take a
    forward pass to count, are checked where they are shown: ``ncslim info``)."""
    params = sum(p.numel() for p in model.parameters())
    if record is not None and record["params"] < params:
        raise ValueError(f"'pruned_from' records a full model of {record['params']:,} "
                         f"parameters, fewer than this model's {params:,}")
    return record
