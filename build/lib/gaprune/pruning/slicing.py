"""A channel plan applied by slicing the baseline's tensors (no model copy, no dependency graph).

`sliced_state` returns the pruned model's parameters and BN buffers sliced out of the baseline,
plus the layer attributes the pruned layers would have (conv channels / groups, LayerNorm shape);
`sliced_forward` runs the baseline with both swapped in. That equals the physically pruned
model's output for every layer type discovery admits into a unit (conv incl. depthwise and grouped, linear,
batch / layer norm, unwrapped parameters such as ConvNeXt's layer scale).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from gaprune.pruning.plan import Plan
from gaprune.pruning.unit_types import PrunableUnit, layer_width


class SlicedState(dict):
    """name -> sliced tensor, plus `attrs`: module name -> {attribute: pruned value}."""

    def __init__(self, *args, attrs: dict[str, dict[str, Any]] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attrs = attrs or {}

    def copy(self) -> "SlicedState":
        return SlicedState(self, attrs=self.attrs)


def kept_indices(model: nn.Module, units: Sequence[PrunableUnit], plan: Plan) -> dict[tuple[str, str], np.ndarray]:
    """(layer, out|in|param) -> the positions the pruned model keeps, for every layer a plan changes."""
    removed: dict[tuple[str, str], list[np.ndarray]] = {}
    dims: dict[str, int] = {}
    for unit in units:
        keep = np.zeros(unit.channels, dtype=bool)
        keep[list(plan.keep[unit.name])] = True
        for s in unit.slices:
            removed.setdefault((s.layer, s.kind), []).append(s.idx[~keep[s.root]])
            dims[s.layer] = s.dim
    kept = {}
    for (layer, kind), parts in removed.items():
        mask = np.ones(layer_width(model, layer, kind, dims[layer]), dtype=bool)
        for part in parts:
            mask[part] = False
        kept[(layer, kind)] = np.flatnonzero(mask)
    return kept


def _take(tensor: torch.Tensor, dim: int, idx: np.ndarray | None) -> torch.Tensor:
    if idx is None or len(idx) == tensor.shape[dim]:
        return tensor
    return tensor.index_select(dim, torch.as_tensor(idx, device=tensor.device))


def sliced_state(model: nn.Module, units: Sequence[PrunableUnit], plan: Plan) -> SlicedState | None:
    """The pruned model's parameters, BN buffers and layer attributes, sliced out of the baseline.

    Returns None only for hand-made units without torch-pruning slices."""
    if any(not unit.slices for unit in units):
        return None
    kept = kept_indices(model, units, plan)
    state = SlicedState()
    layers = {layer for layer, kind in kept if kind != "param"}
    for layer, kind in kept:
        if kind == "param":
            dim = next(s.dim for u in units for s in u.slices if s.layer == layer)
            state[layer] = _take(model.get_parameter(layer), dim, kept[(layer, kind)])
    for layer in layers:
        module = model.get_submodule(layer)
        rows, cols = kept.get((layer, "out")), kept.get((layer, "in"))
        attrs = {}
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            if depthwise:
                rows = rows if rows is not None else cols
                cols = None
            if cols is not None and module.groups > 1 and not depthwise:
                cols = cols[:len(cols) // module.groups]  # the same in-group positions in every group
            weight = _take(_take(module.weight, 0, rows), 1, cols)
            out_c = weight.shape[0]
            attrs = {"out_channels": out_c, "in_channels": out_c if depthwise else weight.shape[1] * module.groups,
                     "groups": out_c if depthwise else module.groups}
            state[f"{layer}.weight"] = weight
            if module.bias is not None:
                state[f"{layer}.bias"] = _take(module.bias, 0, rows)
        elif isinstance(module, nn.Linear):
            weight = _take(_take(module.weight, 0, rows), 1, cols)
            attrs = {"out_features": weight.shape[0], "in_features": weight.shape[1]}
            state[f"{layer}.weight"] = weight
            if module.bias is not None:
                state[f"{layer}.bias"] = _take(module.bias, 0, rows)
        else:  # batch / layer norm: every per-channel tensor follows the kept channels
            rows = rows if rows is not None else cols
            for key in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(module, key, None)
                if tensor is not None:
                    state[f"{layer}.{key}"] = _take(tensor, 0, rows)
            if isinstance(module, nn.LayerNorm):
                attrs = {"normalized_shape": (len(rows),)}
            else:
                attrs = {"num_features": len(rows)}
        state.attrs[layer] = attrs
    return state


@contextmanager
def patched(model: nn.Module, attrs: dict[str, dict[str, Any]]) -> Iterator[nn.Module]:
    """Temporarily give layers their pruned attributes (channel counts, groups, norm shapes)."""
    saved = []
    try:
        for layer, values in attrs.items():
            module = model.get_submodule(layer)
            for key, value in values.items():
                saved.append((module, key, getattr(module, key)))
                setattr(module, key, value)
        yield model
    finally:
        for module, key, value in reversed(saved):
            setattr(module, key, value)


def sliced_forward(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The physically pruned network's output: the baseline run on `state` (see `sliced_state`)."""
    with patched(model, getattr(state, "attrs", {})):
        return functional_call(model, state, (x,))
