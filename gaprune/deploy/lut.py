"""A latency lookup table (`LatencyLUT`) and the plan cost built on it (`LatencyCost`).

The classic per-layer LUT: every conv / linear / BatchNorm layer a unit changes is timed in
isolation (a fresh layer of that geometry on a random input of its input shape and the LUT's
batch) on a grid of (kept input, kept output) widths; a plan's latency is the sum over those
layers, bilinearly interpolated between grid points, plus a constant for everything the plan
does not change (measured full-model latency minus the LUT's full-width sum).

Invariants:
- grid widths per layer are `max(1, round(width * f))` for f in `fractions` (1.0 always included);
- after measuring, each layer's table is made non-decreasing along both width axes (running
  maximum), so a prediction never falls when a unit keeps more channels;
- predictions are microseconds at the LUT's batch and device; `predict(full widths)` equals the
  measured full-model latency (`base_us`);
- identical layer geometries are timed once; a LUT is cached as JSON keyed by device, thread
  count, checkpoint content hash, input size and batch (`lut_cache_file`) and reused only when its
  recorded key, grid and layer list match.
"""
from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.deploy.latency import clock_threads, device_name, measure_latency, time_callable
from gaprune.models.tracing import trace_layers
from gaprune.pruning.importance import file_digest
from gaprune.pruning.plan import Plan
from gaprune.pruning.units import PrunableUnit
from gaprune.utils.io import read_json, write_json

FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
VERSION = 1


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


def _time_layer(op: LayerOp, cin: int, cout: int, batch: int, device, repeats: int, clock: str, stat: str) -> float:
    layer, shape = _layer(op, cin, cout)
    layer.eval().to(device)
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)

    def forward() -> Any:
        with torch.inference_mode():
            return layer(x)

    return 1e6 * time_callable(forward, warmup=2, repeats=repeats, min_block_s=0.004, clock=clock, stat=stat)[0]


class LatencyLUT:
    """Per-layer latency tables (microseconds) over width grids, plus the full-model constant."""

    def __init__(self, ops: list[LayerOp], tables: dict[str, dict[str, Any]], base_us: float, meta: dict[str, Any]):
        self.ops, self.tables, self.base_us, self.meta = ops, tables, float(base_us), meta
        full = sum(self.layer_us(op, op.in_width, op.out_width) for op in ops)
        self.constant_us = self.base_us - full

    @classmethod
    def measure(cls, model: nn.Module, units: Sequence[PrunableUnit], example: torch.Tensor, device,
                batch: int = 1, repeats: int = 5, fractions: Sequence[float] = FRACTIONS,
                meta: dict[str, Any] | None = None, clock: str = "wall", stat: str = "median",
                rounds: int = 1) -> "LatencyLUT":
        """Time every grid point (and the full model) `rounds` times, round-robin over all layers,
        and keep the min (`stat=min`) or median per point: slow spells of a shared machine then
        hit one round of a point, not a whole layer."""
        device = torch.device(device)
        combine = np.min if stat == "min" else np.median
        clock = clock if device.type == "cpu" else "wall"
        ops = trace_ops(model, units, example)
        grids: dict[str, tuple[LayerOp, list[int], list[int]]] = {}
        for op in ops:
            ins = grid(op.in_width, fractions) if op.in_unit >= 0 else [op.in_width]
            depthwise = op.kind == "bn" or (op.kind == "conv" and op.geometry["depthwise"])
            outs = [0] if depthwise else grid(op.out_width, fractions) if op.out_unit >= 0 else [op.out_width]
            grids.setdefault(op.key(), (op, ins, outs))
        samples: dict[str, list[np.ndarray]] = {key: [] for key in grids}
        base_samples = []
        for _ in range(max(1, int(rounds))):
            for key, (op, ins, outs) in grids.items():
                samples[key].append(np.array([[_time_layer(op, i, o, batch, device, repeats, clock, stat)
                                               for o in outs] for i in ins]))
            base_samples.append(measure_latency(model, example, batch, device, repeats=max(repeats, 7), clock=clock,
                                                stat=stat).seconds)
        tables: dict[str, dict[str, Any]] = {}
        for key, (op, ins, outs) in grids.items():
            values = combine(np.stack(samples[key]), axis=0)
            values = np.maximum.accumulate(np.maximum.accumulate(values, axis=0), axis=1)
            tables[key] = {"ins": ins, "outs": outs, "us": values.tolist()}
        return cls(ops, tables, 1e6 * float(combine(base_samples)),
                   {**(meta or {}), "batch": int(batch), "fractions": list(fractions), "clock": clock, "stat": stat,
                    "rounds": int(rounds)})

    def layer_us(self, op: LayerOp, cin: float, cout: float) -> float:
        table = self.tables[op.key()]
        ins, outs, us = table["ins"], table["outs"], np.asarray(table["us"], dtype=np.float64)
        rows = np.array([np.interp(cout, outs, row) if len(outs) > 1 else row[0] for row in us])
        return float(np.interp(cin, ins, rows)) if len(ins) > 1 else float(rows[0])

    def predict_widths(self, keep: Sequence[int]) -> float:
        """Predicted latency (us) with `keep[i]` channels kept in unit i."""
        total = self.constant_us
        for op in self.ops:
            cin = keep[op.in_unit] if op.in_unit >= 0 else op.in_width
            cout = keep[op.out_unit] if op.out_unit >= 0 else op.out_width
            total += self.layer_us(op, cin, cout)
        return total

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "meta": self.meta, "base_us": self.base_us,
                "ops": [op.__dict__ for op in self.ops], "tables": self.tables}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LatencyLUT":
        return cls([LayerOp(**op) for op in data["ops"]], data["tables"], data["base_us"], data["meta"])


def lut_key(checkpoint: str | Path | None, example: torch.Tensor, device, batch: int,
            clock: str = "wall") -> dict[str, Any]:
    """What a cached LUT must match: device (+ CPU model, threads, clock), checkpoint hash, input size, batch."""
    device = torch.device(device)
    clock = clock if device.type == "cpu" else "wall"
    return {"device": device_name(device), "cpu": platform.processor() or platform.machine(),
            "threads": clock_threads(clock), "clock": clock, "torch": torch.__version__,
            "checkpoint": file_digest(checkpoint) if checkpoint is not None else None,
            "input": list(example.shape[1:]), "batch": int(batch)}


def lut_cache_file(cache_dir: str | Path, checkpoint: str | Path, key: dict[str, Any]) -> Path:
    """Beside the importance cache: <stem>-<hash>-latency-<device>-<threads>t<clock>-<CxHxW>-b<batch>.json."""
    device = "".join(c if c.isalnum() else "_" for c in key["device"])
    size = "x".join(map(str, key["input"]))
    return Path(cache_dir) / f"{Path(checkpoint).stem}-{key['checkpoint']}-latency-{device}-{key['threads']}t{key['clock']}-{size}-b{key['batch']}.json"


def load_or_measure(model: nn.Module, units: Sequence[PrunableUnit], example: torch.Tensor, device,
                    checkpoint: str | Path | None = None, cache_dir: str | Path | None = None,
                    batch: int = 1, repeats: int = 5, clock: str = "wall") -> LatencyLUT:
    """The LUT of `model` on `device`: read from the cache when its key and layers match, else measured
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
