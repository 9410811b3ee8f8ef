"""Structured (channel) one-shot pruners: one global threshold or one uniform ratio, found by bisection
on the analytic MACs of the plan (`gaprune.pruning.cost.CostModel`) so the plan reaches
`target_macs_reduction` with the smallest overshoot the channel granularity allows.

- `global_taylor` (rule min | median | max): per-unit-normalised Taylor importance, one global
  threshold. `min` removes the globally least important channels; `median` takes the same
  per-unit keep counts and removes, inside each unit, the window around the median rank
  (strategy `median`); `max` removes the most important channels (a sanity check).
- `uniform_l1`: the same keep ratio in every unit, filters chosen by L1 norm (strategy min).
- `slimming` (network slimming): global threshold on raw BN |gamma| (mean over the unit's own
  channels of its BNs: a BN reading a concatenation contributes only the unit's part),
  meant for a baseline trained with `trainer.bn_sparsity>0`.
Every unit keeps at least one channel.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
import torch.nn as nn

from gaprune.oneshot.base import OneshotContext, OneshotResult, PRUNERS, Pruner
from gaprune.utils.checks import check_choice, check_int
from gaprune.pruning.allocation import normalised, removal_order
from gaprune.pruning.importance import bn_gammas, unit_channel_mean
from gaprune.pruning.plan import Plan
from gaprune.pruning.strategies import STRATEGIES
from gaprune.pruning.units import PrunableUnit
from gaprune.utils.errors import GapruneError

Chooser = Callable[[np.ndarray, int], np.ndarray]


def keep_least_important(importance: np.ndarray, keep: int) -> np.ndarray:
    """Opposite of Min-Importance: keep the `keep` lowest-scored channels (rule `max`)."""
    return np.sort(np.argsort(importance, kind="stable")[:keep])


def plan_from_counts(units: Sequence[PrunableUnit], scores: dict[str, np.ndarray], keep: Sequence[int],
                     chooser: Chooser, strategy: str) -> Plan:
    return Plan(keep={u.name: tuple(int(i) for i in chooser(scores[u.name], int(k))) for u, k in zip(units, keep)},
                channels={u.name: u.channels for u in units}, strategies={u.name: strategy for u in units})


def macs_reduction(ctx: OneshotContext, plan: Plan) -> float:
    cost = ctx.cost_model()
    return 1.0 - cost.cost(plan)[0] / cost.base_macs


def global_threshold_plan(ctx: OneshotContext, scores: dict[str, np.ndarray], target: float, chooser: Chooser,
                          strategy: str, most_important_first: bool = False) -> OneshotResult:
    """Smallest number of globally ranked removals whose plan reaches `target` (bisection)."""
    units = list(ctx.units)
    unit_of, value = removal_order(units, scores, most_important_first)
    channels = np.array([u.channels for u in units])

    def plan_after(k: int) -> Plan:
        keep = channels - np.bincount(unit_of[:k], minlength=len(units))
        return plan_from_counts(units, scores, keep, chooser, strategy)

    deepest = plan_after(len(unit_of))
    ctx.cost_model().verify([deepest])  # falls back to exact counting if the analytic count is off
    reachable = macs_reduction(ctx, deepest)
    if reachable < target:
        raise GapruneError(f"target_macs_reduction={target} is out of reach: keeping one channel per unit removes "
                           f"at most {reachable:.1%} of the MACs; lower the target")
    lo, hi = 0, len(unit_of)
    while lo < hi:
        mid = (lo + hi) // 2
        if macs_reduction(ctx, plan_after(mid)) >= target:
            hi = mid
        else:
            lo = mid + 1
    plan = plan_after(lo)
    reached = macs_reduction(ctx, plan)
    return OneshotResult(plan, {"removed_channels": int(lo), "threshold": float(value[lo - 1]) if lo else None,
                                 "macs_reduction": reached, "keep_counts": plan.keep_counts(),
                                 "one_fewer_removal_reduction": macs_reduction(ctx, plan_after(lo - 1)) if lo else 0.0})


@PRUNERS.register("global_taylor")
class GlobalTaylor(Pruner):
    kind = "structured"
    name = "global_taylor"

    def __init__(self, target: float, rule: str = "min", normalise: str = "mean", importance: str = "taylor",
                 batches: int = 8, batch_size: int = 128) -> None:
        super().__init__(target)
        from gaprune.pruning.importance import IMPORTANCES

        self.rule = check_choice("oneshot.params.rule", rule, ("min", "median", "max"))
        self.normalise = check_choice("oneshot.params.normalise", normalise, ("mean", "sum", "max"))
        IMPORTANCES.get(importance)
        self.importance = importance
        self.batches = check_int("oneshot.params.batches", batches, 0 if importance != "taylor" else 1)
        self.batch_size = check_int("oneshot.params.batch_size", batch_size, 1)

    def label(self) -> str:
        return self.rule

    def run(self, ctx: OneshotContext) -> OneshotResult:
        scores = normalised(ctx.importance(self.importance, self.batches, self.batch_size), self.normalise)
        if self.rule == "max":
            return global_threshold_plan(ctx, scores, self.target, keep_least_important, "max", most_important_first=True)
        return global_threshold_plan(ctx, scores, self.target, STRATEGIES.get(self.rule), self.rule)


@PRUNERS.register("uniform_l1")
class UniformL1(Pruner):
    kind = "structured"
    name = "uniform_l1"

    def __init__(self, target: float) -> None:
        super().__init__(target)

    def label(self) -> str:
        return "l1"

    def run(self, ctx: OneshotContext) -> OneshotResult:
        units = list(ctx.units)
        scores = ctx.importance("l1", 0)
        choose = STRATEGIES.get("min")

        def counts_at(ratio: float) -> list[int]:
            return [min(u.channels, max(1, round(ratio * u.channels))) for u in units]

        def plan_at(ratio: float) -> Plan:
            return plan_from_counts(units, scores, counts_at(ratio), choose, "min")

        ctx.cost_model().verify([plan_at(0.0)])
        reachable = macs_reduction(ctx, plan_at(0.0))
        if reachable < self.target:
            raise GapruneError(f"target_macs_reduction={self.target} is out of reach: one channel per unit removes "
                               f"at most {reachable:.1%} of the MACs; lower the target")
        lo, hi = 0.0, 1.0  # largest ratio whose plan still reaches the target
        for _ in range(60):
            mid = (lo + hi) / 2
            if macs_reduction(ctx, plan_at(mid)) >= self.target:
                lo = mid
            else:
                hi = mid
        # one ratio rounds every unit at once, so the plan can land points past the target: hand
        # single channels back, always to the unit now furthest below the common ratio, while the
        # plan still reaches the target (as uniform as the target allows)
        keep, handed_back = counts_at(lo), 0
        while True:
            for i in sorted(range(len(units)), key=lambda i: (keep[i] / units[i].channels, i)):
                trial = keep[:i] + [keep[i] + 1] + keep[i + 1:]
                if keep[i] < units[i].channels and \
                        macs_reduction(ctx, plan_from_counts(units, scores, trial, choose, "min")) >= self.target:
                    keep, handed_back = trial, handed_back + 1
                    break
            else:
                break
        plan = plan_from_counts(units, scores, keep, choose, "min")
        return OneshotResult(plan, {"keep_ratio": lo, "handed_back": handed_back,
                                     "macs_reduction": macs_reduction(ctx, plan), "keep_counts": plan.keep_counts()})


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@PRUNERS.register("slimming")
class Slimming(Pruner):
    """Network slimming (Liu et al. 2017): BN |gamma| as channel saliency, one global threshold."""

    kind = "structured"
    name = "slimming"

    def __init__(self, target: float, sparse_tol: float = 0.01, min_sparse_share: float = 0.1) -> None:
        super().__init__(target)
        self.sparse_tol = float(sparse_tol)
        self.min_sparse_share = float(min_sparse_share)

    def label(self) -> str:
        return "bn-gamma"

    def check_model(self, model: nn.Module) -> None:
        if not has_batchnorm(model):
            raise GapruneError(f"oneshot=slimming ranks channels by BatchNorm |gamma| but {type(model).__name__} has no "
                               "BatchNorm layers; use oneshot=global_taylor or oneshot=uniform_l1")

    def run(self, ctx: OneshotContext) -> OneshotResult:
        self.check_model(ctx.model)
        scores = slimming_scores(ctx.model, ctx.units)
        gammas = np.concatenate(list(scores.values()))
        share = float(np.mean(gammas < self.sparse_tol * gammas.max())) if gammas.max() > 0 else 1.0
        sparse = share >= self.min_sparse_share
        if not sparse:
            warnings.warn(f"oneshot=slimming: the BN gammas are not sparse (only {share:.1%} are below "
                          f"{self.sparse_tol:g} x max|gamma|); network slimming expects a baseline trained with "
                          "trainer.bn_sparsity>0 (e.g. 1e-4) - this is plain global |gamma| pruning", stacklevel=2)
        result = global_threshold_plan(ctx, scores, self.target, STRATEGIES.get("min"), "min")
        result.info.update(gammas_sparse=sparse, small_gamma_share=share)
        return result


def slimming_scores(model: nn.Module, units: Sequence[PrunableUnit]) -> dict[str, np.ndarray]:
    """Per unit channel: mean |gamma| over the unit's own channels of each of its BatchNorms."""
    gammas, scores = bn_gammas(model), {}
    for unit in units:
        bns = [n for n in unit.out_modules if isinstance(model.get_submodule(n), nn.modules.batchnorm._BatchNorm)]
        score = unit_channel_mean(unit, gammas) if all(n in gammas for n in bns) else None
        if score is None:
            raise GapruneError(f"oneshot=slimming needs an affine BatchNorm after every pruned layer, but unit "
                               f"'{unit.name}' has none; use oneshot=global_taylor or oneshot=uniform_l1")
        scores[unit.name] = score
    return scores


def taylor_mass_kept(plan: Plan, importance: dict[str, np.ndarray]) -> float:
    """Share of per-unit-normalised importance a plan keeps, averaged over units (taylor_proxy)."""
    shares = [float(np.asarray(importance[name])[list(idx)].sum() / max(1e-12, np.asarray(importance[name]).sum()))
              for name, idx in plan.keep.items()]
    return float(np.mean(shares)) if shares else math.nan
