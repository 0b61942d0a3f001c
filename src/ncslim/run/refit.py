"""``ncslim finetune`` as one library call: fine-tune a model read from a file (a pruned model,
usually) into a run folder of its own, optionally distilling from a teacher model file."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..config import Config
from ..models.files import load_model, save_model
from ..util import distributed
from . import pipeline
from .rundir import check_out, claim, write_config


def finetune_model(model: nn.Module, cfg: Config, source: str, resume: bool = False,
                   from_scratch: bool = False,
                   trust_code: list[str] | None = None) -> tuple[nn.Module, float, Path]:
    """Fine-tune ``model`` (read from ``source``) by ``cfg`` into ``cfg.out``: the model, its
    test accuracy, and the model file written (``OUT/model.pt``, by the process that writes)."""
    out = Path(cfg.out)
    check_out(out, resume)
    device = pipeline.setup_device(cfg)
    model = model.to(device)
    teacher = load_model(cfg.teacher, device, trust_code) if cfg.distill else None
    data = pipeline.load_data(cfg, device)
    pipeline.check_fits(model, data, source)
    if teacher is not None:
        pipeline.check_fits(teacher, data, f"--teacher {cfg.teacher}")
    with claim(out, fresh=not resume, resume=resume):
        write_config(cfg, out, "finetune", data.info.fingerprint)
        model, acc = pipeline.finetune(model, data, cfg, out, resume=resume,
                                       from_scratch=from_scratch, teacher=teacher)
        if distributed.is_main():
            save_model(model, out / "model.pt")
    return model, acc, out / "model.pt"
