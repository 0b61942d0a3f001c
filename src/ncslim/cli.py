"""The ``ncslim`` command line: each subcommand maps to one library call.

    ncslim run                                  # the demo: Fashion-MNIST, small VGG-19, ~minutes
    ncslim run --config vgg19-cifar10 --penalty tl1 --lam 1e-4 --out runs/vgg-tl1
    ncslim prune --checkpoint runs/x/model.pt --dry-run --ratios 0.3,0.5,0.7
    ncslim info --checkpoint runs/x/final.pt
    ncslim export runs/x/final.pt --format onnx

User errors (bad values, missing data, a wrong checkpoint) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from .commandline import build_parser, unknown_flags
from .config import Config, command_config, config_fields
from .config.checks import TARGETS
from .config.commands import TRAINING_COMMANDS
from .models import build_model, check_arch
from .models.export import SUFFIX, check_export, check_output, export_model
from .models.files import load_model, run_lock, save_model
from .models.measure import count_params
from .report import summary
from .run import passes, pipeline, prunerule
from .run.device import resolve_device
from .run.refit import finetune_model
from .run.rundir import RUN_MARKS
from .run.train import TrainingDiverged
from .sparsity.registry import own_rule_label
from .util import distributed
from .util.escape import first_line
from .util.escape import shown as escaped
from .util.files import atomic_write_text

log = logging.getLogger("ncslim")
__all__ = ["build_parser", "main"]
DISTRIBUTED = TRAINING_COMMANDS  # the commands torchrun may start several times
CHECK_TOLERANCE = 1e-4  # largest |output difference| accepted between an export and PyTorch


def _config(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> Config:
    """The command's configuration: its flags over the model's record over the preset."""
    names = {name for name, _, _ in config_fields()}
    given = {k: v for k, v in vars(args).items() if k in names}
    return command_config(args.command, args.config, given, recorded)


def cmd_run(args: argparse.Namespace) -> None:
    cfg = _config(args)
    results = passes.run(cfg, resume=args.resume)
    if distributed.is_main():
        table = summary.format_results(results)
        print(table)
        print(f"results: {Path(cfg.out) / 'results.json'} (this table: "
              f"{Path(cfg.out) / summary.SUMMARY_FILE})")


def cmd_train(args: argparse.Namespace) -> None:
    cfg = _config(args)
    result = pipeline.train(cfg, resume=args.resume)
    if distributed.is_main():
        print(f"test accuracy {result['test_acc']:.2%}; model: {result['model']}")


def _full_model_hint(path: Path) -> str:
    """Where the full model of a pruned one probably is: a file that exists, when one does."""
    run_dir = path.parent.parent if path.parent.name in ("finetune", "train") else path.parent
    for candidate in (run_dir / "train" / "model.pt", run_dir / "model.pt"):
        if candidate.is_file() and candidate.resolve() != path.resolve():
            return str(candidate)
    return ("the full model it was pruned from (model.pt of ncslim train, train/model.pt of "
            "ncslim run)")


def _check_ratios(args: argparse.Namespace) -> None:
    """``--ratios`` lists the dry run's prunings: it replaces the rule of the preset or of the
    model's record, but one given beside it on the command line is a contradiction."""
    if args.ratios is None:
        return
    if not args.dry_run:
        raise ValueError("--ratios lists the prunings of a dry run; add --dry-run, or prune once "
                         "with --ratio")
    given = [f"--{k.replace('_', '-')}" for k in TARGETS
             if getattr(args, k, None) is not None]
    if given:
        raise ValueError(f"--ratios and {given[0]} are two pruning rules at once; a dry run "
                         f"reports each of --ratios, or the one rule given: drop one of them")


def cmd_prune(args: argparse.Namespace) -> None:
    _check_ratios(args)
    device = resolve_device(_config(args).device)  # the flags are checked before the file
    model = load_model(args.checkpoint, device, args.trust_model_code)
    cfg = _config(args, model.trained_on)
    if model.pruned_from is not None and not args.again:
        kept = count_params(model) / model.pruned_from["params"]
        raise ValueError(f"{args.checkpoint} is already pruned (it keeps {kept:.1%} of its full "
                         f"model's parameters); prune {_full_model_hint(Path(args.checkpoint))}, "
                         f"or pass --again to prune this one further")
    if not args.dry_run:
        _check_prune_out(Path(cfg.out), args.overwrite)
    data = None
    if args.evaluate:
        data = pipeline.load_data(cfg, device, training=False)
        pipeline.check_fits(model, data, args.checkpoint)
    if args.dry_run:
        _prune_dry_run(args, model, cfg, data)
        return
    small, report = prunerule.prune(model, cfg)
    out = Path(cfg.out)
    record: dict[str, Any] = report.to_dict()
    if data is not None:
        log.info("evaluating the model before and after pruning on %s", cfg.dataset)
        record["dataset"] = cfg.dataset
        record["accuracy_before"] = pipeline.evaluate(model, data)[0]
        record["accuracy_after"] = pipeline.evaluate(small, data)[0]
    with run_lock(out, fresh=False):  # rewrites its own outputs, never a live run's
        # the record first: a pruned.pt is never left without it (which a rerun would refuse)
        atomic_write_text(out / "prune.json", json.dumps(record, indent=2) + "\n")
        save_model(small, out / "pruned.pt")
    print(report)
    if data is not None:
        print(f"test accuracy on {cfg.dataset} {record['accuracy_before']:.2%} -> "
              f"{record['accuracy_after']:.2%}")
    print(f"pruned model: {out / 'pruned.pt'}")


