"""Genome <-> plan. An encoding says what the GA evolves and how a genome becomes a plan.

Genomes are flat float lists: `n_real` real genes in [low, high] (SBX crossover / polynomial
mutation), then `n_discrete` discrete genes stored as 0..choices-1 (uniform crossover / bit flip
or reset). Channel encodings decode to a `Plan` (kept channels per unit); `layer_sparsity`
decodes to a `SparsePlan` (weight masks per layer) and brings its own cost model.
"""
from __future__ import annotations

import inspect
import math
import random
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.pruning.cost import SparseCostModel
from gaprune.pruning.masking import sparse_layers
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.pruning.strategies import STRATEGIES
from gaprune.pruning.units import PrunableUnit
from gaprune.utils.errors import GapruneError
from gaprune.utils.registry import Registry

ENCODINGS: Registry[type["Encoding"]] = Registry("encoding")


def check_params(r_min: float, round_to: int, strategies: Sequence[str]) -> None:
    """Validate keep-ratio encoding options before any work is done."""
    if not isinstance(r_min, (int, float)) or not 0.0 < float(r_min) <= 1.0:
        raise GapruneError(f"encoding.params.r_min={r_min} is out of range; use a value in (0, 1], e.g. 0.1")
    if not isinstance(round_to, int) or round_to < 1:
        raise GapruneError(f"encoding.params.round_to={round_to} must be a whole number >= 1")
    if not strategies:
        raise GapruneError("encoding.params.strategies is empty; give at least one of: " + ", ".join(STRATEGIES.names()))
    for name in strategies:
        STRATEGIES.get(name)


class Encoding:
    """Base: genome layout and bounds, random / full genomes, decoding and the matching cost model.

    Subclasses set the layout (`n_real`, `n_discrete`, `choices`, `low`, `high`) and `decode`.
    `model` (the baseline) is given to every encoding; only weight-level encodings need it.
    """

    def __init__(self, units: Sequence[PrunableUnit], importance: dict[str, np.ndarray],
                 model: nn.Module | None = None) -> None:
        self.units = list(units)
        self.importance = importance
        self.model = model

    @classmethod
    def check_params(cls, **params: Any) -> None:
        """Validate `encoding.params` before any work is done (raises GapruneError)."""

    # --- genome layout -------------------------------------------------------------------------
    @property
    def n_real(self) -> int:
        return 0

    @property
    def n_discrete(self) -> int:
        return 0

    @property
    def choices(self) -> int:
        """Number of values a discrete gene takes."""
        return 1

    @property
    def low(self) -> float:
        """Lower bound of every real gene."""
        return 0.0

    @property
    def high(self) -> float:
        """Upper bound of every real gene."""
        return 1.0

    @property
    def size(self) -> int:
        return self.n_real + self.n_discrete

    def random_genome(self, rng: random.Random) -> list[float]:
        reals = [rng.uniform(self.low, self.high) for _ in range(self.n_real)]
        return reals + [float(rng.randrange(self.choices)) for _ in range(self.n_discrete)]

    def full_genome(self) -> list[float]:
        """The genome of the unpruned plan."""
        raise NotImplementedError

    def decode(self, genome: Sequence[float]):
        raise NotImplementedError

    # --- what the plan costs, how it is plotted ------------------------------------------------
    def cost_model(self, model, example_input, rng: random.Random):
        """Analytic channel cost, checked against physical pruning on two random plans."""
        from gaprune.pruning.cost import CostModel

        cost = CostModel(model, self.units, example_input)
        cost.verify([self.decode(self.random_genome(rng)) for _ in range(2)])
        return cost

    def layer_names(self) -> list[str]:
        """Names for per-layer plots (one per entry of a record's `keep_ratios`): one per unit."""
        return [u.name for u in self.units]


class KeepRatioEncoding(Encoding):
    """Per-unit keep ratio in [r_min, 1]; the kept channels are chosen by a strategy (one of
    `strategies`: `ratio` has one fixed strategy, `ratio_strategy` a strategy gene per unit)."""

    def __init__(self, units: Sequence[PrunableUnit], importance: dict[str, np.ndarray], r_min: float,
                 round_to: int, strategies: Sequence[str], model: nn.Module | None = None) -> None:
        check_params(r_min, round_to, strategies)
        super().__init__(units, importance, model)
        self.r_min = float(r_min)
        self.round_to = int(round_to)
        self.strategies = list(strategies)

    @property
    def n_real(self) -> int:
        return len(self.units)

    @property
    def low(self) -> float:
        return self.r_min

    def full_genome(self) -> list[float]:
        """The unpruned plan (every ratio 1)."""
        return [1.0] * self.n_real + [0.0] * self.n_discrete

    def keep_count(self, ratio: float, channels: int) -> int:
        low = max(1, math.ceil(self.r_min * channels - 1e-9))
        count = round(ratio * channels)
        if self.round_to > 1 and channels > self.round_to and count < channels:
            # nearest of {multiples of round_to below C} U {C}; ties go to the larger width
            allowed = [*range(self.round_to, channels, self.round_to), channels]
            count = min(allowed, key=lambda c: (abs(c - count), -c))
        return int(min(max(count, low), channels))

    def unit_strategies(self, genome: Sequence[float]) -> list[str]:
        return [self.strategies[0]] * len(self.units)

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
class RatioEncoding(KeepRatioEncoding):
    """Keep ratios only; every unit uses the fixed `strategy`."""

    def __init__(self, units: Sequence[PrunableUnit], importance: dict[str, np.ndarray], r_min: float = 0.1,
                 round_to: int = 1, strategy: str = "min", model: nn.Module | None = None) -> None:
        super().__init__(units, importance, r_min, round_to, [strategy], model)

    @classmethod
    def check_params(cls, r_min: float, round_to: int, strategy: str) -> None:
        check_params(r_min, round_to, [strategy])


