"""Analytic MACs / params of a channel plan (`CostModel`), checked against torch-pruning's counter.

Counting a candidate by physically pruning a copy costs ~0.1-1 s; the analytic count is a few
microseconds, so whole searches can be costed. It mirrors `tp.utils.count_ops_and_params` for
the layers a plan changes (conv, linear, BN) and keeps every other layer's count as is. Models whose
counted layers include parameterless modules (torchvision's nn.ReLU / pooling modules, whose
widths follow concatenations and splits) are counted by `ShapeCounter` instead: torch-pruning's own
per-layer counters run on a meta-device copy of the model with the plan's sliced shapes (no data,
no deep copy per plan, ~ms), which is exact by construction. `verify` compares the count with the
physically pruned model at search start; on a mismatch it falls back to physical counting.
`SparseCostModel` is the effective cost of a weight-masked plan (a zero weight costs nothing).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.models.tracing import output_positions, trace_layers
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.pruning.slicing import patched, sliced_state
from gaprune.pruning.units import PrunableUnit


class ShapeCounter:
    """torch-pruning's MACs / params count of a pruned model without building it: its per-layer
    counting hooks run on a meta-device copy of the baseline whose tensors and layer attributes
    are the plan's sliced ones (`sliced_state`)."""

    def __init__(self, model: nn.Module, units: Sequence[PrunableUnit], example_input: torch.Tensor) -> None:
        from torch.func import functional_call
        from torch_pruning.utils import op_counter

        self._call = functional_call
        self.units = list(units)
        self.meta = copy.deepcopy(model).to("meta").eval()
        self.x = example_input[:1].to("meta")
        self.params = dict(self.meta.named_parameters())
        self.total_params = sum(p.numel() for p in self.params.values())
        self.counted = [m for m in self.meta.modules() if type(m) in op_counter.MODULES_MAPPING]
        for module in self.counted:
            module.register_forward_hook(op_counter.MODULES_MAPPING[type(module)])

    @torch.no_grad()
    def cost(self, plan: Plan) -> tuple[int, int]:
        state = sliced_state(self.meta, self.units, plan)
        for module in self.counted:
            module.__flops__ = 0
        with patched(self.meta, state.attrs):
            self._call(self.meta, state, (self.x,))
        macs = sum(int(m.__flops__) for m in self.counted)
        params = self.total_params + sum(t.numel() - self.params[k].numel() for k, t in state.items() if k in self.params)
        return int(macs), int(params)


def needs_shape_counter(model: nn.Module, units: Sequence[PrunableUnit]) -> bool:
    """Whether the closed form cannot be exact: torch-pruning counts layers other than conv /
    linear / BN whose widths a plan may change (activation / pooling modules, layer norms,
    unwrapped parameters, layers fed by part of a unit such as a concatenation, grouped units
    whose channels stand for one channel per conv group)."""
    from torch_pruning.utils import op_counter

    closed = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)
    if any(type(m) in op_counter.MODULES_MAPPING and not isinstance(m, closed) for m in model.modules()):
        return True
    for unit in units:
        for s in unit.slices:
            if s.kind == "param":
                return True
            module = model.get_submodule(s.layer)
            if not isinstance(module, closed) or len(s.idx) % unit.channels or \
                    (len(s.idx) != unit.channels and not isinstance(module, nn.Linear)) or \
                    not np.array_equal(np.sort(np.unique(s.root)), np.arange(unit.channels)):
                return True
            width = module.weight.shape[0 if s.kind == "out" else 1] if not isinstance(module, nn.Conv2d) or \
                s.kind == "out" or module.groups == 1 else module.in_channels
            if len(s.idx) != width:  # the unit feeds only part of this layer (concatenation)
                return True
    return False


@dataclass
class _Layer:
    kind: str  # conv | linear | bn
    in_unit: int  # -1: not pruned
    out_unit: int
    in_width: int  # channels (conv/bn) or features (linear) at full size
    out_width: int
    in_repeat: int  # features per kept channel when a flatten feeds a linear
    kernel: int  # prod(kernel size) for conv
    groups: int
    spatial: int  # output positions
    bias: bool
    affine: bool