def _check_prune_out(out: Path, overwrite: bool) -> None:
    """prune writes pruned.pt and prune.json into ``out``: it replaces an earlier prune's, and
    another command's only when asked."""
    if overwrite or out.is_file():
        return  # a file where the folder should be: the writing names it
    if (out / "config.json").exists():
        raise ValueError(f"{out} holds a run (config.json), whose results.json describes its "
                         f"pruned.pt; choose another --out, or pass --overwrite")
    if (out / "pruned.pt").exists() and not (out / "prune.json").exists():
        raise ValueError(f"{out / 'pruned.pt'} was not written by ncslim prune (no prune.json "
                         f"beside it); choose another --out, or pass --overwrite")


def _prune_dry_run(args: argparse.Namespace, model: Any, cfg: Config, data: Any) -> None:
    """Report (and with ``data``, evaluate) the pruning at each of ``--ratios``, or by the
    config's own rule (ratio, threshold, target FLOPs or parameters, VCP's); write nothing."""
    ratios = _ratios(args.ratios) if args.ratios else None
    pairs = prunerule.prune_dry_run(model, cfg, ratios)
    if data is not None:
        print(f"test accuracy on {cfg.dataset} before pruning "
              f"{pipeline.evaluate(model, data)[0]:.2%}")
    for label, (small, report) in pairs:
        print(f"--- {label}\n{report}")
        if data is not None:
            print(f"test accuracy right after pruning {pipeline.evaluate(small, data)[0]:.2%}")
        if report.floored:
            print(f"warning: at {label}, {len(report.floored)} layer(s) would lose every "
                  f"channel and keep only --min-channels {cfg.min_channels}")


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--ratios must be comma-separated numbers, got {text!r}") from None
    bad = [r for r in ratios if not 0 <= r < 1]
    if not ratios or bad:
        raise ValueError(f"--ratios must be numbers in [0, 1), got {text!r}")
    return ratios


def cmd_finetune(args: argparse.Namespace) -> None:
    model = load_model(args.checkpoint, resolve_device(_config(args).device),
                       args.trust_model_code)
    cfg = _config(args, model.trained_on)
    if cfg.distill and cfg.teacher is None:
        raise ValueError(f"--distill needs --teacher MODEL, the model to distil from, e.g. "
                         f"{_full_model_hint(Path(args.checkpoint))}")
    _, acc, written = finetune_model(model, cfg, args.checkpoint, args.resume,
                                     args.from_scratch, args.trust_model_code)
    if distributed.is_main():
        print(f"test accuracy {acc:.2%}; model: {written}")


