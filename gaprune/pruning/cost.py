"""Analytic MACs / params of a channel plan (`CostModel`), checked against torch-pruning's counter.

Counting a candidate by physically pruning a copy costs ~0.1-1 s; the analytic count is a few
microseconds, so whole searches can be costed. It mirrors `tp.utils.count_ops_and_params` for
the layers a plan changes (conv, linear, BN) and keeps every other layer's count as is.
`verify` compares it with the physically pruned model; when they disagree (an architecture whose
unchanged-looking layers do change), the model falls back to exact physical counting.
`SparseCostModel` is the effective cost of a weight-masked plan (a zero weight costs nothing).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.pruning.units import PrunableUnit


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
        self.exact = False
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
        handles = []
        for name in set(out_unit) | set(in_unit):
            def record(_m, _i, output, name=name):
                spatial[name] = int(np.prod(output.shape[2:])) if output.dim() > 2 else 1

            handles.append(model.get_submodule(name).register_forward_hook(record))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(self.example_input.to(next(model.parameters()).device))
        model.train(was_training)
        for handle in handles:
            handle.remove()
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
            else:
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
                return False
        return True


class SparseCostModel:
    """MACs and params of a weight-masked network: a zero weight costs no multiply-accumulate."""

    def __init__(self, model: nn.Module, layers: Sequence[str], example_input: torch.Tensor) -> None:
        self.layers = list(layers)
        self.base_macs, self.base_params = count_macs_params(model, example_input[:1])
        positions: dict[str, int] = {}
        handles = [model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: positions.__setitem__(n, int(np.prod(out.shape[2:])) if out.dim() > 2 else 1))
            for n in self.layers]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example_input[:1].to(next(model.parameters()).device))
        model.train(was_training)
        for handle in handles:
            handle.remove()
        self.positions = positions

    def cost(self, plan: SparsePlan) -> tuple[int, int]:
        macs, params = self.base_macs, self.base_params
        for name, mask in plan.masks.items():
            pruned = int(mask.numel() - mask.sum())
            macs -= pruned * self.positions[name]
            params -= pruned
        return int(macs), int(params)