class CostModel:
    def __init__(self, model: nn.Module, units: Sequence[PrunableUnit], example_input: torch.Tensor) -> None:
        self.model = model
        self.units = list(units)
        self.example_input = example_input[:1].cpu()
        self.base_macs, self.base_params = count_macs_params(model, self.example_input)
        self.channels = np.array([u.channels for u in self.units], dtype=np.int64)
        self.exact = False  # True: physically pruned counting (slow fallback)
        self.shapes = ShapeCounter(model, self.units, self.example_input) if needs_shape_counter(model, self.units) else None
        self.mode = "shapes" if self.shapes is not None else "analytic"
        self._layers = self._trace(model)
        full = self.channels.copy()
        self._full_macs, self._full_params = self._layer_costs(full)

    def _trace(self, model: nn.Module) -> list[_Layer]:
        out_unit: dict[str, int] = {}
        in_unit: dict[str, tuple[int, int]] = {}
        for index, unit in enumerate(self.units):
            for name in unit.out_modules:
                out_unit[name] = index
            for name, repeat in unit.in_modules.items():
                in_unit[name] = (index, repeat)
        spatial: dict[str, int] = {}
        trace_layers(model, self.example_input, set(out_unit) | set(in_unit),
                     lambda name, _m, _i, output: spatial.__setitem__(name, output_positions(output)))
        layers = []
        for name in spatial:
            module = model.get_submodule(name)
            unit_in, repeat = in_unit.get(name, (-1, 1))
            unit_out = out_unit.get(name, -1)
            if isinstance(module, nn.Conv2d):
                layers.append(_Layer("conv", unit_in, unit_out, module.in_channels, module.out_channels, 1,
                                     math.prod(module.kernel_size), module.groups, spatial[name], module.bias is not None, False))
            elif isinstance(module, nn.Linear):
                layers.append(_Layer("linear", unit_in, unit_out, module.in_features, module.out_features, repeat,
                                     1, 1, 1, module.bias is not None, False))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):  # others: shape counter only
                layers.append(_Layer("bn", unit_out, unit_out, module.num_features, module.num_features, 1,
                                     1, 1, spatial[name], False, bool(module.affine)))
        return layers

    def _layer_costs(self, keep: np.ndarray) -> tuple[int, int]:
        macs = params = 0
        for layer in self._layers:
            cin = keep[layer.in_unit] * layer.in_repeat if layer.in_unit >= 0 else layer.in_width
            cout = keep[layer.out_unit] if layer.out_unit >= 0 else layer.out_width
            if layer.kind == "bn":
                macs += cin * layer.spatial * (2 if layer.affine else 1)
                params += 2 * cin if layer.affine else 0
                continue
            groups = layer.groups
            if groups > 1 and groups == layer.in_width == layer.out_width:
                groups = cin  # depthwise: stays depthwise after pruning
            weight = layer.kernel * (cin // groups) * cout
            macs += (weight + (cout if layer.bias else 0)) * layer.spatial
            params += weight + (cout if layer.bias else 0)
        return int(macs), int(params)

    def keep_counts(self, plan: Plan) -> np.ndarray:
        return np.array([len(plan.keep[u.name]) for u in self.units], dtype=np.int64)

    def cost(self, plan: Plan) -> tuple[int, int]:
        """(MACs, params) of the whole network after `plan`."""
        if self.exact:
            return count_macs_params(prune_model(self.model, self.units, plan, self.example_input), self.example_input)
        if self.shapes is not None:
            return self.shapes.cost(plan)
        macs, params = self._layer_costs(self.keep_counts(plan))
        return self.base_macs - self._full_macs + macs, self.base_params - self._full_params + params

    def verify(self, plans: Sequence[Plan]) -> bool:
        """Compare with physical pruning; switch to exact counting (with a warning) on mismatch."""
        for plan in plans:
            analytic = self.cost(plan)
            physical = count_macs_params(prune_model(self.model, self.units, plan, self.example_input), self.example_input)
            if analytic != physical:
                warnings.warn(
                    f"analytic cost {analytic} != torch-pruning count {physical} for this architecture; "
                    "using exact (slower) physical counting"
                )
                self.exact = True
                self.mode = "physical"
                return False
        return True


class SparseCostModel:
    """MACs and params of a weight-masked network: a zero weight costs no multiply-accumulate."""

    def __init__(self, model: nn.Module, layers: Sequence[str], example_input: torch.Tensor) -> None:
        self.layers = list(layers)
        self.base_macs, self.base_params = count_macs_params(model, example_input[:1])
        positions: dict[str, int] = {}
        trace_layers(model, example_input, self.layers,
                     lambda name, _m, _i, output: positions.__setitem__(name, output_positions(output)))
        self.positions = positions

    def cost(self, plan: SparsePlan) -> tuple[int, int]:
        macs, params = self.base_macs, self.base_params
        for name, mask in plan.masks.items():
            pruned = int(mask.numel() - mask.sum())
            macs -= pruned * self.positions[name]
            params -= pruned
        return int(macs), int(params)