def cmd_info(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    summary.check_timing_flags(args.batch_size, args.latency_threads)
    if args.checkpoint:
        model = load_model(args.checkpoint, device, args.trust_model_code)
    else:
        if args.trust_model_code:
            raise ValueError("--trust-model-code acts on the model file of --checkpoint; give "
                             "one, or leave it out")
        check_arch(args.arch, args.depth, args.width)
        spec = (args.arch, args.num_classes, args.in_channels, args.width, args.depth)
        with torch.device("meta"):  # its timing fits, before it is built
            skeleton = build_model(*spec)
        summary.check_timing(skeleton, args.batch_size, device, args.latency_threads)
        model = build_model(*spec)
    info = summary.describe(model, device, args.batch_size, args.latency_threads)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(summary.info_text(info, args.checkpoint))


def cmd_sweep(args: argparse.Namespace) -> None:
    from .run.sweep import parse_shard, run_sweep

    listing = run_sweep(args.sweep_file, parse_shard(args.shard), dry_run=args.dry_run)
    for run, status in listing:
        own = own_rule_label(run.config.penalty)
        ratios = ",".join(f"{r:g}" if r is not None else own or "its target" for r in run.ratios)
        print(f"{status:<8} {run.name:<44} ratios {ratios}  -> {run.dir}")
    print(f"{len(listing)} training run(s) in this shard")
    lost = [run.name for run, status in listing if status == "diverged"]
    if lost and not args.dry_run:
        raise TrainingDiverged(f"{len(lost)} run(s) diverged and were set aside, the others ran: "
                               f"{', '.join(lost)}; lower their lr (or change their settings) "
                               f"in {args.sweep_file} and run the sweep again")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import report

    for kind, path in report(args.runs_dir, args.out).items():
        print(f"{kind:<9} {path}")


def cmd_export(args: argparse.Namespace) -> None:
    model = load_model(args.model, trust_code=args.trust_model_code)
    shape = _shape(args.input_shape) if args.input_shape else None
    output = Path(args.output) if args.output else Path(args.model).with_suffix(
        SUFFIX[args.format])
    check_output(output, Path(args.model), args.format, args.overwrite)
    export_model(model, output, args.format, shape, fixed_batch=args.fixed_batch,
                 opset=args.opset, verbose=args.verbose)
    print(f"{args.format}: {output} ({output.stat().st_size / 2**20:.2f} MiB)")
    if not args.no_check:
        diff = check_export(model, output, args.format, shape)
        runtime = "ONNX Runtime" if args.format == "onnx" else "TorchScript"
        if not diff <= CHECK_TOLERANCE:
            raise ValueError(f"{output}: {runtime} outputs differ from PyTorch's by {diff:.3g} "
                             f"(more than {CHECK_TOLERANCE}); the file is kept for inspection")
        print(f"checked in {runtime}: outputs within {diff:.2g} of PyTorch's")


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be B,C,H,W integers, got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"--input-shape must be 4 positive integers B,C,H,W, got {text!r}")
    return shape  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sys.stderr.write(unknown_flags(args.command, extra))
        return 2
    quiet = distributed.launched() and os.environ.get("RANK", "0") != "0"  # rank 0 speaks
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    handler = handlers()[args.command]
    try:
        if distributed.launched() and args.command not in DISTRIBUTED:
            raise ValueError(f"this command runs in one process; start it without torchrun "
                             f"(only {', '.join(DISTRIBUTED)} use several)")
        handler(args)
        distributed.shutdown(finished=True)
    except TrainingDiverged as err:
        print(f"ncslim {args.command}: {escaped(err, 2000)}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as err:
        print(f"ncslim {args.command}: error: {first_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only directory, ...
        where = f" ({escaped(err.filename, 2000)})" if err.filename else ""
        reason = escaped(err.strerror) if err.strerror else first_line(err)
        print(f"ncslim {args.command}: error: {reason}{where}; files "
              f"written before are intact; fix it{_continue_with(args, argv) or ' and rerun'}",
              file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print(f"ncslim {args.command}: error: the GPU ran out of memory; lower --batch-size or "
              f"--width", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ncslim {args.command}: interrupted{_continue_with(args, argv)}", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0


def _continue_with(args: argparse.Namespace, argv: list[str] | None) -> str:
    """'; continue with: <the exact command>' for a command that resumes, else ''."""
    if args.command == "sweep":  # it has no --resume: the same command skips what is done
        return "; continue with the same command (finished runs are skipped)"
    if args.command not in TRAINING_COMMANDS or not _holds_run(args):
        return ""  # nothing to resume: the same command again is the way on
    words = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in words:
        words.append("--resume")
    if argv is not None:  # called from Python: name the command as a user types it
        prefix = ["ncslim"]
    elif Path(sys.argv[0]).name == "ncslim":
        prefix = [sys.argv[0]]  # the same script, e.g. .venv/bin/ncslim when not activated
    else:
        prefix = [Path(sys.executable).name, "-m", "ncslim"]
    if distributed.launched():
        prefix = ["torchrun", "<the same torchrun flags>", "-m", "ncslim"]
    return f"; continue with: {shlex.join(prefix + words)}"


def _holds_run(args: argparse.Namespace) -> bool:
    """Whether the command's --out holds a run that --resume can continue."""
    try:
        out = Path(_config(args).out)
    except (ValueError, TypeError, OSError):  # the advice stays as it was
        return True
    return any((out / mark).is_file() for mark in RUN_MARKS)


if __name__ == "__main__":
    sys.exit(main())


def handlers() -> dict[str, Any]:
    """One function per command of the command table (:mod:`ncslim.config.commands`), looked
    up when called."""
    return {"run": cmd_run, "train": cmd_train, "prune": cmd_prune, "finetune": cmd_finetune,
            "info": cmd_info, "sweep": cmd_sweep, "report": cmd_report, "export": cmd_export}
