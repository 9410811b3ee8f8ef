"""A channel plan applied by slicing the baseline's tensors (no model copy, no dependency graph)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from gaprune.pruning.plan import Plan
from gaprune.pruning.units import PrunableUnit


def sliced_state(model: nn.Module, units: Sequence[PrunableUnit], plan: Plan) -> dict[str, torch.Tensor] | None:
    """The pruned model's parameters and BN buffers, sliced out of the baseline's tensors.

    `torch.func.functional_call(model, sliced_state(...), x)` then runs the physically pruned
    network without copying the model or rebuilding torch-pruning's dependency graph: conv,
    linear and BN forwards read their tensors' shapes, not their constructor arguments.
    Returns None for architectures where slicing is not exact (grouped / depthwise convs).
    """
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    for unit in units:
        keep = torch.tensor(plan.keep[unit.name], dtype=torch.long)
        for name in unit.out_modules:
            out_idx[name] = keep
        for name, repeat in unit.in_modules.items():
            in_idx[name] = (keep[:, None] * repeat + torch.arange(repeat)).flatten() if repeat > 1 else keep
    state: dict[str, torch.Tensor] = {}
    for name in set(out_idx) | set(in_idx):
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            return None
        rows, cols = out_idx.get(name), in_idx.get(name)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weight = module.weight
            if rows is not None:
                weight = weight.index_select(0, rows.to(weight.device))
            if cols is not None:
                weight = weight.index_select(1, cols.to(weight.device))
            state[f"{name}.weight"] = weight
            if module.bias is not None:
                state[f"{name}.bias"] = module.bias if rows is None else module.bias.index_select(0, rows.to(weight.device))
        else:  # batch norm: every per-channel tensor follows the unit's channels
            for key in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(module, key)
                if tensor is not None:
                    state[f"{name}.{key}"] = tensor.index_select(0, rows.to(tensor.device))
    return state
