"""Unstructured (weight-level) pruning: per-layer binary weight masks, magnitude masks, and the
sparse cost of a plan. Shared by the `layer_sparsity` / `weight_mask` encodings and the
unstructured baselines (global magnitude, uniform, ERK, LAMP, rate-distortion)."""
from __future__ import annotations

import base64
import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.errors import GapruneError
from gaprune.units import count_macs_params


def sparse_layers(model: nn.Module) -> list[str]:
    """Every conv / linear layer whose weight can be masked (classifier included)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@dataclass(frozen=True)
class SparsePlan:
    """Binary keep-masks over layer weights (True = keep), by layer name."""

    masks: dict[str, torch.Tensor]

    def signature(self) -> tuple:
        return tuple((name, hashlib.sha1(np.packbits(m.cpu().numpy().ravel()).tobytes()).hexdigest())
                     for name, m in self.masks.items())

    def densities(self) -> list[float]:
        return [float(m.float().mean()) for m in self.masks.values()]

    def record_fields(self) -> dict[str, Any]:
        return {"keep_ratios": self.densities()}

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(1, total)

    def to_json(self) -> dict[str, Any]:
        return {"layers": [{"name": name, "shape": list(m.shape), "density": float(m.float().mean()),
                            "mask": base64.b64encode(np.packbits(m.cpu().numpy().ravel()).tobytes()).decode()}
                           for name, m in self.masks.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SparsePlan":
        try:
            masks = {}
            for layer in data["layers"]:
                shape = tuple(layer["shape"])
                bits = np.unpackbits(np.frombuffer(base64.b64decode(layer["mask"]), dtype=np.uint8))
                masks[layer["name"]] = torch.from_numpy(bits[: math.prod(shape)].astype(bool)).reshape(shape)
        except (KeyError, TypeError, ValueError) as err:
            raise GapruneError(f"malformed sparse plan ({err!r}); expected {{'layers': [{{name, shape, mask}}]}}") from None
        return cls(masks)


def plan_from_json(data: dict[str, Any]):
    """A channel Plan ({'units': ...}) or a SparsePlan ({'layers': ...}) from its JSON."""
    from gaprune.plan import Plan

    return SparsePlan.from_json(data) if "layers" in data else Plan.from_json(data)


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


class SparseCostModel:
    """MACs and params of a weight-masked network: a zero weight costs no multiply-accumulate."""

    def __init__(self, model: nn.Module, layers: Sequence[str], example_input: torch.Tensor) -> None:
        self.layers = list(layers)
        self.base_macs, self.base_params = count_macs_params(model, example_input[:1])
        positions: dict[str, int] = {}
        handles = [model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: positions.__setitem__(n, int(np.prod(out.shape[2:])) if out.dim() > 2 else 1))
            for n in self.layers]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example_input[:1].to(next(model.parameters()).device))
        model.train(was_training)
        for handle in handles:
            handle.remove()
        self.positions = positions

    def cost(self, plan: SparsePlan) -> tuple[int, int]:
        macs, params = self.base_macs, self.base_params
        for name, mask in plan.masks.items():
            pruned = int(mask.numel() - mask.sum())
            macs -= pruned * self.positions[name]
            params -= pruned
        return int(macs), int(params)
