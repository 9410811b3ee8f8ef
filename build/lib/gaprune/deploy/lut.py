"""A latency lookup table (`LatencyLUT`) and the plan cost built on it (`LatencyCost`).

The per-layer LUT: every conv / linear / BatchNorm layer a unit changes is timed as a fresh layer
of that geometry (on a random input of its input shape and the LUT's batch) on a grid of
(kept input, kept output) widths; its sum over layers, bilinearly interpolated between grid
points, is a plan's LUT sum. The full model and a few uniform-width calibration plans (physically
pruned) are timed in the same interleaved rounds as the grid points, so a slow spell of a shared
machine hits one round of every point alike (`time_interleaved`, min per point). A plan's
prediction is `base_us + slope * (LUT sum - LUT sum at full width)`: the anchored least-squares
line through the calibration plans carries what the isolated layers miss (activations, residual
adds, pooling, per-call overhead), in proportion to the layer time a plan removes.

Invariants:
- grid widths per layer are `max(1, round(width * f))` for f in `fractions` (1.0 always included);
- after measuring, each layer's table is made non-decreasing along both width axes (running
  maximum) and `slope > 0`, so a prediction never falls when a unit keeps more channels;
- predictions are microseconds at the LUT's batch and device; `predict(full widths)` equals the
  measured full-model latency (`base_us`);
- identical layer geometries are timed once; a LUT is cached as JSON keyed by format `VERSION`,
  device, thread count, checkpoint content hash, input size and batch (`lut_cache_file`) and
  reused only when its recorded version, key and layer list match (a changed format re-measures).
"""
from __future__ import annotations

import copy
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.deploy.latency import clock_threads, device_name, inference_call, time_interleaved
from gaprune.models.tracing import trace_layers
from gaprune.pruning.importance import file_digest
from gaprune.pruning.physical import prune_model
from gaprune.pruning.plan import Plan
from gaprune.pruning.units import PrunableUnit
from gaprune.utils.io import read_json, write_json

FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
CALIBRATION = (0.3, 0.55, 0.8)  # uniform keep fractions of the whole-model calibration plans
VERSION = 2  # bump when the cached format or what it measures changes: old cache files are re-measured


@dataclass
class LayerOp:
    """One layer a plan changes: geometry at full width and the units its widths follow."""

    name: str
    kind: str  # conv | linear | bn
    in_unit: int  # -1: width fixed
    out_unit: int
    in_width: int  # unit channels in (layer width = in_width * in_repeat: a flatten's features, a grouped unit's groups)
    out_width: int  # unit channels out (layer width = out_width * out_repeat)
    in_repeat: int
    geometry: dict[str, Any]  # conv: kernel, stride, padding, dilation, depthwise, groups, bias, hw; linear: bias
    out_repeat: int = 1

    def key(self) -> str:
        return json.dumps([self.kind, self.in_width, self.out_width, self.in_repeat, self.out_repeat, self.geometry],
                          sort_keys=True)


