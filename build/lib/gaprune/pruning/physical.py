"""Physical pruning with torch-pruning (a pruned deep copy of the model) and torch-pruning's
MACs / params count, the ground truth the analytic `CostModel` is checked against."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from gaprune.pruning.plan import Plan
from gaprune.pruning.units import PrunableUnit, build_dependency_graph
from gaprune.utils.errors import GapruneError


def prune_model(model: nn.Module, units: Sequence[PrunableUnit], plan: Plan, example_input: torch.Tensor) -> nn.Module:
    """Physically prune a deep copy of `model` with torch-pruning, following `plan`."""
    plan.validate()
    pruned = copy.deepcopy(model).cpu().eval()
    graph = build_dependency_graph(pruned, example_input.cpu())
    for unit in units:
        if unit.name not in plan.keep:
            raise GapruneError(f"plan has no entry for unit '{unit.name}'; it was made for another model")
        if plan.channels[unit.name] != unit.channels:
            raise GapruneError(
                f"plan unit '{unit.name}' has {plan.channels[unit.name]} channels but the model has {unit.channels}; "
                "the plan was made for another model"
            )
        remove = removed_positions(unit, plan)
        if not remove:
            continue
        root = pruned.get_submodule(unit.name)
        prune_fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(root, prune_fn, idxs=remove)
        group.prune()
    return pruned


def removed_positions(unit: PrunableUnit, plan: Plan) -> list[int]:
    """The root layer's output channels a plan removes (a grouped unit's channel is one per conv group)."""
    keep = np.zeros(unit.channels, dtype=bool)
    keep[list(plan.keep[unit.name])] = True
    for s in unit.slices:
        if s.layer == unit.name and s.kind == "out":
            return s.idx[~keep[s.root]].tolist()
    return np.flatnonzero(~keep).tolist()  # hand-made unit: its channels are the root's


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs and params of the whole network, as torch-pruning counts them."""
    device = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(model, example_input.to(device))
    return int(macs), int(params)
