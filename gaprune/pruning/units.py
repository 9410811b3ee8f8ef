"""Prunable units from torch-pruning's dependency graph: one unit per coupled channel group.

A unit is what a gene controls: a VGG conv, a ResNet block's inner conv, or a whole residual
stage (stem + every block output + shortcut convs are coupled by the additions). The same unit
definitions drive channel masks (`masking`), sliced tensors (`slicing`), analytic costs (`cost`)
and physical pruning (`physical`). This module only discovers them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from gaprune.models import output_layer
from gaprune.utils.errors import GapruneError

_MEASURED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


@dataclass
class PrunableUnit:
    name: str  # qualified name of the root module (first out-channel layer of the group)
    channels: int
    out_modules: list[str]  # layers whose output channels belong to this unit (conv, linear, BN)
    in_modules: dict[str, int] = field(default_factory=dict)  # layer -> input repeat (flatten)


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    with torch.enable_grad():  # tracing needs autograd, even when called under no_grad
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def discover_units(model: nn.Module, example_input: torch.Tensor, include_linear: bool = False) -> list[PrunableUnit]:
    """One unit per dependency-graph group rooted at a conv (and hidden linears if asked)."""
    model.eval()
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    graph = build_dependency_graph(model, example_input)
    root_types = [nn.Conv2d, nn.Linear] if include_linear else [nn.Conv2d]
    units: list[PrunableUnit] = []
    for group in graph.get_all_groups(ignored_layers=[output_layer(model)], root_module_types=root_types):
        outs: list[str] = []
        ins: dict[str, int] = {}
        for dep, idxs in group:
            module = dep.target.module
            if not isinstance(module, _MEASURED) or module not in names:
                continue
            handler = getattr(dep.handler, "__name__", "")
            if handler == "prune_out_channels" and names[module] not in outs:
                outs.append(names[module])
            elif handler == "prune_in_channels":
                width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
                ins[names[module]] = width
        roots = sorted((n for n in outs if isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))), key=order.get)
        if not roots:
            continue
        root = model.get_submodule(roots[0])
        channels = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        if isinstance(root, nn.Conv2d) and root.groups > 1:
            continue  # depthwise layers follow their producer's unit
        ins = {name: max(1, width // channels) for name, width in ins.items()}
        units.append(PrunableUnit(roots[0], channels, sorted(outs, key=order.get), dict(sorted(ins.items(), key=lambda kv: order[kv[0]]))))
    units.sort(key=lambda u: order[u.name])
    if not units:
        raise GapruneError("the model has no prunable channel groups (no conv layers outside the classifier)")
    return units


def feature_modules(model: nn.Module, unit: PrunableUnit) -> list[str]:
    """The layers whose outputs are the unit's feature maps (BN outputs if present, else conv/linear)."""
    bns = [n for n in unit.out_modules if isinstance(model.get_submodule(n), (nn.BatchNorm2d, nn.BatchNorm1d))]
    if bns:
        return bns + [n for n in unit.out_modules if isinstance(model.get_submodule(n), nn.Linear)]
    return list(unit.out_modules)
