"""Prunable units from torch-pruning's dependency graph: one unit per coupled channel group.

A unit is what a gene controls: a VGG conv, a ResNet block's inner conv, or a whole residual
stage (stem + every block output + shortcut convs are coupled by the additions). The same unit
definitions drive channel masks (fast fitness), analytic costs and physical pruning.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from gaprune.errors import GapruneError
from gaprune.models import output_layer
from gaprune.plan import Plan

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


class ChannelMasker:
    """Zeroes pruned channels with forward hooks, one mask per population member.

    Masking every out-layer of a unit (conv and BN outputs) makes the forward pass equal to the
    physically pruned model's, so a population can be scored on one shared model. The input batch
    is the population's batches stacked: shape (P*B, ...), masks (P, C).
    """

    def __init__(self, model: nn.Module, units: Sequence[PrunableUnit]) -> None:
        self.units = list(units)
        self.masks: dict[str, torch.Tensor] | None = None
        self._handles = []
        for unit in self.units:
            for name in unit.out_modules:
                self._handles.append(model.get_submodule(name).register_forward_hook(self._hook(unit.name)))

    def _hook(self, unit_name: str) -> Callable:
        def apply(_module, _inputs, output: torch.Tensor) -> torch.Tensor | None:
            if self.masks is None:
                return None
            mask = self.masks[unit_name]
            population = mask.shape[0]
            shaped = output.reshape(population, output.shape[0] // population, *output.shape[1:])
            view = mask.reshape(population, 1, mask.shape[1], *([1] * (output.dim() - 2)))
            return (shaped * view).reshape(output.shape)

        return apply

    def set_plans(self, plans: Sequence[Plan] | None, device: torch.device | str = "cpu") -> None:
        if plans is None:
            self.masks = None
            return
        masks = {}
        for unit in self.units:
            mask = torch.zeros(len(plans), unit.channels, device=device)
            for row, plan in enumerate(plans):
                mask[row, list(plan.keep[unit.name])] = 1.0
            masks[unit.name] = mask
        self.masks = masks

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


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
        keep = set(plan.keep[unit.name])
        remove = [i for i in range(unit.channels) if i not in keep]
        if not remove:
            continue
        root = pruned.get_submodule(unit.name)
        prune_fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(root, prune_fn, idxs=remove)
        group.prune()
    return pruned


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs and params of the whole network, as torch-pruning counts them."""
    device = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(model, example_input.to(device))
    return int(macs), int(params)


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
