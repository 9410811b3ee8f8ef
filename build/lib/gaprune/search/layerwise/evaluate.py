"""Calibration accuracy of many binary masks of one layer, batched per forward pass.

The layer's problem (`gaprune.search.layerwise.problem`) scores whole populations, so a chunk of
masks is evaluated per forward pass: the target layer's forward is swapped for one that runs P masked copies of its
weight at once (grouped conv / batched matmul). Where the network allows it, layers before the
target run once per batch and only the target's output is expanded P times ("expand" mode);
otherwise the batch is stacked P times ("stack" mode, worth it on GPUs only); both are checked
against `masked_weights` on a few samples at the start of each layer, with a plain per-mask loop
("loop" mode) as the fallback and the CPU choice for early layers (see
`LayerEvaluator._choose_mode`).

Invariant: `LayerEvaluator.accuracy(bits)[p]` equals `gaprune.engine.training.evaluate(...)["acc"]` of
the model under `masked_weights` with mask p on the layer (all modes; tests check it); the model's
weights and train/eval mode are left as they were.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gaprune.pruning.masking import masked_weights, sparse_layers
from gaprune.utils.errors import GapruneError


def _population_forward(module: nn.Module, weights: torch.Tensor, stacked: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for `module` that runs P weight copies (P, *weight.shape) at once.

    Input: (N, ...) in expand mode (output becomes (P*N, ...)), or (P*N, ...) in stack mode
    (copy p's samples at rows p*N:(p+1)*N). Output rows are copy-major in both."""
    copies = weights.shape[0]
    bias = module.bias

    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise NotImplementedError("padding_mode")
        out_ch = module.out_channels

        def conv(x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4:
                raise NotImplementedError("unbatched conv input")
            groups = module.groups * copies
            if stacked:
                n = x.shape[0] // copies
                xg = x.reshape(copies, n, *x.shape[1:]).transpose(0, 1).reshape(n, copies * x.shape[1], *x.shape[2:])
            elif module.groups == 1:  # shared input: one dense conv with P*O output channels
                n, xg, groups = x.shape[0], x, 1
            else:
                n = x.shape[0]
                xg = x.repeat(1, copies, 1, 1)
            out = F.conv2d(xg, weights.reshape(copies * out_ch, *weights.shape[2:]),
                           None if bias is None else bias.repeat(copies), module.stride, module.padding,
                           module.dilation, groups)
            return out.reshape(n, copies, out_ch, *out.shape[2:]).transpose(0, 1).reshape(copies * n, out_ch, *out.shape[2:])

        return conv
    if isinstance(module, nn.Linear):
        def linear(x: torch.Tensor) -> torch.Tensor:
            if stacked:
                xv = x.reshape(copies, x.shape[0] // copies, *x.shape[1:])
                out = torch.einsum("pn...i,poi->pn...o", xv, weights)
            else:
                out = torch.einsum("n...i,poi->pn...o", x, weights)
            if bias is not None:
                out = out + bias
            return out.reshape(-1, *out.shape[2:])

        return linear
    raise NotImplementedError(type(module).__name__)


@contextmanager
def _swapped_forward(module: nn.Module, forward: Callable) -> Iterator[None]:
    module.forward = forward  # instance attribute shadows the class method
    try:
        yield
    finally:
        del module.forward


class LayerEvaluator:
    """Calibration accuracy of many binary masks of one layer (other weights as they are)."""

    MODES = ("expand", "stack", "loop")

    def __init__(self, model: nn.Module, layer: str, calib: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 chunk: int = 8, mode: str | None = None) -> None:
        if not calib:
            raise GapruneError("layerwise_weight_mask: the calibration split is empty; raise searcher.params.calib_samples")
        self.model, self.layer, self.calib, self.chunk = model, layer, list(calib), int(chunk)
        self.module = model.get_submodule(layer)
        self.weight = self.module.weight
        self.shape = tuple(self.weight.shape)
        self.size = self.weight.numel()
        self.total = sum(int(y.numel()) for _, y in self.calib)
        self.mode = mode or self._choose_mode()

    # logits (P, N, classes) of the model with mask p applied to the layer
    def _logits(self, masks: torch.Tensor, x: torch.Tensor, mode: str) -> torch.Tensor:
        copies = masks.shape[0]
        if mode == "loop":
            outs = []
            for mask in masks:
                with masked_weights(self.model, {self.layer: mask.reshape(self.shape)}):
                    outs.append(self.model(x))
            return torch.stack(outs)
        weights = self.weight.detach().unsqueeze(0) * masks.reshape(copies, *self.shape).to(self.weight.dtype)
        stacked = mode == "stack"
        with _swapped_forward(self.module, _population_forward(self.module, weights, stacked)):
            out = self.model(x.repeat(copies, *([1] * (x.dim() - 1))) if stacked else x)
        return out.reshape(copies, x.shape[0], *out.shape[1:])

    def prefix_share(self) -> float:
        """Share of the conv/linear MACs of one forward pass spent before this layer."""
        macs: list[tuple[str, int]] = []

        def hook(name: str):
            def record(module: nn.Module, inputs, out) -> None:
                per_out = module.weight[0].numel()  # in_channels/groups * kernel, or in_features
                macs.append((name, int(out[:1].numel()) * per_out))
            return record

        names = sparse_layers(self.model)
        handles = [self.model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
        try:
            with torch.no_grad():
                self.model(self.calib[0][0][:1])
        finally:
            for handle in handles:
                handle.remove()
        total = sum(m for _, m in macs)
        before = 0
        for name, m in macs:
            if name == self.layer:
                break
            before += m
        return before / max(1, total)

    def _choose_mode(self) -> str:
        """On CUDA the first of expand / stack that matches masked_weights on a few calibration
        samples (batching the population fills the GPU). On CPU a bigger batch buys nothing by
        itself, so only expand, and only when at least 10% of the MACs come before the layer
        (shared prefix); otherwise the plain loop."""
        self.model.eval()
        if self.weight.device.type == "cuda":
            candidates: tuple[str, ...] = ("expand", "stack")
        else:
            candidates = ("expand",) if self.prefix_share() >= 0.1 else ()
        if not candidates:
            return "loop"
        x = self.calib[0][0][:4]
        gen = torch.Generator().manual_seed(0)
        masks = torch.stack([torch.ones(self.size, dtype=torch.bool),
                             torch.rand(self.size, generator=gen) < 0.5]).to(self.weight.device)
        with torch.no_grad():
            reference = self._logits(masks, x, "loop")
            scale = max(1.0, float(reference.abs().max()))
            for mode in candidates:
                try:
                    got = self._logits(masks, x, mode)
                except (RuntimeError, NotImplementedError, ValueError):
                    continue
                if got.shape == reference.shape and torch.allclose(got, reference, rtol=1e-3, atol=1e-4 * scale):
                    return mode
        return "loop"

    def accuracy(self, bits: np.ndarray) -> np.ndarray:
        """bits: (P, layer size) bool -> calibration accuracy per mask."""
        bits = np.atleast_2d(np.asarray(bits, dtype=bool))
        if bits.shape[1] != self.size:
            raise ValueError(f"mask has {bits.shape[1]} bits, layer {self.layer} has {self.size} weights")
        correct = np.zeros(len(bits), dtype=np.int64)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for lo in range(0, len(bits), self.chunk):
                    masks = torch.from_numpy(bits[lo:lo + self.chunk]).to(self.weight.device)
                    for x, y in self.calib:
                        pred = self._logits(masks, x, self.mode).argmax(-1)
                        correct[lo:lo + len(masks)] += (pred == y.unsqueeze(0)).sum(1).cpu().numpy()
        finally:
            self.model.train(was_training)
        return correct / self.total

