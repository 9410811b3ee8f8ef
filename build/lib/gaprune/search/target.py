"""Searching at a MACs target: repair genomes onto the target, and seed the first population
with the one-shot allocations at that target.

A search whose user asked for `score.target_macs_reduction` (and `pick=target_macs`) should
spend its budget on plans that cost what the user will deploy, not on the whole accuracy/MACs
front. `TargetRepair` maps every keep-ratio genome whose plan misses the target band
[target, target + tolerance] onto it by scaling all keep ratios by one factor (bisection on the
analytic cost): the allocation's shape (which layers keep relatively more) is what the GA
evolves, the overall width follows the target. The repaired genome replaces the evaluated one
(Lamarckian), so offspring inherit plans that meet the target. `target_seeds` returns the genomes
of the uniform allocation and of the global-threshold (global Taylor, `min`) allocation at the
target, the two one-shot pruners the search must beat, so it starts where they end.

Invariants: a repaired genome decodes to a plan whose MACs reduction is >= target whenever any
plan of the encoding reaches it (else the deepest plan, every ratio at r_min); a genome already
inside the band is returned unchanged; repair is deterministic (no random state used).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gaprune.pruning.allocation import normalised, removal_order
from gaprune.pruning.cost import CostModel
from gaprune.pruning.plan import Plan
from gaprune.search.encodings import Encoding, KeepRatioEncoding
from gaprune.utils.errors import GapruneError


def macs_reduction(cost: CostModel, plan: Plan) -> float:
    return 1.0 - cost.cost(plan)[0] / cost.base_macs


class TargetRepair:
    """genome -> genome whose plan lands in [target, target + tolerance] of MACs reduction."""

    def __init__(self, encoding: Encoding, cost: CostModel, target: float, tolerance: float = 0.01,
                 steps: int = 40) -> None:
        if not isinstance(encoding, KeepRatioEncoding):
            raise GapruneError(f"score.repair_to_target=true works with keep-ratio encodings (ratio, "
                               f"ratio_strategy), not {type(encoding).__name__}; set score.repair_to_target=false")
        if not 0.0 <= tolerance < 1.0:
            raise GapruneError(f"score.target_tolerance={tolerance} must be in [0, 1), e.g. 0.01")
        self.encoding, self.cost = encoding, cost
        self.target, self.tolerance, self.steps = float(target), float(tolerance), int(steps)

    def reduction(self, genome: Sequence[float]) -> float:
        return macs_reduction(self.cost, self.encoding.decode(genome))

    def scaled(self, genome: Sequence[float], factor: float) -> list[float]:
        enc = self.encoding
        reals = [min(enc.high, max(enc.low, g * factor)) for g in genome[: enc.n_real]]
        return reals + list(genome[enc.n_real:])

    def __call__(self, genome: Sequence[float]) -> list[float]:
        genome = [float(g) for g in genome]
        reached = self.reduction(genome)
        if self.target <= reached <= self.target + self.tolerance:
            return genome
        # reduction(scaled(g, f)) falls as f grows: f = 0 puts every ratio at r_min, f = 1 / min ratio
        # keeps everything. Find the largest factor whose plan still reaches the target.
        lo, hi = 0.0, 1.0 / max(self.encoding.low, min(genome[: self.encoding.n_real]))
        if self.reduction(self.scaled(genome, lo)) < self.target:
            return self.scaled(genome, lo)  # out of reach: the deepest plan of this shape
        for _ in range(self.steps):
            mid = (lo + hi) / 2
            if self.reduction(self.scaled(genome, mid)) >= self.target:
                lo = mid
            else:
                hi = mid
        fixed = self.scaled(genome, lo)
        if self.reduction(fixed) > self.target + self.tolerance:
            fixed = self.give_back(fixed, genome)
        return fixed

    def give_back(self, fixed: list[float], wanted: Sequence[float]) -> list[float]:
        """Rounding can leave the scaled plan well past the target (many units lose a channel at
        the same factor). Hand channels back one at a time, most-wanted units first (highest
        ratio in the unrepaired genome), while the plan still reaches the target; the genes then
        hold exact keep counts (count / channels)."""
        enc = self.encoding
        counts = [len(enc.decode(fixed).keep[u.name]) for u in enc.units]
        order = sorted(range(enc.n_real), key=lambda i: -wanted[i])
        tail = list(fixed[enc.n_real:])

        def genome_of(keep: Sequence[int]) -> list[float]:
            return [min(enc.high, max(enc.low, c / u.channels)) for c, u in zip(keep, enc.units)] + tail

        grown = True
        while grown and self.reduction(genome_of(counts)) > self.target + self.tolerance:
            grown = False
            for i in order:
                if counts[i] >= enc.units[i].channels:
                    continue
                trial = counts[:i] + [counts[i] + 1] + counts[i + 1:]
                if self.reduction(genome_of(trial)) >= self.target:
                    counts, grown = trial, True
        return genome_of(counts)


def target_seeds(encoding: KeepRatioEncoding, cost: CostModel, importance: dict[str, np.ndarray],
                 target: float) -> dict[str, list[float]]:
    """Genomes of the one-shot allocations at `target` (strategy `min` in every unit):
    `uniform` (one keep ratio everywhere) and `global` (one global threshold on importance
    normalised by each unit's mean, as `oneshot=global_taylor` does)."""
    repair = TargetRepair(encoding, cost, target, tolerance=0.0)
    min_gene = float(encoding.strategies.index("min")) if "min" in encoding.strategies else 0.0
    strategy = [min_gene] * encoding.n_discrete
    seeds = {"uniform": repair([1.0] * encoding.n_real + strategy)}
    units = encoding.units
    channels = np.array([u.channels for u in units])
    unit_of, _ = removal_order(units, normalised(importance, "mean"))

    def genome_after(k: int) -> list[float]:
        keep = channels - np.bincount(unit_of[:k], minlength=len(units))
        return [min(1.0, max(encoding.low, c / w)) for c, w in zip(keep, channels)] + strategy

    lo, hi = 0, len(unit_of)  # fewest removals whose plan reaches the target
    while lo < hi:
        mid = (lo + hi) // 2
        if repair.reduction(genome_after(mid)) >= target:
            hi = mid
        else:
            lo = mid + 1
    seeds["global"] = genome_after(lo)
    return seeds
