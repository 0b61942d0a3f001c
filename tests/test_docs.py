"""The code on the documentation pages runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_custom_models_page_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch_pruning")
    pytest.importorskip("onnxscript")
    from test_generic import MobileNetV2Style

    monkeypatch.chdir(tmp_path)
    gen = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
              for _ in range(3)]
    scope = {"torch": torch, "model": MobileNetV2Style(), "loader": loader}
    training, export, auto = python_blocks("custom-models.md")
    exec(training, scope)
    small, report = scope["small"], scope["report"]
    assert report.params_after < report.params_before
    assert report.removed_fraction == pytest.approx(0.5, abs=0.05)
    exec(export.replace("(1, 3, 224, 224)", "(1, 3, 16, 16)"), scope)
    assert (tmp_path / "small.onnx").stat().st_size > 0
    assert small(loader[0][0]).shape == (8, 10)
    scope["model"] = MobileNetV2Style()  # the lambda controller's block, on a fresh model
    scope["loader"] = loader * 3  # 27 steps: two updates, the first measurement applied
    exec(auto, scope)
    assert scope["auto"].steps == 27 and scope["auto"].lam > scope["START_LAM"]
    assert scope["report"].removed_fraction == pytest.approx(0.5, abs=0.05)
