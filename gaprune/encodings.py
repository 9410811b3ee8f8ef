"""Genome <-> plan. An encoding says what the GA evolves and how a genome becomes a plan.

Genomes are flat float lists. Real genes (keep ratios) get SBX / polynomial mutation; discrete
genes (strategy choices, stored as 0..n-1) get uniform crossover / random reset.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np

from gaprune.errors import GapruneError
from gaprune.plan import Plan
from gaprune.registry import Registry
from gaprune.strategies import STRATEGIES
from gaprune.units import PrunableUnit

ENCODINGS: Registry[type["Encoding"]] = Registry("encoding")


def check_params(r_min: float = 0.1, round_to: int = 1, strategies: Sequence[str] = ("min", "median"),
                 strategy: str = "min") -> None:
    """Validate encoding options before any work is done."""
    if not isinstance(r_min, (int, float)) or not 0.0 < float(r_min) <= 1.0:
        raise GapruneError(f"encoding.params.r_min={r_min} is out of range; use a value in (0, 1], e.g. 0.1")
    if not isinstance(round_to, int) or round_to < 1:
        raise GapruneError(f"encoding.params.round_to={round_to} must be a whole number >= 1")
    if not strategies:
        raise GapruneError("encoding.params.strategies is empty; give at least one of: " + ", ".join(STRATEGIES.names()))
    for name in [strategy, *strategies]:
        STRATEGIES.get(name)


class Encoding:
    """Base: per-unit keep ratio in [r_min, 1], channels chosen by a strategy."""

    def __init__(
        self,
        units: Sequence[PrunableUnit],
        importance: dict[str, np.ndarray],
        r_min: float = 0.1,
        round_to: int = 1,
        strategies: Sequence[str] = ("min", "median"),
        strategy: str = "min",
    ) -> None:
        check_params(r_min, round_to, strategies, strategy)
        self.units = list(units)
        self.importance = importance
        self.r_min = float(r_min)
        self.round_to = int(round_to)
        self.strategies = list(strategies)
        self.strategy = strategy

    # --- genome layout -------------------------------------------------------------------------
    @property
    def n_real(self) -> int:
        return len(self.units)

    @property
    def n_discrete(self) -> int:
        return 0

    @property
    def choices(self) -> int:
        """Number of values a discrete gene takes."""
        return 1

    @property
    def size(self) -> int:
        return self.n_real + self.n_discrete

    def cost_model(self, model, example_input, rng: random.Random):
        """Analytic channel cost, checked against physical pruning on two random plans."""
        from gaprune.cost import CostModel

        cost = CostModel(model, self.units, example_input)
        cost.verify([self.decode(self.random_genome(rng)) for _ in range(2)])
        return cost

    def layer_names(self) -> list[str]:
        """Names for per-layer plots: one per unit."""
        return [u.name for u in self.units]

    def random_genome(self, rng: random.Random) -> list[float]:
        reals = [rng.uniform(self.r_min, 1.0) for _ in range(self.n_real)]
        return reals + [float(rng.randrange(self.choices)) for _ in range(self.n_discrete)]

    def full_genome(self) -> list[float]:
        """The unpruned plan (every ratio 1)."""
        return [1.0] * self.n_real + [0.0] * self.n_discrete

    # --- decoding ------------------------------------------------------------------------------
    def keep_count(self, ratio: float, channels: int) -> int:
        low = max(1, math.ceil(self.r_min * channels - 1e-9))
        count = round(ratio * channels)
        if self.round_to > 1 and channels > self.round_to and count < channels:
            # nearest of {multiples of round_to below C} U {C}; ties go to the larger width
            allowed = [*range(self.round_to, channels, self.round_to), channels]
            count = min(allowed, key=lambda c: (abs(c - count), -c))
        return int(min(max(count, low), channels))

    def unit_strategies(self, genome: Sequence[float]) -> list[str]:
        return [self.strategy] * len(self.units)

    def decode(self, genome: Sequence[float]) -> Plan:
        keep, channels, strategies = {}, {}, {}
        for unit, ratio, strategy in zip(self.units, genome[: self.n_real], self.unit_strategies(genome)):
            count = self.keep_count(ratio, unit.channels)
            chosen = STRATEGIES.get(strategy)(self.importance[unit.name], count)
            keep[unit.name] = tuple(int(i) for i in chosen)
            channels[unit.name] = unit.channels
            strategies[unit.name] = strategy
        return Plan(keep=keep, channels=channels, strategies=strategies)


@ENCODINGS.register("ratio")
class RatioEncoding(Encoding):
    """Keep ratios only; every unit uses the fixed `strategy`."""


@ENCODINGS.register("ratio_strategy")
class RatioStrategyEncoding(Encoding):
    """Keep ratio plus a strategy gene per unit."""

    @property
    def n_discrete(self) -> int:
        return len(self.units)

    @property
    def choices(self) -> int:
        return len(self.strategies)

    def unit_strategies(self, genome: Sequence[float]) -> list[str]:
        last = len(self.strategies) - 1
        return [self.strategies[min(max(int(round(g)), 0), last)] for g in genome[self.n_real:]]


def validate_encoding(name: str, **params) -> None:
    ENCODINGS.get(name)
    try:
        check_params(**params)
    except TypeError as err:
        raise GapruneError(f"bad option for encoding={name}: {err}")


def build_encoding(name: str, units: Sequence[PrunableUnit], importance: dict[str, np.ndarray], **params) -> Encoding:
    cls = ENCODINGS.get(name)
    try:
        return cls(units, importance, **params)
    except TypeError as err:
        raise GapruneError(f"bad option for encoding={name}: {err}")
