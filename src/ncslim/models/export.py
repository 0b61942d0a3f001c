"""Exporting a full or pruned model for deployment: ONNX (checked in ONNX Runtime) or TorchScript.

    ncslim export runs/vgg/final.pt --format onnx            # -> runs/vgg/final.onnx, checked
    >>> import ncslim, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.ts")
    >>> ncslim.export_model(ncslim.build_model("vgg", width=0.125, depth=11), path,
    ...                     format="torchscript").name
    'm.ts'

ONNX goes through PyTorch's own exporter (``torch.onnx.export(dynamo=True)``, which needs the
``onnx`` and ``onnxscript`` packages: ``pip install 'ncslim[export]'``); the batch dimension stays
dynamic unless ``fixed_batch``. TorchScript is a trace (``torch.jit.trace``): our models have no
data-dependent control flow. PyTorch marks TorchScript as deprecated; it remains here for
LibTorch (C++) deployments that still load it. Both files are written atomically. The exporters'
own progress lines, log and warnings are shown only with ``verbose`` (``ncslim export -v``), or
when the export fails.

An exported file is a program: ncslim writes these files but never loads one from a stranger.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import logging
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from ..util.escape import first_line
from ..util.files import atomic_path
from ..util.liverun import refuse_near_live_run
from .files import not_a_file
from .scales import unwrap

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".ts", ".torchscript")}  # a format's file names
# ncslim's signature in each file it exports (ONNX metadata_props, a TorchScript extra file):
# how export knows a file at its output is an earlier export of its own, safe to replace
SIGNATURE = "ncslim.export"
ONNX_METADATA_FIELD = 14  # ModelProto.metadata_props (onnx.proto)
MAX_METADATA_ENTRY = 1 << 16  # bytes of one metadata entry read to find the signature
MAX_TOP_FIELDS = 10_000  # top-level fields read before a file is judged not an export of ours
# whose log the exporters write (onnxscript's optimiser and onnx_ir's passes log at INFO)
EXPORTER_LOGGERS = ("torch", "onnxscript", "onnx_ir", "onnx")


def _check_shape(input_shape: Any) -> tuple[int, int, int, int]:
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                  for d in shape):
        raise ValueError(f"input_shape must be 4 positive ints (batch, channels, height, width), "
                         f"got {input_shape!r}")
    return shape  # type: ignore[return-value]


def _input_shape(model: nn.Module, input_shape: Any) -> tuple[int, int, int, int]:
    if input_shape is not None:
        return _check_shape(input_shape)
    if hasattr(model, "input_shape"):
        return (1, *model.input_shape())
    raise ValueError(f"input_shape is required to export a {type(model).__name__} (it is not an "
                     f"ncslim architecture); e.g. input_shape=(1, 3, 224, 224)")


def _needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"this needs the package(s) {', '.join(missing)}: "
                         f"pip install 'ncslim[export]'")


def example_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(input_shape, generator=torch.Generator().manual_seed(0))


def export_model(model: nn.Module, path: str | os.PathLike, format: str = "onnx",
                 input_shape: tuple[int, int, int, int] | None = None, *,
                 fixed_batch: bool = False, opset: int | None = None,
                 verbose: bool = False) -> Path:
    """Write ``model`` (in evaluation mode, on the CPU, float32) to ``path`` as ONNX or TorchScript.

    ``input_shape`` is (batch, channels, height, width); it defaults to one image of the model's
    own input size for ncslim architectures and is required for other models. The model given is
    not changed. Returns the path written.

    The exporter's own output (progress lines, log records, warnings) is held back unless
    ``verbose``; if the export fails, it is replayed before the error propagates.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if opset is not None and format != "onnx":
        raise ValueError(f"--opset is for ONNX; {format} has no opset (leave --opset out)")
    model = unwrap(model)
    shape = _input_shape(model, input_shape)
    model = copy.deepcopy(model).float().cpu().eval()
    try:
        with torch.no_grad():
            model(example_input(shape))
    except RuntimeError as err:
        raise ValueError(f"the model does not take inputs of shape {shape}: "
                         f"{first_line(err)}") from None
    if format == "onnx":
        _needs("onnx", "onnxscript")
    with atomic_path(path) as tmp:
        with _held_back(unless=verbose):
            if format == "onnx":
                _export_onnx(model, tmp, shape, fixed_batch, opset, verbose)
            else:
                _export_torchscript(model, tmp, shape)
        if format == "onnx":  # outside: the exporter's chatter is moot
            _check_opset_and_sign(tmp, opset)
    return Path(path)


