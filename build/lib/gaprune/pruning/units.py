"""Prunable units from torch-pruning's dependency graph: one unit per coupled channel group.

A unit is what a gene controls: a VGG conv, a ResNet block's inner conv, a whole residual
stage (stem + every block output + shortcut convs are coupled by the additions), a DenseNet
layer's output (with every later BatchNorm / conv that reads it through a concatenation).
Everything a unit touches comes from torch-pruning's group itself: each `LayerSlice` is one
dimension of one layer (or unwrapped parameter) with the positions it prunes there and the unit
channel each position follows (`dep.handler` + `idxs` / `root_idxs`, so concatenation offsets,
splits, flatten repeats and depthwise convs are torch-pruning's own). The same slices drive
channel masks (`masking`), sliced tensors (`slicing`), costs (`cost`) and importance.
A group through a grouped conv (ResNeXt, RegNet) prunes, as torch-pruning's own pruners do, the
same in-group positions in every conv group: its unit channel j stands for root channels
j, j + C/G, j + 2C/G, ... (G = the groups, C = the root's width), so a plan keeps whole columns
of groups and the conv stays grouped. Groups torch-pruning cannot prune consistently (channels
through ShuffleNet's channel shuffle, multi-dim layer norms, layers we cannot slice) are not
genes, nor are groups whose narrower widths the model's forward rejects (attention reshaping to
a fixed head count); discovery says so in one warning line.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from gaprune.models import output_layer
from gaprune.models.channel_shuffle import ChannelShuffle
from gaprune.pruning.plan import Plan
from gaprune.pruning.slicing import sliced_forward, sliced_state
from gaprune.pruning.unit_types import LayerSlice, PrunableUnit, layer_width  # noqa: F401  (re-exported)
from gaprune.utils.errors import GapruneError

_NORMS = (nn.modules.batchnorm._BatchNorm,)
_SLICEABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


class _Barrier(tp.pruner.function.BasePruningFunc):
    """torch-pruning pruner for a layer whose channels no gene may cross (its input and output
    channels are not coupled, so groups end at it; discovery then leaves those groups out)."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        raise GapruneError(f"{type(layer).__name__} channels cannot be pruned")

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        raise GapruneError(f"{type(layer).__name__} channels cannot be pruned")

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.channels

    get_in_channels = get_out_channels


_BARRIERS = {ChannelShuffle: "channel shuffle (permutes channels)"}


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's graph of `model`; a crash inside torch-pruning's tracing (an architecture it
    cannot follow, e.g. Swin-S/B's channels-last patch merging) is a one-line error."""
    with torch.enable_grad(), warnings.catch_warnings():  # tracing needs autograd, even under no_grad
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        try:
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                         customized_pruners={kind: _Barrier() for kind in _BARRIERS})
        except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, AttributeError) as err:
            first = str(err).splitlines()[0] if str(err) else ""
            raise GapruneError(f"torch-pruning cannot trace the channel dependencies of {type(model).__name__} "
                               f"({type(err).__name__}: {first}); it has no prunable channel groups") from None


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _conv_groups(module: nn.Module) -> int:
    """Conv groups a gene must prune alike (1: none; depthwise convs follow channel by channel)."""
    return module.groups if isinstance(module, nn.Conv2d) and not _depthwise(module) else 1


def _unsupported(module: nn.Module) -> str | None:
    """Why a layer in a group cannot be sliced/pruned consistently by a gene (None: it can)."""
    if type(module) in _BARRIERS:
        return _BARRIERS[type(module)]
    if isinstance(module, nn.Conv2d):
        return None
    if isinstance(module, nn.LayerNorm):
        return None if len(module.normalized_shape) == 1 else "multi-dim LayerNorm"
    if isinstance(module, _SLICEABLE):
        return None
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        return type(module).__name__
    return None  # parameterless (activation, pooling, dropout): shapes follow their input


