"""What a run and a model come to, for people: the final table of ``ncslim run``
(``summary.txt``) and what ``ncslim info`` prints."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..models import SlimmableNet
from ..models.measure import (
    check_batch_size,
    check_batch_time,
    check_threads,
    check_timing_time,
    count_flops,
    count_params,
    latency_rows,
    latency_warnings,
    threads_text,
)
from ..models.memory import TIMING_MEMORY, check_memory, forward_cost, gib
from ..models.scales import find_scales
from ..util.escape import first_line
from ..util.escape import shown as shown_text

log = logging.getLogger("ncslim")

SUMMARY_FILE = "summary.txt"  # the final table of ``run``, as printed


def format_results(results: dict[str, Any]) -> str:
    """The final table of ``run``; a run of several passes shows a line per pass."""
    acc, params, flops = results["accuracy"], results["params"], results["flops"]
    lines = [
        f"{'':<36}{'original':>14}{'pruned':>14}{'removed':>10}",
        f"{'parameters':<36}{params['original']:>14,}{params['pruned']:>14,}"
        f"{params['removed']:>10.1%}",
        f"{'FLOPs (one image)':<36}{flops['original']:>14,}{flops['pruned']:>14,}"
        f"{flops['removed']:>10.1%}",
    ]
    for device, table in results["latency"].items():
        for batch, row in table.items():
            label = (f"latency {device} {batch.replace('_', ' ')} (ms"
                     + (f", {threads_text(row['threads'])})" if "threads" in row else ")"))
            lines.append(f"{label:<36}{_ms(row, 'original'):>14}{_ms(row, 'pruned'):>14}"
                         f"{'x' + format(row['speedup'], '.2f'):>10}  speed-up "
                         f"(FLOPs ratio x{flops['ratio']:.2f})")
    if len(results.get("passes", [])) > 1:
        lines += _pass_lines(results["passes"], params["original"], flops["original"])
    else:
        lines += [
            f"test accuracy after sparsity training {acc['sparse']:.2%}",
            f"test accuracy right after pruning     {acc['pruned']:.2%}",
            f"test accuracy after fine-tuning       {acc['finetuned']:.2%}",
        ]
    if any("runs" in row for table in results["latency"].values() for row in table.values()):
        lines.append("latency: median ± half the interquartile range of the timed runs")
    lines += [f"warning: {w}" for w in results.get("warnings", [])]
    return "\n".join(lines)


def _pass_lines(passes: list[dict[str, Any]], params: int, flops: int) -> list[str]:
    """Per pass: its three test accuracies, and the parameters and FLOPs its model keeps of the
    original's."""
    lines = [f"{'test accuracy':<14}{'after sparsity':>16}{'right after pruning':>21}"
             f"{'fine-tuned':>12}{'params kept':>13}{'FLOPs kept':>12}"]
    for entry in passes:
        acc = entry["accuracy"]
        lines.append(f"{'pass ' + str(entry['pass']):<14}{acc['sparse']:>16.2%}"
                     f"{acc['pruned']:>21.2%}{acc['finetuned']:>12.2%}"
                     f"{entry['params'] / params:>13.1%}{entry['flops'] / flops:>12.1%}")
    return lines


def _ms(row: dict[str, Any], which: str) -> str:
    if f"{which}_q1_ms" not in row:  # results.json of an earlier version
        return f"{row[f'{which}_ms']:.2f}"
    half = (row[f"{which}_q3_ms"] - row[f"{which}_q1_ms"]) / 2
    return f"{row[f'{which}_ms']:.2f} ±{half:.2f}"


def check_timing_flags(batch_size: int, threads: int | None) -> None:
    """``info``'s --batch-size and --latency-threads, before any model is read or built."""
    check_batch_size(batch_size)
    check_threads(threads)


def check_timing(model: SlimmableNet, batch_size: int, device: torch.device,
                 threads: int | None) -> int | None:
    """Refuse to time ``model`` at ``batch_size`` on its input size when the activations would
    not fit in the memory of ``device``, or when a CPU timing would take more than a few
    minutes (both estimated on the meta device); the FLOPs of one image. A network whose
    forward pass cannot run on the meta device (a ``--model`` one may not) is not checked:
    None."""
    try:
        activations, flops = forward_cost(model)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        log.warning("the memory and time of timing %s cannot be estimated beforehand (%s)",
                    model.arch, first_line(err))
        return None
    size = model.input_size
    what = f"timing {model.arch} at batch {batch_size} on {size}x{size} images"
    fix = "lower --batch-size (or time a model made for smaller images)"
    if batch_size * activations > TIMING_MEMORY:
        raise ValueError(f"{what} would take {gib(batch_size * activations)} of memory for "
                         f"its activations, more than the {gib(TIMING_MEMORY)} info times "
                         f"with; {fix}")
    available = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    check_memory(what, batch_size * activations, fix, available=available)
    if device.type == "cpu":
        check_timing_time(flops, batch_size, threads, what)
    return flops