def check_output(output: Path, model: Path, format: str, overwrite: bool = False) -> None:
    """Refuse, before anything is written, an ``output`` that is the model itself, a folder, a
    file ncslim did not export as ``format`` (unless ``overwrite``), a name whose suffix is
    another format's, or a place inside a run in progress."""
    flag = "--output"
    if output.resolve() == model.resolve():
        raise ValueError(f"{flag} {output} would overwrite the model itself; choose another")
    if output.is_dir():
        raise ValueError(f"{flag} {output} is a directory; name a file in it")
    if (output.exists() or output.is_symlink()) and not overwrite:
        why = not_a_file(output) if output.exists() else "a dangling link"
        why = why or own_export(output, format)
        if why:
            raise ValueError(f"{flag} {output} exists and is not an earlier {format} export "
                             f"({why}); choose another, or pass --overwrite to replace it")
    if output.suffix.lower() not in SUFFIXES[format]:
        other = next((f for f, names in SUFFIXES.items() if output.suffix.lower() in names), None)
        hint = f", or pass --format {other} for a {output.suffix} file" if other else ""
        raise ValueError(f"{flag} {output}: a {format} file is named *{SUFFIX[format]}; name it "
                         f"{output.with_suffix(SUFFIX[format]).name}{hint}")
    refuse_near_live_run(output, flag)


def _signature(format: str) -> str:
    import ncslim  # the package imports this module: read its version when the export runs

    return json.dumps({"writer": "ncslim", "version": ncslim.__version__, "format": format})


def own_export(path: Path, format: str) -> str | None:
    """None if ``path`` is an earlier ``format`` export by ncslim (its signature is inside),
    else why not, in words. Reads no more of a file than its signature needs; runs nothing."""
    if path.suffix.lower() not in SUFFIXES[format]:
        return f"not {SUFFIX[format]}"
    try:
        if format == "torchscript":
            with zipfile.ZipFile(path) as archive:
                entry = next((i for i in archive.infolist()
                              if i.filename.endswith(f"/extra/{SIGNATURE}")), None)
                signed = entry is not None and entry.file_size < 4096 and \
                    json.loads(archive.read(entry)).get("writer") == "ncslim"
        else:
            value = _onnx_metadata(path).get(SIGNATURE)
            signed = value is not None and json.loads(value).get("writer") == "ncslim"
    except Exception:  # noqa: BLE001  unreadable, another format: not known ours
        signed = False
    return None if signed else f"it holds no ncslim {format} signature"


def _varint(f: BinaryIO) -> int:
    value = shift = 0
    while True:
        byte = f.read(1)
        if not byte or shift > 63:
            raise ValueError("not a protobuf message")
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 0x80:
            return value


