"""One traced forward pass: what several modules need to know about a model's layers at its
input size (output positions for costs, input shapes for latency tables, call order).

Invariant: the model comes back in the train/eval mode it had, with no hook left on it, even
when the forward raises; only the first sample of the example is run, without autograd.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

Record = Callable[[str, nn.Module, tuple[Any, ...], Any], None]


def trace_layers(model: nn.Module, example: torch.Tensor, names: Iterable[str], record: Record) -> None:
    """Run `example[:1]` through `model` in eval mode; `record(name, module, inputs, output)` is
    called for every call of each named submodule, in call order."""
    handles = [model.get_submodule(name).register_forward_hook(
        lambda module, inputs, output, name=name: record(name, module, inputs, output)) for name in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1].to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def output_positions(output: torch.Tensor) -> int:
    """Spatial positions of a layer's output (1 for a linear layer's (N, F) output)."""
    return int(torch.tensor(output.shape[2:]).prod()) if output.dim() > 2 else 1
