"""The types of channel-group discovery (`gaprune.pruning.units` builds them): a unit, the layer
slices it prunes, and the full width of a sliced dimension."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn


@dataclass
class LayerSlice:
    """One dimension of one layer that a unit prunes: positions `idx` follow unit channels `root`."""

    layer: str  # module name, or parameter name for kind == "param"
    kind: str  # out | in | param
    idx: np.ndarray
    root: np.ndarray
    dim: int = 0  # pruned dimension of a parameter (kind == "param")


@dataclass
class PrunableUnit:
    name: str  # qualified name of the root module (first out-channel layer of the group)
    channels: int
    out_modules: list[str]  # layers whose output channels belong to this unit (conv, linear, norm)
    in_modules: dict[str, int] = field(default_factory=dict)  # layer -> input positions per unit channel
    slices: list[LayerSlice] = field(default_factory=list)


def layer_width(model: nn.Module, layer: str, kind: str, dim: int = 0) -> int:
    """The full width of the dimension a slice prunes (out / in channels, or a parameter's `dim`)."""
    if kind == "param":
        return model.get_parameter(layer).shape[dim]
    module = model.get_submodule(layer)
    if isinstance(module, nn.Conv2d):
        return module.out_channels if kind == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if kind == "out" else module.in_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0]
    return module.num_features
