"""Unstructured (weight) one-shot pruners over every conv / linear weight (classifier included), each
hitting `target_sparsity` (share of those weights set to zero) to the weight:

- `global_magnitude`: one global |w| threshold.
- `uniform`: the same sparsity in every layer; `keep_first_dense=true` keeps the first conv dense
  (common practice) and raises the others' sparsity so the total still hits the target.
- `erk` (Erdős–Rényi-Kernel, Evci et al. 2020): layer density proportional to
  (sum of the weight's dims) / (product of its dims), scaled to hit the target; a layer whose
  density would pass 1 is kept dense and the rest is re-scaled (redistribution).
- `lamp` (Lee et al. 2021): score w^2 / (sum of w^2 over the weights of the same layer at least as
  large), one global threshold; every layer keeps its largest weight.
Inside a layer the kept weights are always the largest |w| (ties by index, as `magnitude_masks`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.oneshot.base import OneshotContext, OneshotResult, PRUNERS, Pruner
from gaprune.pruning.masking import sparse_layers
from gaprune.pruning.plan import SparsePlan
from gaprune.utils.errors import GapruneError


def layer_weights(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight.detach().cpu().float() for name in (layers or sparse_layers(model))}


def keep_budget(total: int, sparsity: float) -> int:
    return max(1, round((1.0 - sparsity) * total))


def top_k_mask(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the `keep` highest scores (stable: ties go to the lower index), as a bool mask."""
    flat = score.flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order[: int(keep)]] = True
    return mask.reshape(score.shape)


