"""Export of a (pruned) model to ONNX and TorchScript, checked against the PyTorch model and
timed. `gaprune.engine.export.export_checkpoint` rebuilds a checkpoint and calls `export_model`.

Invariants:
- the model is exported in eval mode on CPU; both formats take `input` (N, C, H, W) with a
  dynamic batch dimension and return `logits` (N, classes);
- ONNX is written with `torch.onnx.export(..., opset_version >= 17, dynamo=False)` (the
  TorchScript-based exporter: it needs only `onnx`) and checked with `onnx.checker`; TorchScript
  with `torch.jit.trace` (every gaprune model is a static graph);
- files are written atomically (serialised in memory, then `atomic_write_bytes`);
- `check_exports` runs each export on the given (real) inputs and reports the max abs logit
  difference from the PyTorch model (onnxruntime for ONNX, CPU provider); `export_model`
  fails with a one-line GapruneError when a difference exceeds `tolerance` (default 1e-4);
- ONNX needs the optional `[export]` extra (onnx, onnxruntime); without it `require_export_extra`
  raises one line naming the install command, and the base install never imports them.
"""
from __future__ import annotations

import importlib.util
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.deploy.latency import LatencySettings, clock_threads, latency_fields, time_callable
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import atomic_write_bytes

FORMATS = ("onnx", "torchscript")
MIN_OPSET = 17
EXTRA_MISSING = "ONNX export needs the [export] extra: pip install -e '.[export]'"


def require_export_extra() -> None:
    """One-line error when onnx / onnxruntime (the `[export]` extra) are not installed."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise GapruneError(f"{EXTRA_MISSING} (missing: {', '.join(missing)})")


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    model = model.eval().cpu()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still supported
        torch.jit.save(torch.jit.trace(model, example.cpu()), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = MIN_OPSET) -> Path:
    require_export_extra()
    import onnx

    if int(opset) < MIN_OPSET:
        raise GapruneError(f"opset={opset} is too old; use an ONNX opset >= {MIN_OPSET}")
    model = model.eval().cpu()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (example.cpu(),), buffer, opset_version=int(opset), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def onnx_session(path: str | Path, clock: str = "wall"):
    """A CPU onnxruntime session with torch's thread count (1 on the CPU clock, so that the
    calling thread does all the work that the clock measures)."""
    require_export_extra()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = clock_threads(clock)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_exports(model: nn.Module, files: dict[str, Path], inputs: torch.Tensor) -> dict[str, float]:
    """Max abs logit difference of each exported file from `model` on `inputs` (CPU)."""
    model = model.eval().cpu()
    inputs = inputs.cpu().float()
    with torch.no_grad():
        reference = model(inputs).numpy()
    diffs = {}
    for fmt, path in files.items():
        if fmt == "torchscript":
            with torch.no_grad():
                out = load_torchscript(path)(inputs).numpy()
        else:
            out = onnx_session(path).run(None, {"input": inputs.numpy()})[0]
        diffs[fmt] = float(np.abs(out - reference).max())
    return diffs


def time_exports(model: nn.Module, files: dict[str, Path], example: torch.Tensor,
                 settings: LatencySettings) -> dict[str, dict[str, Any]]:
    """Latency fields (batch and throughput batch, CPU) of the PyTorch model and of each export."""
    timings = {"pytorch": latency_fields(model, example, "cpu", settings)}
    for fmt, path in files.items():
        if fmt == "torchscript":
            timings[fmt] = latency_fields(load_torchscript(path), example, "cpu", settings)
            continue
        session, fields = onnx_session(path, settings.clock), {}
        for key, batch in (("latency_ms", settings.batch), ("throughput_latency_ms", settings.throughput_batch)):
            x = np.random.default_rng(0).standard_normal((batch, *example.shape[1:])).astype(np.float32)
            seconds, _ = time_callable(lambda x=x: session.run(None, {"input": x}), settings.warmup, settings.repeats,
                                       settings.min_block_s, settings.clock)
            fields[key] = 1e3 * seconds
        fields["throughput"] = settings.throughput_batch / (fields["throughput_latency_ms"] / 1e3)
        timings[fmt] = fields
    return timings


@dataclass
class ExportReport:
    checkpoint: str
    files: dict[str, str]
    max_abs_diff: dict[str, float]
    samples: int
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"exported {self.checkpoint}:"]
        for fmt, path in self.files.items():
            out.append(f"  {fmt:<11} {path}  max |logit diff| {self.max_abs_diff[fmt]:.2e} on {self.samples} inputs")
        if self.latency:
            out.append("  latency     | batch-1 ms | throughput-batch ms | img/s")
            for name, t in self.latency.items():
                out.append(f"  {name:<11} | {t['latency_ms']:10.3f} | {t['throughput_latency_ms']:19.3f} | {t['throughput']:.0f}")
        return out


def export_model(model: nn.Module, example: torch.Tensor, stem: str | Path, inputs: torch.Tensor,
                 formats: Sequence[str] = FORMATS, opset: int = MIN_OPSET, tolerance: float = 1e-4,
                 latency: LatencySettings | None = None, source: str = "") -> ExportReport:
    """Write <stem>.onnx / <stem>.ts of `model` (input shaped like `example`), check them on `inputs`, time them."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise GapruneError(f"unknown export format(s) {unknown or formats}; choose from {', '.join(FORMATS)}")
    if "onnx" in formats:
        require_export_extra()  # before any file is written
    model = model.cpu().eval()
    if tuple(inputs.shape[1:]) != tuple(example.shape[1:]):
        raise GapruneError(f"inputs of shape {tuple(inputs.shape[1:])} do not fit the model's "
                           f"{tuple(example.shape[1:])}")
    stem = Path(stem)
    files: dict[str, Path] = {}
    if "onnx" in formats:
        files["onnx"] = export_onnx(model, example, stem.with_name(stem.name + ".onnx"), opset)
    if "torchscript" in formats:
        files["torchscript"] = export_torchscript(model, example, stem.with_name(stem.name + ".ts"))
    diffs = check_exports(model, files, inputs)
    bad = {fmt: diff for fmt, diff in diffs.items() if not diff <= tolerance}
    if bad:
        raise GapruneError(f"exported model differs from PyTorch by {bad} (> {tolerance}) on real inputs; "
                           "the export is not trustworthy for this model")
    timings = time_exports(model, files, example, latency) if latency is not None else {}
    return ExportReport(source or str(stem), {k: str(v) for k, v in files.items()}, diffs, int(inputs.shape[0]), timings)