def discover_units(model: nn.Module, example_input: torch.Tensor, include_linear: bool = False) -> list[PrunableUnit]:
    """One unit per dependency-graph group rooted at a conv (and hidden linears if asked).

    Args:
        model: the network (put in eval mode).
        example_input: an input batch to trace it with.
        include_linear: hidden linear layers root units too.

    Returns:
        The units in forward order. Groups that cannot be genes are left out with one warning
        line; a model with no unit at all is a GapruneError.
    """
    model.eval()
    names = {module: name for name, module in model.named_modules()}
    params = {id(p): name for name, p in model.named_parameters()}
    graph = build_dependency_graph(model, example_input)
    unwrapped = {id(u.parameters): int(u.pruning_dim) for u in getattr(graph, "unwrapped_parameters", None) or []}
    index = _ModelIndex(names, {name: i for i, name in enumerate(names.values())}, params, unwrapped)
    root_types = [nn.Conv2d, nn.Linear] if include_linear else [nn.Conv2d]
    units: list[PrunableUnit] = []
    skipped: list[str] = []
    for group in graph.get_all_groups(ignored_layers=[output_layer(model)], root_module_types=root_types):
        root = group.items[0].dep.target.module
        if root not in names:
            continue
        found, dims, reason = _group_positions(group, index)
        roots = sorted((n for (n, k) in found if k == "out" and n in index.order
                        and isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))), key=index.order.get)
        label = roots[0] if roots else names[root]  # the group's first producer in forward order
        unit, why = (None, reason) if reason is not None else _unit_of_group(model, label, found, dims, index.order)
        if why is not None:
            skipped.append(f"{label} ({why})")
        elif unit is not None:
            units.append(unit)
    units.sort(key=lambda u: index.order[u.name])
    units = _forward_accepts(model, units, example_input, skipped)
    if skipped:
        warnings.warn(f"{len(skipped)} channel group(s) are not genes (torch-pruning cannot prune them "
                      f"consistently): {'; '.join(skipped)}", stacklevel=2)
    if not units:
        detail = f"; not prunable: {'; '.join(skipped)}" if skipped else " (no conv layers outside the classifier)"
        raise GapruneError(f"the model {type(model).__name__} has no prunable channel groups{detail}")
    return units


@dataclass
class _ModelIndex:
    """A model's modules and parameters by name, for reading torch-pruning's groups."""

    names: dict[nn.Module, str]  # module -> qualified name
    order: dict[str, int]  # module name -> position in named_modules (forward order)
    params: dict[int, str]  # id(parameter) -> qualified name
    unwrapped: dict[int, int]  # id(parameter) -> the dim torch-pruning prunes (its unwrapped parameters)


Positions = dict[tuple[str, str], dict[int, int]]  # (layer, kind) -> {position there: root channel it follows}


def _group_positions(group, index: _ModelIndex) -> tuple[Positions, dict[str, int], str | None]:
    """What one torch-pruning group prunes: the positions per (layer, kind), the pruned dim of each
    parameter, and why the group cannot be a gene (None: it can; the positions then stop at the
    layer that says so). torch-pruning's own ops (concat, split, reshape, element-wise) are skipped."""
    found: Positions = {}
    dims: dict[str, int] = {}
    for item in group.items:
        dep, module = item.dep, item.dep.target.module
        handler = getattr(dep.handler, "__name__", "")
        if isinstance(module, nn.Parameter):
            if id(module) not in index.params:
                continue
            name, kind = index.params[id(module)], "param"
            dims[name] = index.unwrapped.get(id(module), 0)
        elif isinstance(module, nn.Module) and module in index.names:
            why = _unsupported(module)
            if why is not None:
                return found, dims, f"{index.names[module]}: {why}"
            kind = {"prune_out_channels": "out", "prune_in_channels": "in"}.get(handler)
            if not isinstance(module, _SLICEABLE) or kind is None:
                continue
            name = index.names[module]
        else:
            continue
        pairs = found.setdefault((name, kind), {})
        for idx, rid in zip(item.idxs, item.root_idxs):
            pairs[int(idx)] = int(rid)
    return found, dims, None