def masks_from_counts(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    return {name: top_k_mask(scores[name], counts[name]) for name in scores}


def masks_from_global_scores(scores: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Keep the `keep` highest scores over all layers together (one global threshold)."""
    flat = torch.cat([s.flatten().double() for s in scores.values()])
    mask = top_k_mask(flat, keep)
    out, start = {}, 0
    for name, score in scores.items():
        out[name] = mask[start:start + score.numel()].reshape(score.shape)
        start += score.numel()
    return out


def apportion(desired: np.ndarray, sizes: np.ndarray, total: int, minimum: int = 1) -> np.ndarray:
    """Whole kept counts in [min(minimum, n), n] summing to `total`, closest to `desired`
    (largest-remainder rounding)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    low = np.minimum(minimum, sizes)
    if not low.sum() <= total <= sizes.sum():
        raise GapruneError(f"cannot keep {total} weights in layers of sizes {sizes.tolist()} with at least {minimum} each")
    want = np.clip(np.asarray(desired, dtype=np.float64), low, sizes)
    counts = np.clip(np.floor(want).astype(np.int64), low, sizes)
    frac = want - counts
    while counts.sum() != total:
        short = total - int(counts.sum())
        if short > 0:
            room = np.flatnonzero(counts < sizes)
            pick = room[np.argsort(-frac[room], kind="stable")][:short]
            counts[pick] += 1
            frac[pick] -= 1.0
        else:
            room = np.flatnonzero(counts > low)
            pick = room[np.argsort(frac[room], kind="stable")][:-short]
            counts[pick] -= 1
            frac[pick] += 1.0
    return counts


def erk_densities(shapes: Sequence[Sequence[int]], keep: int, power: float = 1.0) -> np.ndarray:
    """ERK density per layer: eps * (sum(dims)/prod(dims))**power, capped at 1 with the excess
    redistributed over the other layers, so that sum(density * size) == keep."""
    sizes = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([sum(s) / math.prod(s) for s in shapes], dtype=np.float64) ** power
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        budget = keep - sizes[dense].sum()
        if budget <= 0:
            raise GapruneError("ERK: the dense layers alone exceed the weight budget; lower target_sparsity")
        eps = budget / (raw[~dense] * sizes[~dense]).sum()
        density = np.where(dense, 1.0, eps * raw)
        over = (density > 1.0) & ~dense
        if not over.any():
            return density
        dense |= over


class Unstructured(Pruner):
    kind = "unstructured"

    def layers(self, ctx: OneshotContext) -> list[str]:
        return sparse_layers(ctx.model)

    def result(self, masks: dict[str, torch.Tensor], **info) -> OneshotResult:
        plan = SparsePlan(masks)
        return OneshotResult(plan, {"sparsity": plan.sparsity(),
                                     "densities": {n: float(m.float().mean()) for n, m in masks.items()}, **info})


@PRUNERS.register("global_magnitude")
class GlobalMagnitude(Unstructured):
    name = "global_magnitude"

    def __init__(self, target: float) -> None:
        super().__init__(target)

    def label(self) -> str:
        return "global"

    def run(self, ctx: OneshotContext) -> OneshotResult:
        weights = layer_weights(ctx.model, self.layers(ctx))
        keep = keep_budget(sum(w.numel() for w in weights.values()), self.target)
        masks = masks_from_global_scores({n: w.abs() for n, w in weights.items()}, keep)
        threshold = min(float(w.abs()[m].min()) for w, m in zip(weights.values(), masks.values()) if m.any())
        return self.result(masks, threshold=threshold)


@PRUNERS.register("uniform")
class Uniform(Unstructured):
    name = "uniform"

    def __init__(self, target: float, keep_first_dense: bool = False) -> None:
        super().__init__(target)
        if not isinstance(keep_first_dense, bool):
            raise GapruneError(f"oneshot.params.keep_first_dense={keep_first_dense!r} must be true or false")
        self.keep_first_dense = keep_first_dense

    def label(self) -> str:
        return "uniform-dense1" if self.keep_first_dense else "uniform"

    def run(self, ctx: OneshotContext) -> OneshotResult:
        weights = layer_weights(ctx.model, self.layers(ctx))
        names = list(weights)
        sizes = np.array([w.numel() for w in weights.values()])
        total, keep = int(sizes.sum()), keep_budget(int(sizes.sum()), self.target)
        dense = np.zeros(len(names), dtype=bool)
        if self.keep_first_dense:
            convs = [i for i, n in enumerate(names) if isinstance(ctx.model.get_submodule(n), nn.Conv2d)]
            dense[(convs or [0])[0]] = True
        rest = sizes[~dense].sum()
        level = (total - keep) / rest if rest else 0.0  # sparsity of every non-dense layer
        if level >= 1.0:
            raise GapruneError(f"target_sparsity={self.target} cannot be reached with the first layer dense; "
                               "lower it or set oneshot.params.keep_first_dense=false")
        desired = np.where(dense, sizes, (1.0 - level) * sizes)
        counts = sizes.copy()  # dense layers keep everything; the others are rounded to the exact budget
        counts[~dense] = apportion(desired[~dense], sizes[~dense], keep - int(sizes[dense].sum()))
        masks = masks_from_counts({n: w.abs() for n, w in weights.items()}, dict(zip(names, counts.tolist())))
        return self.result(masks, layer_sparsity=float(level))


@PRUNERS.register("erk")
class ERK(Unstructured):
    name = "erk"

    def __init__(self, target: float, power: float = 1.0) -> None:
        super().__init__(target)
        if isinstance(power, bool) or not isinstance(power, (int, float)) or power < 0:
            raise GapruneError(f"oneshot.params.power={power!r} must be a number >= 0 (1.0 is ERK, 0 is uniform)")
        self.power = float(power)

    def label(self) -> str:
        return "erk"

    def run(self, ctx: OneshotContext) -> OneshotResult:
        weights = layer_weights(ctx.model, self.layers(ctx))
        sizes = np.array([w.numel() for w in weights.values()])
        keep = keep_budget(int(sizes.sum()), self.target)
        density = erk_densities([tuple(w.shape) for w in weights.values()], keep, self.power)
        counts = apportion(density * sizes, sizes, keep)
        masks = masks_from_counts({n: w.abs() for n, w in weights.items()}, dict(zip(weights, counts.tolist())))
        return self.result(masks, erk_density=dict(zip(weights, density.tolist())))


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP: w_u^2 / sum of w_v^2 over the weights v of the layer with |w_v| >= |w_u|."""
    sq = weight.detach().double().flatten() ** 2
    order = torch.argsort(sq, stable=True)  # ascending
    ranked = sq[order]
    suffix = torch.flip(torch.cumsum(torch.flip(ranked, [0]), 0), [0])  # sum of self and everything larger
    scores = torch.empty_like(sq)
    scores[order] = ranked / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    return scores.reshape(weight.shape)


@PRUNERS.register("lamp")
class LAMP(Unstructured):
    name = "lamp"

    def __init__(self, target: float) -> None:
        super().__init__(target)

    def label(self) -> str:
        return "lamp"

    def run(self, ctx: OneshotContext) -> OneshotResult:
        weights = layer_weights(ctx.model, self.layers(ctx))
        keep = keep_budget(sum(w.numel() for w in weights.values()), self.target)
        scores = {n: lamp_scores(w) for n, w in weights.items()}
        global_masks = masks_from_global_scores(scores, keep)
        # same per-layer counts, kept weights re-chosen by |w| so ties inside a layer break like magnitude_masks
        counts = {n: int(m.sum()) for n, m in global_masks.items()}
        masks = masks_from_counts({n: w.abs() for n, w in weights.items()}, counts)
        return self.result(masks)
