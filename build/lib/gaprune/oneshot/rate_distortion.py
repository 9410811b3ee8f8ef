"""Rate-distortion layer-wise sparsity allocation (after Xu et al., "Efficient joint optimization
of layer-adaptive weight pruning", 2023), with magnitude pruning inside each layer.

1. Distortion curves: for every conv / linear layer alone, magnitude-prune it to each of a grid of
   kept counts and measure the output distortion on calibration data (the first
   `calib_samples` validation images): mean over samples of the squared logit error
   sum_c (z_c - z_ref_c)^2 against the model at the start of the step (the unpruned baseline for
   a one-shot run).
2. Allocation: assume distortions add over layers and minimise their sum subject to the weight
   budget by dynamic programming over the layers, with kept counts discretised to
   `total / bins` weights (distortion linearly interpolated between measured grid points); the
   few weights the discretisation leaves are handed back greedily so the budget is hit exactly.
3. Iterative schedule: `schedule_steps=k` prunes in k steps to sparsity 1-(1-a)^i (i = 1..k),
   re-measuring the curves each step on the pruned model (pruned weights stay pruned), with an
   optional short masked KD fine-tune between steps (`step_finetune_epochs`). `step_amount=a`
   fixes a (final sparsity 1-(1-a)^k, overriding target_sparsity); by default a is chosen so the
   last step lands on target_sparsity.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.oneshot.base import OneshotContext, OneshotResult, PRUNERS
from gaprune.utils.checks import check_fraction, check_int
from gaprune.oneshot.unstructured import Unstructured, keep_budget, layer_weights
from gaprune.pruning.masking import apply_masks_permanently, masked_weights
from gaprune.utils.errors import GapruneError

Curve = tuple[np.ndarray, np.ndarray]  # kept counts (ascending), distortion at each


@torch.no_grad()
def logits(model: nn.Module, calib: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    model.eval()
    return [model(x) for x in calib]


@torch.no_grad()
def output_distortion(model: nn.Module, calib: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """Mean over samples of the squared logit error against `reference`."""
    model.eval()
    total = sum(float(((model(x) - ref) ** 2).sum()) for x, ref in zip(calib, reference))
    return total / max(1, sum(x.shape[0] for x in calib))


def magnitude_rank(model: nn.Module, name: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Flat weight indices of layer `name` by descending |w| (ties by index); already pruned
    weights rank below every kept one, so masks cut from this order are nested in `mask`."""
    weight = model.get_submodule(name).weight.detach().abs().cpu().float()
    if mask is not None:
        weight = torch.where(mask, weight, torch.full_like(weight, -1.0))
    return torch.argsort(weight.flatten(), descending=True, stable=True)


def mask_from_rank(rank: torch.Tensor, shape: Sequence[int], keep: int) -> torch.Tensor:
    mask = torch.zeros(rank.numel(), dtype=torch.bool)
    mask[rank[: int(keep)]] = True
    return mask.reshape(tuple(shape))


