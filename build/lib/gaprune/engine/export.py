"""A gaprune checkpoint (baseline, pruned or weight-masked) exported to ONNX / TorchScript: the
model is rebuilt from its checkpoint (`load_model`: baseline architecture + plan, never
unpickled) and handed to `gaprune.deploy.export.export_model` (checked on the given inputs,
optionally timed). Files go to <out_dir>/<checkpoint stem>.onnx / .ts."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from gaprune.deploy.export import FORMATS, MIN_OPSET, ExportReport, export_model, require_export_extra
from gaprune.deploy.latency import LatencySettings
from gaprune.engine.checkpoint import example_input, load_model


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, inputs: torch.Tensor,
                      formats: Sequence[str] = FORMATS, opset: int = MIN_OPSET, tolerance: float = 1e-4,
                      latency: LatencySettings | None = None) -> ExportReport:
    if "onnx" in formats:
        require_export_extra()  # before the model is rebuilt or a file is written
    model, meta, _ = load_model(checkpoint)
    return export_model(model, example_input(meta), Path(out_dir) / Path(checkpoint).stem, inputs, formats, opset,
                        tolerance, latency, source=str(checkpoint))