def describe(model: SlimmableNet, device: torch.device, batch_size: int = 64,
             threads: int = 1) -> dict[str, Any]:
    """What ``ncslim info`` prints: size, FLOPs, channels per prunable layer, latency (timed as
    ``run`` times it: :func:`latency_rows`)."""
    shape = model.input_shape()
    check_timing_flags(batch_size, threads)
    flops = check_timing(model, batch_size, device, threads)
    model = model.to(device)
    if flops is None:
        flops = count_flops(model, shape)
    info = {
        "arch": model.arch, "title": model.title(), "num_classes": model.num_classes,
        "in_channels": model.in_channels, "input_size": model.input_size,
        "params": count_params(model), "flops": flops,
        "channels": {name: gamma.numel() for name, gamma in find_scales(model).items()},
        "pruned_from": model.pruned_from, "trained_on": model.trained_on,
        "device": str(device),
    }
    rows = latency_rows([model], shape, device, (1,), threads)
    if batch_size != 1:
        if device.type == "cpu":  # from the time of one image, before the larger batch
            check_batch_time(rows["batch_1"][0].median, batch_size,
                             f"timing {model.arch} at batch {batch_size}")
        rows.update(latency_rows([model], shape, device, (batch_size,), threads))
    info["latency"] = {batch: {"median_ms": 1e3 * t.median, "q1_ms": 1e3 * t.q1,
                               "q3_ms": 1e3 * t.q3, "runs": t.runs, "threads": t.threads,
                               "spread": t.spread} for batch, (t,) in rows.items()}
    info["warnings"] = latency_warnings({device.type: info["latency"]})
    return info


def info_text(info: dict[str, Any], source: str | None = None) -> str:
    """``ncslim info``'s text of :func:`describe`'s record of the model read from ``source``
    (a model file; None for a fresh architecture). A ``pruned_from`` record of a full model
    smaller than this one is refused."""
    size = info["input_size"]
    lines = [f"{info['title']}: {info['num_classes']} classes, {info['in_channels']} input "
             f"channels, {size}x{size} images" + _trained_text(info["trained_on"]),
             f"parameters {info['params']:,}; FLOPs {info['flops']:,} "
             f"(MACs {info['flops'] // 2:,}) per image"]
    if info["pruned_from"]:
        full = info["pruned_from"]
        if full["flops"] < info["flops"]:
            raise ValueError(f"{source}: 'pruned_from' records a full model of "
                             f"{full['flops']:,} FLOPs, fewer than this model's {info['flops']:,}")
        lines.append(f"pruned from a model of {full['params']:,} parameters and "
                     f"{full['flops']:,} FLOPs ({1 - info['params'] / full['params']:.1%} / "
                     f"{1 - info['flops'] / full['flops']:.1%} removed)")
    for batch, row in info["latency"].items():
        lines.append(f"latency {info['device']} {batch.replace('_', ' ')}, "
                     f"{threads_text(row['threads'])}: {row['median_ms']:.2f} ms (middle half "
                     f"{row['q1_ms']:.2f}-{row['q3_ms']:.2f} ms, {row['runs']} runs)")
    lines += [f"warning: {warning}" for warning in info["warnings"]]
    lines.append("channels per prunable layer:")
    lines += [f"  {name:<28} {channels}" for name, channels in info["channels"].items()]
    return "\n".join(lines)


def _trained_text(record: dict[str, Any] | None, shown: int = 10) -> str:
    """'; trained on DATASET', with an image folder's size and first ``shown`` class names
    (text from the file, so its control characters are shown escaped)."""
    if not record:
        return ""
    text = f"; trained on {shown_text(record['dataset'])}"
    classes = record.get("classes")
    if classes:
        names = ", ".join(shown_text(name, 60) for name in classes[:shown])
        more = f", ... ({len(classes)} in all)" if len(classes) > shown else ""
        size = record.get("input_size")
        text += f" ({f'{size}x{size}; ' if size else ''}classes: {names}{more})"
    return text