@ENCODINGS.register("ratio_strategy")
class RatioStrategyEncoding(KeepRatioEncoding):
    """Keep ratio plus a strategy gene per unit."""

    def __init__(self, units: Sequence[PrunableUnit], importance: dict[str, np.ndarray], r_min: float = 0.1,
                 round_to: int = 1, strategies: Sequence[str] = ("min", "median"),
                 model: nn.Module | None = None) -> None:
        super().__init__(units, importance, r_min, round_to, strategies, model)

    @classmethod
    def check_params(cls, r_min: float, round_to: int, strategies: Sequence[str]) -> None:
        check_params(r_min, round_to, strategies)

    @property
    def n_discrete(self) -> int:
        return len(self.units)

    @property
    def choices(self) -> int:
        return len(self.strategies)

    def unit_strategies(self, genome: Sequence[float]) -> list[str]:
        last = len(self.strategies) - 1
        return [self.strategies[min(max(int(round(g)), 0), last)] for g in genome[self.n_real:]]


def _keep_range(init_keep: Any) -> tuple[float, float]:
    """init_keep: p, or [lo, hi] (each random genome draws its own p from that range)."""
    values = list(init_keep) if isinstance(init_keep, (list, tuple)) else [init_keep, init_keep]
    if len(values) != 2 or not all(isinstance(v, (int, float)) and 0.0 < float(v) <= 1.0 for v in values) \
            or values[0] > values[1]:
        raise GapruneError(f"encoding.params.init_keep={init_keep} is invalid; give a probability in (0, 1] "
                           "or a range [low, high] inside it, e.g. [0.3, 0.9]")
    return float(values[0]), float(values[1])


@ENCODINGS.register("channel_mask")
class ChannelMaskEncoding(Encoding):
    """One bit per channel of every unit (1 = keep), in unit order. A unit whose bits keep fewer
    than `min_keep` channels keeps its most important ones up to that count (never empty)."""

    def __init__(self, units: Sequence[PrunableUnit], importance: dict[str, np.ndarray],
                 init_keep: float | Sequence[float] = (0.3, 0.9), min_keep: int = 1,
                 model: nn.Module | None = None) -> None:
        self.check_params(init_keep=init_keep, min_keep=min_keep)
        super().__init__(units, importance, model)
        self.init_keep = _keep_range(init_keep)
        self.min_keep = int(min_keep)
        self.offsets = np.cumsum([0] + [u.channels for u in self.units]).tolist()
        # channels by decreasing importance (ties by index), to refill a unit below min_keep
        self.ranking = {u.name: np.argsort(-np.asarray(importance[u.name]), kind="stable") for u in self.units}

    @classmethod
    def check_params(cls, init_keep: Any, min_keep: int) -> None:
        _keep_range(init_keep)
        if not isinstance(min_keep, int) or min_keep < 1:
            raise GapruneError(f"encoding.params.min_keep={min_keep} must be a whole number >= 1")

    @property
    def n_discrete(self) -> int:
        return self.offsets[-1]

    @property
    def choices(self) -> int:
        return 2

    def random_genome(self, rng: random.Random) -> list[float]:
        p = rng.uniform(*self.init_keep)
        return [1.0 if rng.random() < p else 0.0 for _ in range(self.n_discrete)]

    def full_genome(self) -> list[float]:
        return [1.0] * self.n_discrete

    def decode(self, genome: Sequence[float]) -> Plan:
        if len(genome) != self.size:
            raise GapruneError(f"channel_mask genome has {len(genome)} genes but the model has {self.size} channels")
        bits = np.asarray(genome, dtype=float) >= 0.5
        keep, channels = {}, {}
        for unit, start, stop in zip(self.units, self.offsets, self.offsets[1:]):
            kept = np.flatnonzero(bits[start:stop])
            needed = min(self.min_keep, unit.channels)
            if len(kept) < needed:
                extra = [int(i) for i in self.ranking[unit.name] if not bits[start + i]][: needed - len(kept)]
                kept = np.sort(np.concatenate([kept, np.asarray(extra, dtype=kept.dtype)]))
            keep[unit.name] = tuple(int(i) for i in kept)
            channels[unit.name] = unit.channels
        return Plan(keep=keep, channels=channels, strategies={u.name: "mask" for u in self.units})


