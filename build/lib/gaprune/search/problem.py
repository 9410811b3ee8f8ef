"""The search problem: genome -> plan -> (proxy, MACs, params, score), with a cache and a record
of every plan evaluated. Optimizers only see genomes and objective tuples.

With a `latency` cost (`gaprune.deploy.lut.LatencyCost`), every record also holds the plan's
predicted latency (`latency_us`) and `latency_reduction` (1 - latency / baseline latency); the
objective `latency` (minimised) is latency as a fraction of the baseline's. Asking for it without
a latency cost is an error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from gaprune.pruning.cost import CostModel
from gaprune.pruning.plan import Plan
from gaprune.search.encodings import Encoding
from gaprune.search.fitness import Fitness
from gaprune.utils.errors import GapruneError

OBJECTIVE_KEYS = {"proxy": 1.0, "macs": -1.0, "params": -1.0, "latency": -1.0}


def check_objectives(objectives: Sequence[str], key: str = "optimizer.objectives") -> None:
    unknown = [name for name in objectives if name not in OBJECTIVE_KEYS]
    if unknown or "proxy" not in objectives:
        raise GapruneError(f"{key}={list(objectives)} invalid; use a subset of {list(OBJECTIVE_KEYS)} that includes proxy")


@dataclass
class Score:
    """Scalar score for single-objective search: weighted sum, or proxy under a MACs target."""

    w_acc: float = 1.0
    w_macs: float = 0.5
    w_params: float = 0.0
    w_latency: float = 0.0  # weight of the predicted latency reduction (needs the latency LUT)
    target_macs_reduction: float | None = None
    target_latency_reduction: float | None = None  # enables pick=target_latency
    penalty: float = 2.0
    repair_to_target: bool = True  # with a target: every genome is repaired onto it (gaprune.target)
    target_tolerance: float = 0.01  # repair leaves plans in [target, target + tolerance] alone

    def __post_init__(self) -> None:
        target = self.target_macs_reduction
        if target is not None and not 0.0 < float(target) < 1.0:
            raise GapruneError(
                f"score.target_macs_reduction={target} is out of range; give a fraction in (0, 1), e.g. 0.7"
            )
        target = self.target_latency_reduction
        if target is not None and not 0.0 < float(target) < 1.0:
            raise GapruneError(
                f"score.target_latency_reduction={target} is out of range; give a fraction in (0, 1), e.g. 0.5"
            )

    @property
    def uses_latency(self) -> bool:
        return bool(self.w_latency) or self.target_latency_reduction is not None

    def of(self, proxy: float, macs_reduction: float, params_reduction: float, latency_reduction: float = 0.0) -> float:
        if self.target_macs_reduction is not None or self.target_latency_reduction is not None:
            short = max(0.0, (self.target_macs_reduction or 0.0) - macs_reduction)
            short += max(0.0, (self.target_latency_reduction or 0.0) - latency_reduction)
            return proxy - self.penalty * short
        return (self.w_acc * proxy + self.w_macs * macs_reduction + self.w_params * params_reduction
                + self.w_latency * latency_reduction)


class Problem:
    def __init__(self, encoding: Encoding, fitness: Fitness, cost: CostModel, score: Score,
                 objectives: Sequence[str] = ("proxy", "macs", "params"),
                 repair: Callable[[Sequence[float]], list[float]] | None = None, latency: Any = None) -> None:
        check_objectives(objectives)
        if latency is None and ("latency" in objectives or score.uses_latency):
            raise GapruneError("the latency objective needs the latency lookup table; build the Problem with "
                               "latency=LatencyCost(...) (search.py does when latency is asked for)")
        self.latency = latency
        self.encoding = encoding
        self.fitness = fitness
        self.cost = cost
        self.score = score
        self.objectives = list(objectives)
        self.repair = repair
        self.records: list[dict[str, Any]] = []
        self._cache: dict[tuple, dict[str, Any]] = {}
        self.cache_hits = 0

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(OBJECTIVE_KEYS[name] for name in self.objectives)

    def restore(self, records: list[dict[str, Any]], cache_hits: int = 0) -> None:
        """Rebuild the cache from saved records (resume)."""
        self.records = list(records)
        self.cache_hits = cache_hits
        self._cache = {}
        for record in self.records:
            self._cache[self._key(self.encoding.decode(record["genome"]))] = record

    @staticmethod
    def _key(plan: Plan) -> tuple:
        return plan.signature()

    def evaluate(self, genomes: Sequence[list[float]], generation: int) -> list[dict[str, Any]]:
        """Records for each genome; identical plans are evaluated once. With `repair`, each genome
        is first replaced in place by its repaired form (so the optimizer keeps what was scored)."""
        if self.repair is not None:
            for genome in genomes:
                genome[:] = self.repair(genome)
        plans = [self.encoding.decode(g) for g in genomes]
        fresh: dict[tuple, int] = {}
        for index, plan in enumerate(plans):
            key = self._key(plan)
            if key not in self._cache and key not in fresh:
                fresh[key] = index
        self.cache_hits += len(plans) - len(fresh)
        if fresh:
            indices = list(fresh.values())
            results = self.fitness.evaluate([plans[i] for i in indices])
            for index, result in zip(indices, results):
                self._cache[self._key(plans[index])] = self._record(genomes[index], plans[index], result, generation)
        return [self._cache[self._key(plan)] for plan in plans]

    def record_of(self, genome: Sequence[float]) -> dict[str, Any]:
        """The record of an already evaluated genome (no evaluation, no cache-hit count)."""
        return self._cache[self._key(self.encoding.decode(genome))]

    def _record(self, genome: Sequence[float], plan: Plan, result: dict[str, float], generation: int) -> dict[str, Any]:
        proxy = float(result["proxy"])
        if not np.isfinite(proxy):
            raise GapruneError(f"fitness returned a non-finite proxy ({proxy}); check the baseline checkpoint")
        macs, params = self.cost.cost(plan)
        macs_reduction = 1.0 - macs / self.cost.base_macs
        result = dict(result)
        compute_macs = (int(result.pop("plan_passes", 0)) * macs
                        + int(result.pop("baseline_passes", 0)) * self.cost.base_macs)
        params_reduction = 1.0 - params / self.cost.base_params
        timing = {}
        if self.latency is not None:
            latency_us = self.latency.cost(plan)
            timing = {"latency_us": latency_us, "latency_reduction": 1.0 - latency_us / self.latency.base_us}
        record = {
            "id": len(self.records),
            "generation": generation,
            "proxy": proxy,
            "score": self.score.of(proxy, macs_reduction, params_reduction, timing.get("latency_reduction", 0.0)),
            "macs": macs,
            "params": params,
            "macs_reduction": macs_reduction,
            "params_reduction": params_reduction,
            "compute_macs": int(compute_macs),
            **timing,
            **{k: float(v) for k, v in result.items() if k != "proxy"},
            **plan.record_fields(),
            "genome": [float(g) for g in genome],
        }
        self.records.append(record)
        return record

    @property
    def compute_macs(self) -> int:
        """MACs spent scoring every recorded plan (once each: cache hits are free), plus what
        building the fitness cost (`gaprune.engine.compute`)."""
        setup = int(getattr(self.fitness, "setup_baseline_passes", 0)) * self.cost.base_macs
        return int(setup + sum(int(r.get("compute_macs", 0)) for r in self.records))

    def values(self, record: dict[str, Any]) -> tuple[float, ...]:
        """Objective tuple for multi-objective selection (MACs/params as ratios of baseline)."""
        table = {"proxy": record["proxy"], "macs": 1.0 - record["macs_reduction"], "params": 1.0 - record["params_reduction"],
                 "latency": 1.0 - record.get("latency_reduction", 0.0)}
        return tuple(table[name] for name in self.objectives)