def _onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read field by field from the top-level message
    and seeking past the rest (the graph holds the weights): bounded memory whatever the file."""
    found: dict[str, str] = {}
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        for _ in range(MAX_TOP_FIELDS):  # a model has a few; more is not an export of ours
            if f.tell() >= size:
                return found
            field, wire = divmod(_varint(f), 8)
            if field == 0:
                raise ValueError("not a protobuf message")
            if wire == 0:
                _varint(f)
            elif wire in (1, 5):
                f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            elif wire == 2:
                length = _varint(f)
                if field != ONNX_METADATA_FIELD:
                    f.seek(length, os.SEEK_CUR)
                    continue
                if length > MAX_METADATA_ENTRY:
                    raise ValueError("an oversized metadata entry")
                entry = io.BytesIO(f.read(length))
                pair = {}
                while entry.tell() < length:
                    key, kind = divmod(_varint(entry), 8)
                    if kind != 2:
                        raise ValueError("not a metadata entry")
                    pair[key] = entry.read(_varint(entry)).decode("utf-8")
                found[pair.get(1, "")] = pair.get(2, "")
            else:
                raise ValueError("not an ONNX file")
    raise ValueError("too many fields for an ONNX model")


@contextmanager
def _held_back(unless: bool) -> Iterator[None]:
    """Hold back what the block prints to sys.stdout and sys.stderr, logs through
    :data:`EXPORTER_LOGGERS` and warns; replay it all if the block fails (its error may need it),
    drop it otherwise. ``unless``: let it all through as it comes."""
    if unless:
        with warnings.catch_warnings():  # shown once each, never turned into errors
            warnings.simplefilter("default")
            yield
        return
    records: list[logging.LogRecord] = []
    held = _Keep(records)
    saved: dict[logging.Logger, tuple[list[logging.Handler], bool]] = {}
    # torch's loggers have their own handlers and do not propagate: take over each of them
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS] + [
        logger for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and logger.handlers
        and name.split(".")[0] in EXPORTER_LOGGERS]
    for logger in loggers:
        if logger not in saved:
            saved[logger] = (logger.handlers, logger.propagate)
            logger.handlers, logger.propagate = [held], False
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, redirect_stdout(out), \
                redirect_stderr(err):
            warnings.simplefilter("always")
            yield
    except BaseException:
        _restore(saved)
        sys.stdout.write(out.getvalue())
        sys.stderr.write(err.getvalue())
        for record in records:
            logging.getLogger(record.name).handle(record)
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        raise
    finally:
        _restore(saved)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _restore(saved: dict[logging.Logger, tuple[list[logging.Handler], bool]]) -> None:
    for logger, (handlers, propagate) in saved.items():
        logger.handlers, logger.propagate = handlers, propagate


def _export_onnx(model: nn.Module, path: Path, shape: tuple[int, ...], fixed_batch: bool,
                 opset: int | None, verbose: bool) -> None:
    # torch.export specialises a dimension whose example size is 1: trace a batch of 2 when the
    # batch is to stay dynamic
    example = example_input(shape if fixed_batch else (max(2, shape[0]), *shape[1:]))
    dynamic = None if fixed_batch else ({0: torch.export.Dim("batch")},)
    options: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed": we never need it
    try:
        torch.onnx.export(model, (example,), path, dynamo=True, input_names=["input"],
                          output_names=["logits"], dynamic_shapes=dynamic, external_data=False,
                          verbose=verbose, **options)
    finally:
        registry_log.setLevel(level)


def _check_opset_and_sign(path: Path, opset: int | None) -> None:
    """The exporter may write another opset than asked, silently: refuse the file then. Else
    sign it as ncslim's (:func:`own_export`)."""
    import onnx

    graph = onnx.load(str(path))
    written = next((entry.version for entry in graph.opset_import
                    if entry.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise ValueError(f"--opset {opset}: this torch's ONNX exporter wrote opset {written} "
                         f"instead, so nothing was written; ask for an opset it supports "
                         f"(onnx knows up to {onnx.defs.onnx_opset_version()}), or leave "
                         f"--opset out for the exporter's default")
    entry = graph.metadata_props.add()
    entry.key, entry.value = SIGNATURE, _signature("onnx")
    onnx.save(graph, str(path))


def _export_torchscript(model: nn.Module, path: Path, shape: tuple[int, ...]) -> None:
    # TorchScript's deprecation notice, a warning, is held back with the rest (see the module doc)
    traced = torch.jit.trace(model, example_input(shape), check_trace=False)
    traced.save(str(path), _extra_files={SIGNATURE: _signature("torchscript")})


def check_export(model: nn.Module, path: str | os.PathLike, format: str,
                 input_shape: tuple[int, int, int, int] | None = None) -> float:
    """Largest |difference| between the exported file's outputs (ONNX Runtime or TorchScript)
    and ``model``'s on a random batch of ``input_shape`` (batch at least 3)."""
    model = copy.deepcopy(unwrap(model)).float().cpu().eval()
    shape = _input_shape(model, input_shape)
    x = example_input((max(3, shape[0]), *shape[1:])) if format == "onnx" else example_input(shape)
    with torch.no_grad():
        expected = model(x).numpy()
    if format == "onnx":
        got = onnx_session(path).run(None, {"input": x.numpy()})[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = torch.jit.load(str(path))(x).detach().numpy()
    return float(np.abs(got - expected).max())


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session (``threads``: intra-op threads; default: its own choice)."""
    _needs("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
