"""Applying a plan by masks on the shared model, never copying it:

- channel plans: `ChannelMasker` zeroes pruned channels with forward hooks, one mask per
  population member (equal to the physically pruned model's output);
- weight-level (unstructured) plans: binary keep-masks over layer weights, applied temporarily
  (`masked_weights`) or for good (`apply_masks_permanently`), and magnitude masks. Shared by the
  `layer_sparsity` encoding, the layer-wise weight-mask GA and the unstructured one-shot pruners.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from gaprune.pruning.plan import Plan
from gaprune.pruning.units import PrunableUnit, channel_dim
from gaprune.utils.errors import GapruneError


def sparse_layers(model: nn.Module) -> list[str]:
    """Every conv / linear layer whose weight can be masked (classifier included)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def magnitude_masks(model: nn.Module, sparsity: dict[str, float]) -> dict[str, torch.Tensor]:
    """Per layer, keep the (1 - s) fraction of weights with the largest |w| (at least one)."""
    masks = {}
    for name, level in sparsity.items():
        if not 0.0 <= level < 1.0:
            raise GapruneError(f"sparsity {level} for layer '{name}' is out of range; use a value in [0, 1)")
        weight = model.get_submodule(name).weight.detach().abs().cpu()
        keep = max(1, round((1.0 - level) * weight.numel()))
        order = torch.argsort(weight.flatten(), descending=True, stable=True)
        mask = torch.zeros(weight.numel(), dtype=torch.bool)
        mask[order[:keep]] = True
        masks[name] = mask.reshape(weight.shape)
    return masks


@contextmanager
def masked_weights(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> Iterator[nn.Module]:
    """Temporarily zero the masked-out weights in place; the originals come back on exit."""
    saved = {}
    try:
        with torch.no_grad():
            for name, mask in (masks or {}).items():
                weight = model.get_submodule(name).weight
                saved[name] = weight.detach().clone()
                weight.mul_(mask.to(weight.device, weight.dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                model.get_submodule(name).weight.copy_(original)


def apply_masks_permanently(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero masked weights for good (fine-tuning re-applies this after each step)."""
    with torch.no_grad():
        for name, mask in masks.items():
            weight = model.get_submodule(name).weight
            weight.mul_(mask.to(weight.device, weight.dtype))


def masks_exact(model: nn.Module, units: Sequence[PrunableUnit]) -> bool:
    """Whether zeroing pruned channels equals pruning them (no LayerNorm over pruned channels)."""
    return not any(isinstance(model.get_submodule(s.layer), nn.LayerNorm)
                   for unit in units for s in unit.slices if s.kind != "param")


class ChannelMasker:
    """Zeroes pruned channels with forward hooks, one mask per population member.

    Masking every out-layer of a unit (conv, linear and norm outputs, at the positions
    torch-pruning's group maps to each unit channel: concatenation offsets included) makes the
    forward pass equal to the physically pruned model's, so a population can be scored on one
    shared model. Not exact where a LayerNorm normalises over pruned channels (`exact` is False:
    its statistics would include the zeros). The input batch is the population's batches
    stacked: shape (P*B, ...), masks (P, C).
    """

    def __init__(self, model: nn.Module, units: Sequence[PrunableUnit]) -> None:
        self.units = list(units)
        self.masks: dict[str, torch.Tensor] | None = None
        self._handles = []
        self.exact = True
        for unit in self.units:
            if not unit.slices:  # hand-made unit: every position of its out layers
                for name in unit.out_modules:
                    self._handles.append(model.get_submodule(name).register_forward_hook(self._hook(unit.name)))
                continue
            for s in unit.slices:
                if s.kind == "param":
                    continue
                module = model.get_submodule(s.layer)
                if isinstance(module, nn.LayerNorm):
                    self.exact = False
                if s.kind != "out":
                    continue
                self._handles.append(module.register_forward_hook(
                    self._hook(unit.name, torch.as_tensor(s.idx), torch.as_tensor(s.root), module)))

    def _hook(self, unit_name: str, idx: torch.Tensor | None = None, root: torch.Tensor | None = None,
              module: nn.Module | None = None) -> Callable:
        def apply(_module, _inputs, output: torch.Tensor) -> torch.Tensor | None:
            if self.masks is None:
                return None
            mask = self.masks[unit_name]
            population = mask.shape[0]
            dim = channel_dim(_module, output)
            if idx is not None:
                full = torch.ones(population, output.shape[dim], device=output.device, dtype=output.dtype)
                full[:, idx.to(output.device)] = mask[:, root.to(mask.device)].to(output.dtype)
                mask = full
            shaped = output.reshape(population, output.shape[0] // population, *output.shape[1:])
            view_shape = [population] + [1] * output.dim()
            view_shape[dim + 1] = mask.shape[1]
            return (shaped * mask.reshape(view_shape)).reshape(output.shape)

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
