"""ShuffleNet's channel shuffle as a module: one fixed permutation of the channels.

torch-pruning traces torchvision's functional shuffle (view / transpose / view) as reshapes and
cannot follow the permutation (its shape inference divides by zero). As a module, the dependency
graph sees one layer it treats as a barrier (`gaprune.pruning.units`), so no gene ever maps
channels through the permutation. Invariant: the output equals torchvision's `channel_shuffle`.
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelShuffle(nn.Module):
    """Output channel g * (C / groups) + i -> position i * groups + g, as in ShuffleNet V2."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.channels = channels
        self.groups = groups
        order = torch.arange(channels).reshape(groups, channels // groups).t().reshape(-1)
        self.register_buffer("order", order, persistent=False)  # not in checkpoints: a function of the shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.order)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
