"""Adaptive BN (EagleEye): re-estimate the BatchNorm statistics of a pruned plan before scoring it,
so a heavily pruned network is judged with statistics that fit it.

Invariants: the reference model's own buffers and BN momenta are the same after every call as
before it (`adapted_bn` restores them; `sliced_with_fresh_bn` never writes them); statistics are a
cumulative average over the given batches, BN layers in train mode and every other layer in eval.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from gaprune.pruning.slicing import sliced_forward


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics (the ones adaptive BN re-estimates)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def adapted_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[nn.Module]:
    """Adaptive BN: re-estimate every BN layer's running statistics on `batches` with whatever
    masks are on (reset, cumulative average, BN layers in train mode, the rest in eval), leave the
    model in eval mode for scoring, and put the original statistics back on exit."""
    bns = batch_norms(model)
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(), bn.momentum)
             for bn in bns]
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average over the batches
            bn.train()
        with torch.no_grad():
            for x, _ in batches:
                model(x)
        model.eval()
        yield model
    finally:
        model.eval()
        with torch.no_grad():
            for bn, (mean, var, count, momentum) in zip(bns, saved):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
                bn.momentum = momentum


@torch.no_grad()
def sliced_with_fresh_bn(model: nn.Module, state: dict[str, torch.Tensor],
                         batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Adaptive BN on the sliced path: `state` (a plan's sliced tensors, see `sliced_state`) with
    every BN layer's running statistics replaced by fresh tensors re-estimated on `batches`
    (cumulative average, BN layers in train mode, the rest in eval). Equal to `adapted_bn` on the
    channel-masked model for the kept channels; the baseline's own buffers are never written."""
    state = state.copy()  # keeps a SlicedState's pruned layer attributes
    tracked = set(batch_norms(model))
    bns = {name: m for name, m in model.named_modules() if m in tracked}
    for name, bn in bns.items():
        width = state[f"{name}.weight"].shape[0] if f"{name}.weight" in state else bn.running_mean.shape[0]
        like = bn.running_mean
        state[f"{name}.running_mean"] = torch.zeros(width, device=like.device, dtype=like.dtype)
        state[f"{name}.running_var"] = torch.ones(width, device=like.device, dtype=like.dtype)
        state[f"{name}.num_batches_tracked"] = torch.zeros((), device=like.device, dtype=torch.long)
    momenta = {name: bn.momentum for name, bn in bns.items()}
    model.eval()
    try:
        for bn in bns.values():
            bn.momentum = None  # cumulative moving average over the batches
            bn.train()
        for x, _ in batches:
            sliced_forward(model, state, x)  # BN updates the fresh running tensors in place
    finally:
        for name, bn in bns.items():
            bn.momentum = momenta[name]
        model.eval()
    return state
