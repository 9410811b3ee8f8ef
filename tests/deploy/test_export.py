"""ONNX / TorchScript export of pruned checkpoints: round trip on LeNet-5 and ResNet-20 (ONNX
tests skip cleanly without the [export] extra), and the one-line error when it is missing."""
from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from gaprune.deploy import export as export_module
from gaprune.deploy.export import EXTRA_MISSING
from gaprune.engine.export import export_checkpoint
from gaprune.deploy.latency import LatencySettings
from gaprune.engine.checkpoint import save_checkpoint
from gaprune.models import build_model
from gaprune.pruning.importance import random_importance
from gaprune.pruning.physical import prune_model
from gaprune.pruning.units import discover_units
from gaprune.search.encodings import build_encoding
from gaprune.utils.errors import GapruneError

HAS_EXTRA = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
CASES = {"lenet5": (1, True), "resnet20": (3, False)}


def pruned_checkpoint(tmp_path, name: str):
    """A randomly pruned `name` saved as a gaprune pruned checkpoint, and inputs that fit it."""
    channels, include_linear = CASES[name]
    torch.manual_seed(0)
    model = build_model(name, 10, channels, 32).eval()
    x0 = torch.zeros(1, channels, 32, 32)
    units = discover_units(model, x0, include_linear=include_linear)
    encoding = build_encoding("ratio", units, random_importance(model, units), model=model)
    plan = encoding.decode(encoding.random_genome(random.Random(0)))
    pruned = prune_model(model, units, plan, x0)
    meta = {"model": {"name": name, "include_linear": include_linear, "kwargs": {}},
            "data": {"name": "digits", "num_classes": 10, "in_channels": channels, "image_size": 32},
            "val_acc": 0.0, "test_acc": 0.0, "macs": 1, "params": 1}
    path = tmp_path / f"pruned-{name}.pt"
    save_checkpoint(path, pruned, meta, plan=plan)
    return path, torch.randn(8, channels, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(CASES) if not HAS_EXTRA else ["lenet5"])  # with the extra: both below
def test_torchscript_round_trip(tmp_path, name):
    path, inputs = pruned_checkpoint(tmp_path, name)
    report = export_checkpoint(path, tmp_path / "export", inputs, formats=["torchscript"])
    assert report.max_abs_diff["torchscript"] <= 1e-4
    assert (tmp_path / "export" / f"pruned-{name}.ts").is_file()


@pytest.mark.skipif(not HAS_EXTRA, reason="needs the [export] extra (onnx, onnxruntime)")
@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_round_trip_and_latency(tmp_path, name):
    import onnx

    path, inputs = pruned_checkpoint(tmp_path, name)
    settings = LatencySettings(repeats=1, warmup=1, throughput_batch=4, min_block_s=0.001)
    report = export_checkpoint(path, tmp_path / "export", inputs, latency=settings if name == "lenet5" else None)
    assert set(report.max_abs_diff) == {"onnx", "torchscript"}
    assert max(report.max_abs_diff.values()) <= 1e-4
    graph = onnx.load(str(tmp_path / "export" / f"pruned-{name}.onnx"))
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 17
    if name != "lenet5":
        return  # latency is timed on LeNet-5 only (test time)
    assert set(report.latency) == {"pytorch", "onnx", "torchscript"}
    assert all(t["latency_ms"] > 0 and t["throughput"] > 0 for t in report.latency.values())
    assert any("onnx" in line for line in report.lines())


def test_missing_extra_is_one_clear_line(tmp_path, monkeypatch):
    path, inputs = pruned_checkpoint(tmp_path, "lenet5")
    real = importlib.util.find_spec
    monkeypatch.setattr(export_module.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnx", "onnxruntime") else real(name, *a))
    with pytest.raises(GapruneError) as err:
        export_checkpoint(path, tmp_path / "export", inputs)
    assert str(err.value).startswith(EXTRA_MISSING) and "\n" not in str(err.value)
    assert not (tmp_path / "export").exists()  # nothing written
    export_checkpoint(path, tmp_path / "export", inputs, formats=["torchscript"])  # TorchScript needs no extra


def test_unknown_format_and_bad_inputs(tmp_path):
    path, inputs = pruned_checkpoint(tmp_path, "lenet5")
    with pytest.raises(GapruneError, match="unknown export format"):
        export_checkpoint(path, tmp_path / "export", inputs, formats=["tflite"])
    with pytest.raises(GapruneError, match="do not fit"):
        export_checkpoint(path, tmp_path / "export", torch.zeros(2, 3, 32, 32), formats=["torchscript"])