def _unit_of_group(model: nn.Module, label: str, found: Positions, dims: dict[str, int],
                   order: dict[str, int]) -> tuple[PrunableUnit | None, str | None]:
    """(the unit led by layer `label`, None), or (None, why the group is not a gene), or (None,
    None) for a group led by a depthwise conv (it follows its producer's unit: torch-pruning may
    root the group at it)."""
    lead = model.get_submodule(label)
    if _depthwise(lead):
        return None, None
    width = lead.out_channels if isinstance(lead, nn.Conv2d) else lead.out_features
    groups, why = _group_columns(model, found, width)
    if why is not None:
        return None, why
    overflow = next((n for (n, k), pairs in found.items() if max(pairs) >= layer_width(model, n, k, dims.get(n, 0))), None)
    if overflow is not None:  # torch-pruning coupled a narrower dimension (e.g. Swin's per-head bias table)
        return None, f"{overflow}: torch-pruning maps more channels onto it than it has"
    channels = width // groups
    slices = []
    for (name, kind), pairs in sorted(found.items(), key=lambda kv: (order.get(kv[0][0], order.get(kv[0][0].rsplit(".", 1)[0], -1)), kv[0])):
        idx = np.array(sorted(pairs), dtype=np.int64)
        root_idx = np.array([pairs[i] for i in idx], dtype=np.int64) % channels
        slices.append(LayerSlice(name, kind, idx, root_idx, dims.get(name, 0)))
    outs = sorted((s.layer for s in slices if s.kind == "out"), key=order.get)
    ins = {s.layer: max(1, len(s.idx) // channels) for s in slices if s.kind == "in"}
    return PrunableUnit(label, channels, outs, dict(sorted(ins.items(), key=lambda kv: order[kv[0]])), slices), None


def _group_columns(model: nn.Module, found: dict[tuple[str, str], dict[int, int]], width: int) -> tuple[int, str | None]:
    """How many conv groups the unit's channels are replicated over (1 without grouped convs),
    or why the group cannot be pruned alike in every conv group."""
    groups = 1
    for (name, kind), pairs in found.items():
        if kind == "param":
            continue
        module = model.get_submodule(name)
        g = _conv_groups(module)
        if g == 1:
            continue
        full = module.out_channels if kind == "out" else module.in_channels
        if len(pairs) != full or any(i != r for i, r in pairs.items()):
            return 1, f"{name}: grouped conv (groups={g}) fed through a concatenation or reshape"
        groups = math.lcm(groups, g)
    if width % groups:
        return 1, f"{width} channels do not split into {groups} conv groups"
    return groups, None


def _forward_accepts(model: nn.Module, units: list[PrunableUnit], example: torch.Tensor,
                     skipped: list[str]) -> list[PrunableUnit]:
    """The units whose narrower widths the model's forward accepts: one sliced forward with one
    channel fewer in every unit, bisected only on failure (e.g. attention that reshapes to a fixed
    head count, MaxViT); the others are added to `skipped` with the error."""
    def error(subset: list[PrunableUnit]) -> str | None:
        plan = Plan(keep={u.name: tuple(range(1, u.channels)) for u in subset}, channels={u.name: u.channels for u in subset})
        try:
            with torch.no_grad():
                sliced_forward(model, sliced_state(model, subset, plan), example[:1])
        except (RuntimeError, ValueError, IndexError) as err:
            return str(err).splitlines()[0] if str(err) else type(err).__name__
        return None

    def accepted(subset: list[PrunableUnit]) -> list[PrunableUnit]:
        why = error(subset) if subset else None
        if why is None:
            return subset
        if len(subset) == 1:
            skipped.append(f"{subset[0].name} (the forward rejects a pruned width: {why})")
            return []
        half = len(subset) // 2
        return accepted(subset[:half]) + accepted(subset[half:])

    was_training = model.training
    model.eval()
    try:
        kept = {id(u) for u in accepted([u for u in units if u.channels > 1])}
    finally:
        model.train(was_training)
    return [u for u in units if u.channels == 1 or id(u) in kept]


def channel_dim(module: nn.Module, output: torch.Tensor) -> int:
    """Where the channels are in a layer's output: last for Linear / LayerNorm (channels-last), else 1."""
    if output.dim() <= 2:
        return output.dim() - 1
    return output.dim() - 1 if type(module) in (nn.Linear, nn.LayerNorm) else 1


def feature_slices(model: nn.Module, unit: PrunableUnit) -> list[LayerSlice]:
    """The output slices whose activations are the unit's feature maps (norm outputs if present,
    plus linears, else every conv / linear output)."""
    outs = [s for s in unit.slices if s.kind == "out"]
    norms = [s for s in outs if isinstance(model.get_submodule(s.layer), _NORMS + (nn.LayerNorm,))]
    if norms:
        return norms + [s for s in outs if isinstance(model.get_submodule(s.layer), nn.Linear)]
    return outs


def feature_modules(model: nn.Module, unit: PrunableUnit) -> list[str]:
    """The layers whose outputs are the unit's feature maps (BN outputs if present, else conv/linear)."""
    if unit.slices:
        return [s.layer for s in feature_slices(model, unit)]
    bns = [n for n in unit.out_modules if isinstance(model.get_submodule(n), (nn.BatchNorm2d, nn.BatchNorm1d))]
    if bns:
        return bns + [n for n in unit.out_modules if isinstance(model.get_submodule(n), nn.Linear)]
    return list(unit.out_modules)