def prune_layer_to(model: nn.Module, name: str, keep: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Magnitude mask keeping the `keep` largest |w| of the still-kept weights (nested in `mask`)."""
    shape = model.get_submodule(name).weight.shape
    return mask_from_rank(magnitude_rank(model, name, mask), shape, keep)


def layer_distortion(model: nn.Module, name: str, keep: int, calib: Sequence[torch.Tensor],
                     reference: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> float:
    """Distortion when only layer `name` is magnitude-pruned to `keep` weights."""
    return _distortion_with(model, name, prune_layer_to(model, name, keep, mask), calib, reference)


def _distortion_with(model: nn.Module, name: str, mask: torch.Tensor, calib: Sequence[torch.Tensor],
                     reference: Sequence[torch.Tensor]) -> float:
    with masked_weights(model, {name: mask}):
        return output_distortion(model, calib, reference)


def grid_counts(size: int, kept: int, grid: int) -> np.ndarray:
    """Kept counts to measure: densities (j/grid)^2 (denser at high sparsity) below the current count."""
    density = (np.arange(1, grid + 1) / grid) ** 2
    counts = np.clip(np.round(density * size).astype(np.int64), 1, kept)
    return np.unique(np.concatenate([counts, [kept]]))


def measure_curves(model: nn.Module, masks: dict[str, torch.Tensor], calib: Sequence[torch.Tensor], grid: int
                   ) -> dict[str, Curve]:
    """Per-layer distortion curves of the (masked) model against itself."""
    reference = logits(model, calib)
    curves = {}
    for name, mask in masks.items():
        kept = int(mask.sum())
        counts = grid_counts(mask.numel(), kept, grid)
        rank = magnitude_rank(model, name, mask)  # sorted once per layer
        dist = np.array([0.0 if k == kept else _distortion_with(model, name, mask_from_rank(rank, mask.shape, k),
                                                                calib, reference) for k in counts])
        curves[name] = (counts, dist)
    return curves


def allocate(curves: Sequence[Curve], caps: Sequence[int], keep: int, total: int, bins: int = 2000
             ) -> tuple[np.ndarray, float]:
    """Kept count per layer minimising the summed (interpolated) distortion with sum == keep.

    Dynamic programming over layers; a layer's options are kept counts floor(j*u) (u = total/bins
    weights per bin, at least 1 and at most its cap) costing j bins, and the budget is
    floor(keep/u) bins. Returns (counts, predicted summed distortion)."""
    caps = np.asarray(caps, dtype=np.int64)
    if keep < len(caps) or keep > caps.sum():
        raise GapruneError(f"cannot keep {keep} weights over {len(caps)} layers holding {int(caps.sum())} "
                           "(at least one per layer); change target_sparsity")
    unit = max(1.0, total / bins)
    budget = int(math.floor(keep / unit + 1e-9))
    options = []
    for (ks, ds), cap in zip(curves, caps):
        counts = np.floor(np.arange(0, math.floor(cap / unit) + 1) * unit).astype(np.int64)
        counts = np.unique(np.clip(np.concatenate([counts, [cap]]), 1, cap))
        cost = np.ceil(counts / unit - 1e-9).astype(np.int64)
        options.append((counts, cost, np.interp(counts, ks, ds)))
    best = np.zeros(budget + 1)  # best[b]: min distortion of the layers so far using at most b bins
    choices = []
    for counts, cost, dist in options:
        new = np.full(budget + 1, np.inf)
        pick = np.full(budget + 1, -1, dtype=np.int64)
        for j in range(len(counts)):
            c = int(cost[j])
            if c > budget:
                continue
            cand = np.full(budget + 1, np.inf)
            cand[c:] = best[: budget + 1 - c] + dist[j]
            better = cand < new
            new[better], pick[better] = cand[better], j
        best = new
        choices.append(pick)
    if not np.isfinite(best[budget]):
        raise GapruneError(f"the weight budget ({keep}) is too small for {len(caps)} layers at bins={bins}; "
                           "raise oneshot.params.bins or lower target_sparsity")
    chosen, b = [], budget
    for (counts, cost, _), pick in zip(reversed(options), reversed(choices)):
        j = int(pick[b])
        chosen.append(int(counts[j]))
        b -= int(cost[j])
    counts = np.array(chosen[::-1], dtype=np.int64)
    curve = [lambda k, ks=ks, ds=ds: float(np.interp(k, ks, ds)) for ks, ds in curves]
    slack = keep - int(counts.sum())
    while slack > 0:  # hand back what the discretisation left, where it lowers distortion most
        room = caps - counts
        add = np.minimum(room, slack)
        gains = [curve[i](counts[i]) - curve[i](counts[i] + add[i]) if add[i] > 0 else -np.inf
                 for i in range(len(counts))]
        i = int(np.argmax(gains))
        counts[i] += add[i]
        slack -= int(add[i])
    return counts, float(sum(curve[i](counts[i]) for i in range(len(counts))))


@PRUNERS.register("rate_distortion")
class RateDistortion(Unstructured):
    name = "rate_distortion"

    def __init__(self, target: float, grid: int = 24, calib_samples: int = 256, calib_batch_size: int = 256,
                 bins: int = 2000, schedule_steps: int = 1, step_amount: float | None = None,
                 step_finetune_epochs: int = 0) -> None:
        self.grid = check_int("oneshot.params.grid", grid, 2)
        self.calib_samples = check_int("oneshot.params.calib_samples", calib_samples, 1)
        self.calib_batch_size = check_int("oneshot.params.calib_batch_size", calib_batch_size, 1)
        self.bins = check_int("oneshot.params.bins", bins, 10)
        self.schedule_steps = check_int("oneshot.params.schedule_steps", schedule_steps, 1)
        self.step_finetune_epochs = check_int("oneshot.params.step_finetune_epochs", step_finetune_epochs, 0)
        if step_amount is not None:
            amount = check_fraction("oneshot.params.step_amount", step_amount)
            target = 1.0 - (1.0 - amount) ** self.schedule_steps  # the schedule fixes the final sparsity
        super().__init__(target)
        self.step_amount = (float(step_amount) if step_amount is not None
                            else 1.0 - (1.0 - self.target) ** (1.0 / self.schedule_steps))

    def label(self) -> str:
        return f"dp-k{self.schedule_steps}" + (f"-ft{self.step_finetune_epochs}" if self.step_finetune_epochs else "")

    def schedule(self) -> list[float]:
        """Sparsity after each step: 1 - (1 - a)^i."""
        return [1.0 - (1.0 - self.step_amount) ** i for i in range(1, self.schedule_steps + 1)]

    def run(self, ctx: OneshotContext) -> OneshotResult:
        if self.step_finetune_epochs and ctx.finetune is None:
            raise GapruneError("oneshot.params.step_finetune_epochs>0 needs training data (run it via scripts/oneshot.py)")
        calib = [x for x, _ in ctx.batches("val", self.calib_batch_size, limit=self.calib_samples)]
        model = copy.deepcopy(ctx.model).to(ctx.device).eval()
        names = list(layer_weights(model, self.layers(ctx)))
        masks = {n: torch.ones_like(model.get_submodule(n).weight, dtype=torch.bool, device="cpu") for n in names}
        total = sum(m.numel() for m in masks.values())
        steps, tuned = [], False
        for index, sparsity in enumerate(self.schedule(), start=1):
            curves = measure_curves(model, masks, calib, self.grid)
            keep = keep_budget(total, sparsity)
            caps = [int(masks[n].sum()) for n in names]
            counts, predicted = allocate([curves[n] for n in names], caps, keep, total, self.bins)
            reference = logits(model, calib)
            masks = {n: prune_layer_to(model, n, int(k), masks[n]) for n, k in zip(names, counts)}
            apply_masks_permanently(model, masks)
            measured = output_distortion(model, calib, reference)
            steps.append({"step": index, "target_sparsity": sparsity,
                          "sparsity": 1.0 - sum(int(m.sum()) for m in masks.values()) / total,
                          "predicted_distortion": predicted, "measured_distortion": measured,
                          "densities": {n: float(masks[n].float().mean()) for n in names},
                          "curves": {n: {"kept": curves[n][0].tolist(), "distortion": curves[n][1].tolist()}
                                     for n in names}})
            if self.step_finetune_epochs and index < self.schedule_steps:
                ctx.finetune(model, masks, self.step_finetune_epochs)
                tuned = True
        result = self.result(masks, schedule=self.schedule(), step_amount=self.step_amount, steps=steps)
        if tuned:
            result.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return result