def trace_ops(model: nn.Module, units: Sequence[PrunableUnit], example: torch.Tensor) -> list[LayerOp]:
    """The conv / linear / BN layers whose width follows some unit, with their input shapes."""
    out_unit = {name: i for i, unit in enumerate(units) for name in unit.out_modules}
    in_unit = {name: (i, rep) for i, unit in enumerate(units) for name, rep in unit.in_modules.items()}
    out_repeat = {s.layer: len(s.idx) // unit.channels for unit in units for s in unit.slices if s.kind == "out"}
    shapes: dict[str, tuple[int, ...]] = {}
    trace_layers(model, example, set(out_unit) | set(in_unit),
                 lambda name, _m, inputs, _o: shapes.__setitem__(name, tuple(inputs[0].shape)))
    ops = []
    for name, shape in shapes.items():
        module = model.get_submodule(name)
        unit_in, repeat = in_unit.get(name, (-1, 1))
        unit_out = out_unit.get(name, -1)
        out_rep = out_repeat.get(name, 1) if unit_out >= 0 else 1
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            geometry = {"kernel": list(module.kernel_size), "stride": list(module.stride),
                        "padding": list(module.padding) if not isinstance(module.padding, str) else module.padding,
                        "dilation": list(module.dilation), "depthwise": depthwise, "bias": module.bias is not None,
                        "groups": 1 if depthwise else module.groups, "hw": list(shape[2:])}
            if depthwise:
                unit_in = unit_out = unit_out if unit_out >= 0 else unit_in
                repeat = out_rep = out_rep if unit_out >= 0 else repeat
            ops.append(LayerOp(name, "conv", unit_in, unit_out, module.in_channels // repeat, module.out_channels // out_rep,
                               repeat, geometry, out_rep))
        elif isinstance(module, nn.Linear):
            ops.append(LayerOp(name, "linear", unit_in, unit_out, module.in_features // repeat, module.out_features // out_rep,
                               repeat, {"bias": module.bias is not None}, out_rep))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and len(shape) == 4:
            ops.append(LayerOp(name, "bn", unit_out, unit_out, module.num_features // out_rep,
                               module.num_features // out_rep, out_rep, {"hw": list(shape[2:])}, out_rep))
    return sorted(ops, key=lambda op: op.name)


def grid(width: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    return sorted({max(1, int(round(width * f))) for f in fractions} | {width})


def _layer(op: LayerOp, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh layer of `op`'s geometry at (cin kept input, cout kept output) unit channels, and its input shape."""
    g = op.geometry
    cin, cout = cin * op.in_repeat, cout * op.out_repeat
    if op.kind == "conv":
        groups = cin if g["depthwise"] else g.get("groups", 1)
        cout = cin if g["depthwise"] else cout
        layer = nn.Conv2d(cin, cout, tuple(g["kernel"]), tuple(g["stride"]),
                          g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"]),
                          tuple(g["dilation"]), groups=groups, bias=g["bias"])
        return layer, (cin, *g["hw"])
    if op.kind == "linear":
        return nn.Linear(cin, cout, bias=g["bias"]), (cin,)
    return nn.BatchNorm2d(cin), (cin, *g["hw"])


def _first_channels(units: Sequence[PrunableUnit], keep: Sequence[int]) -> Plan:
    """A plan keeping the first `keep[i]` channels of unit i (latency does not depend on which)."""
    return Plan(keep={u.name: tuple(range(k)) for u, k in zip(units, keep)},
                channels={u.name: u.channels for u in units})


def anchored_slope(lut_us: Sequence[float], measured_us: Sequence[float], full_lut_us: float, base_us: float) -> float:
    """Least-squares slope of measured vs LUT-sum latency through the full-width point; 1.0 when the
    calibration plans do not determine a positive one (then they differ by less than the timing noise).
    Slopes well above 1 are real: at a large batch LeNet-5's ReLU / pooling cost as much as its layers."""
    x = np.asarray(lut_us, dtype=np.float64) - full_lut_us
    y = np.asarray(measured_us, dtype=np.float64) - base_us
    slope = float(x @ y / (x @ x)) if x @ x > 0 else 1.0
    return slope if math.isfinite(slope) and slope > 0 else 1.0


class LatencyLUT:
    """Per-layer latency tables (microseconds) over width grids, the measured full model and the
    whole-model calibration slope."""

    def __init__(self, ops: list[LayerOp], tables: dict[str, dict[str, Any]], base_us: float, meta: dict[str, Any],
                 slope: float = 1.0):
        self.ops, self.tables, self.base_us, self.meta, self.slope = ops, tables, float(base_us), meta, float(slope)
        self.full_lut_us = self.lut_us()

    @classmethod
    def measure(cls, model: nn.Module, units: Sequence[PrunableUnit], example: torch.Tensor, device,
                batch: int = 1, repeats: int = 15, fractions: Sequence[float] = FRACTIONS,
                meta: dict[str, Any] | None = None, clock: str = "wall", stat: str = "min",
                calibration: Sequence[float] = CALIBRATION) -> "LatencyLUT":
        """Time every grid point, the full model and the uniform `calibration` plans in `repeats`
        interleaved rounds (`time_interleaved`) and keep the min (`stat=min`) or median per point."""
        device = torch.device(device)
        clock = clock if device.type == "cpu" else "wall"
        ops = trace_ops(model, units, example)
        grids: dict[str, tuple[LayerOp, list[int], list[int]]] = {}
        for op in ops:
            ins = grid(op.in_width, fractions) if op.in_unit >= 0 else [op.in_width]
            depthwise = op.kind == "bn" or (op.kind == "conv" and op.geometry["depthwise"])
            outs = [0] if depthwise else grid(op.out_width, fractions) if op.out_unit >= 0 else [op.out_width]
            grids.setdefault(op.key(), (op, ins, outs))
        generator = torch.Generator().manual_seed(0)
        fns = []
        for op, ins, outs in grids.values():
            for cin in ins:
                for cout in outs:
                    layer, shape = _layer(op, cin, cout)
                    x = torch.randn((batch, *shape), generator=generator).to(device)
                    fns.append(inference_call(layer.eval().to(device), x))
        cal_keeps = [[max(1, int(round(u.channels * f))) for u in units] for f in calibration]
        x = torch.randn((batch, *example.shape[1:]), generator=generator).to(device)
        models = [copy.deepcopy(model)] + [prune_model(model, units, _first_channels(units, keep), example)
                                           for keep in cal_keeps]
        fns += [inference_call(m.eval().to(device), x) for m in models]
        samples = time_interleaved(fns, repeats=repeats, clock=clock)
        us = 1e6 * (np.min(samples, axis=0) if stat == "min" else np.median(samples, axis=0))
        tables: dict[str, dict[str, Any]] = {}
        start = 0
        for key, (op, ins, outs) in grids.items():
            values = us[start:start + len(ins) * len(outs)].reshape(len(ins), len(outs))
            start += values.size
            values = np.maximum.accumulate(np.maximum.accumulate(values, axis=0), axis=1)
            tables[key] = {"ins": ins, "outs": outs, "us": values.tolist()}
        base_us, cal_us = float(us[start]), us[start + 1:]
        lut = cls(ops, tables, base_us, {})
        cal_lut = [lut.lut_us(keep) for keep in cal_keeps]
        slope = anchored_slope(cal_lut, cal_us, lut.full_lut_us, base_us)
        meta = {**(meta or {}), "batch": int(batch), "fractions": list(fractions), "clock": clock, "stat": stat,
                "repeats": int(repeats), "calibration": [{"fraction": f, "lut_us": a, "measured_us": float(b)}
                                                         for f, a, b in zip(calibration, cal_lut, cal_us)]}
        return cls(ops, tables, base_us, meta, slope)

    def layer_us(self, op: LayerOp, cin: float, cout: float) -> float:
        table = self.tables[op.key()]
        ins, outs, us = table["ins"], table["outs"], np.asarray(table["us"], dtype=np.float64)
        rows = np.array([np.interp(cout, outs, row) if len(outs) > 1 else row[0] for row in us])
        return float(np.interp(cin, ins, rows)) if len(ins) > 1 else float(rows[0])

    def lut_us(self, keep: Sequence[int] | None = None) -> float:
        """Sum of the layer entries with `keep[i]` channels kept in unit i (None: full width)."""
        total = 0.0
        for op in self.ops:
            cin = keep[op.in_unit] if keep is not None and op.in_unit >= 0 else op.in_width
            cout = keep[op.out_unit] if keep is not None and op.out_unit >= 0 else op.out_width
            total += self.layer_us(op, cin, cout)
        return total

    def predict_widths(self, keep: Sequence[int]) -> float:
        """Predicted latency (us) with `keep[i]` channels kept in unit i."""
        return self.base_us + self.slope * (self.lut_us(keep) - self.full_lut_us)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "meta": self.meta, "base_us": self.base_us, "slope": self.slope,
                "ops": [op.__dict__ for op in self.ops], "tables": self.tables}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LatencyLUT":
        if data.get("version") != VERSION:
            raise ValueError(f"latency LUT format {data.get('version')} is not {VERSION}")
        return cls([LayerOp(**op) for op in data["ops"]], data["tables"], data["base_us"], data["meta"], data["slope"])


def lut_key(checkpoint: str | Path | None, example: torch.Tensor, device, batch: int,
            clock: str = "wall") -> dict[str, Any]:
    """What a cached LUT must match: format version, device (+ CPU model, threads, clock), checkpoint
    hash, input size, batch."""
    device = torch.device(device)
    clock = clock if device.type == "cpu" else "wall"
    return {"format": VERSION, "device": device_name(device), "cpu": platform.processor() or platform.machine(),
            "threads": clock_threads(clock), "clock": clock, "torch": torch.__version__,
            "checkpoint": file_digest(checkpoint) if checkpoint is not None else None,
            "input": list(example.shape[1:]), "batch": int(batch)}


def lut_cache_file(cache_dir: str | Path, checkpoint: str | Path, key: dict[str, Any]) -> Path:
    """Beside the importance cache: <stem>-<hash>-latency-v<format>-<device>-<threads>t<clock>-<CxHxW>-b<batch>.json."""
    device = "".join(c if c.isalnum() else "_" for c in key["device"])
    size = "x".join(map(str, key["input"]))
    return Path(cache_dir) / f"{Path(checkpoint).stem}-{key['checkpoint']}-latency-v{key['format']}-{device}-{key['threads']}t{key['clock']}-{size}-b{key['batch']}.json"


def load_or_measure(model: nn.Module, units: Sequence[PrunableUnit], example: torch.Tensor, device,
                    checkpoint: str | Path | None = None, cache_dir: str | Path | None = None,
                    batch: int = 1, repeats: int = 15, clock: str = "wall") -> LatencyLUT:
    """The LUT of `model` on `device`: read from the cache when its format, key and layers match, else measured
    (and cached when `checkpoint` and `cache_dir` are given)."""
    key = lut_key(checkpoint, example, device, batch, clock)
    path = lut_cache_file(cache_dir, checkpoint, key) if checkpoint is not None and cache_dir is not None else None
    ops = trace_ops(model, units, example)
    if path is not None and path.is_file():
        try:
            lut = LatencyLUT.from_json(read_json(path))
            if lut.meta.get("key") == key and [op.key() for op in lut.ops] == [op.key() for op in ops]:
                return lut
        except (ValueError, KeyError, TypeError):  # a damaged cache is re-measured, never trusted
            pass
    lut = LatencyLUT.measure(model, units, example, device, batch=batch, repeats=repeats, meta={"key": key},
                             clock=clock)
    if path is not None:
        write_json(path, lut.to_json())
    return lut


class LatencyCost:
    """A plan's predicted latency (us) from a LUT; the search objective `latency` is
    `cost(plan) / base_us` (fraction of the unpruned model's latency)."""

    def __init__(self, lut: LatencyLUT, units: Sequence[PrunableUnit]) -> None:
        self.lut = lut
        self.units = list(units)
        self.base_us = lut.base_us

    def cost(self, plan: Plan) -> float:
        return self.lut.predict_widths([len(plan.keep[u.name]) for u in self.units])

    def ratio(self, plan: Plan) -> float:
        return self.cost(plan) / self.base_us


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])