@ENCODINGS.register("layer_sparsity")
class LayerSparsityEncoding(Encoding):
    """Unstructured: one sparsity level in [s_min, s_max] per conv / linear layer (classifier
    included, `exclude` left dense); inside a layer the smallest-|w| weights are masked
    (`gaprune.pruning.masking.magnitude_masks`). Cost: MACs / params of the nonzero weights."""

    def __init__(self, units: Sequence[PrunableUnit], importance: dict[str, np.ndarray],
                 s_max: float = 0.95, s_min: float = 0.0, exclude: Sequence[str] = (),
                 model: nn.Module | None = None) -> None:
        self.check_params(s_max=s_max, s_min=s_min, exclude=exclude)
        if model is None:
            raise GapruneError("encoding=layer_sparsity needs the baseline model: build_encoding(..., model=model)")
        super().__init__(units, importance, model)
        self.s_min, self.s_max = float(s_min), float(s_max)
        layers = sparse_layers(model)
        unknown = [name for name in exclude if name not in layers]
        if unknown:
            raise GapruneError(f"encoding.params.exclude names unknown layer(s) {unknown}; "
                               f"conv/linear layers are: {', '.join(layers)}")
        self.layers = [name for name in layers if name not in set(exclude)]
        if not self.layers:
            raise GapruneError("encoding=layer_sparsity has no layer left to prune (every layer is excluded)")
        # magnitude order computed once (what magnitude_masks sorts on every call): decoding is O(weights)
        self._order, self._shape = {}, {}
        for name in self.layers:
            weight = model.get_submodule(name).weight.detach().abs().cpu()
            order = torch.argsort(weight.flatten(), descending=True, stable=True)
            self._order[name] = order.to(torch.int32 if order.numel() < 2**31 else torch.int64)
            self._shape[name] = tuple(weight.shape)

    @classmethod
    def check_params(cls, s_max: float, s_min: float, exclude: Sequence[str]) -> None:
        if not isinstance(s_max, (int, float)) or not 0.0 < float(s_max) < 1.0:
            raise GapruneError(f"encoding.params.s_max={s_max} is out of range; use a sparsity in (0, 1), e.g. 0.95")
        if not isinstance(s_min, (int, float)) or not 0.0 <= float(s_min) <= float(s_max):
            raise GapruneError(f"encoding.params.s_min={s_min} is out of range; use a value in [0, s_max={s_max}]")
        if isinstance(exclude, str) or not all(isinstance(name, str) for name in exclude):
            raise GapruneError(f"encoding.params.exclude={exclude!r} must be a list of layer names")

    @property
    def n_real(self) -> int:
        return len(self.layers)

    @property
    def low(self) -> float:
        return self.s_min

    @property
    def high(self) -> float:
        return self.s_max

    def full_genome(self) -> list[float]:
        """Every layer dense (sparsity 0, even when s_min > 0: the baseline for comparisons)."""
        return [0.0] * self.n_real

    def sparsities(self, genome: Sequence[float]) -> dict[str, float]:
        return {name: min(max(float(g), 0.0), self.s_max) for name, g in zip(self.layers, genome[: self.n_real])}

    def decode(self, genome: Sequence[float]) -> SparsePlan:
        masks = {}
        for name, level in self.sparsities(genome).items():
            order = self._order[name]
            keep = max(1, round((1.0 - level) * order.numel()))  # as magnitude_masks counts
            mask = torch.zeros(order.numel(), dtype=torch.bool)
            mask[order[:keep].long()] = True
            masks[name] = mask.reshape(self._shape[name])
        return SparsePlan(masks)

    def cost_model(self, model, example_input, rng: random.Random):
        return SparseCostModel(model, self.layers, example_input)

    def layer_names(self) -> list[str]:
        return list(self.layers)


def validate_encoding(name: str, **params) -> None:
    """Check `encoding.params` of `name` before any work: unknown keys and bad values are one
    GapruneError (the constructor's defaults fill what is not given)."""
    cls = ENCODINGS.get(name)
    try:
        bound = inspect.signature(cls).bind(None, None, **params)
    except TypeError as err:
        raise GapruneError(f"bad option for encoding={name}: {err}")
    bound.apply_defaults()
    options = {k: v for k, v in bound.arguments.items() if k not in ("units", "importance", "model")}
    cls.check_params(**options)


def build_encoding(name: str, units: Sequence[PrunableUnit], importance: dict[str, np.ndarray],
                   model: nn.Module | None = None, **params) -> Encoding:
    """The encoding `name`; `model` (the baseline) is needed by weight-level encodings only."""
    cls = ENCODINGS.get(name)
    try:
        return cls(units, importance, model=model, **params)
    except TypeError as err:
        raise GapruneError(f"bad option for encoding={name}: {err}")
