"""DEAP optimizers over an encoding: elitist GA, NSGA-II, and random search at equal budget.

Invariants:
- All three share one loop shape (`Optimizer.run`) so each generation can be checkpointed and
  resumed exactly: the state after generation g holds the population and the `random` module's
  state. Every random draw (selection, variation, random genomes) comes from `random`, so seeding
  it fixes the run and `to_state` / `from_state` repeat it.
- A genome is `n_real` real genes in [low, high] followed by `n_discrete` genes in
  {0, ..., choices - 1}. Real genes: SBX crossover + bounded polynomial mutation; discrete genes:
  uniform crossover (0.5 per gene) + mutation to a different value with probability `indpb` per gene.
- Encodings with `bit_genome = True` (n_real == 0, choices == 2, e.g. one bit per weight of a layer,
  `gaprune.search.layerwise`) hold genomes as numpy bool arrays (`BitIndividual`): the same
  operators, vectorised (their numpy generators are seeded from `random`), so 10^4..10^6 genes stay fast.
- `seeds` are the first members of generation 0; the rest is random.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from deap import base, tools

from gaprune.search.problem import Problem
from gaprune.utils.checks import check_int
from gaprune.utils.errors import GapruneError
from gaprune.utils.registry import Registry


class Individual(list):
    """A genome with a DEAP fitness attached."""

    fitness: base.Fitness


class BitIndividual:
    """A 0/1 genome held as a flat numpy bool array, with a DEAP fitness (`bit_genome` encodings)."""

    __slots__ = ("bits", "fitness")

    def __init__(self, bits: Any) -> None:
        self.bits = np.array(bits, dtype=bool).ravel()  # always a copy

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.bits if dtype is None else self.bits.astype(dtype, copy=False)
        return out.copy() if copy else out

    def __len__(self) -> int:
        return len(self.bits)

    def __iter__(self):
        return iter(self.bits.astype(float).tolist())


def _numpy_rng() -> np.random.Generator:
    """A numpy generator seeded from `random` (which alone carries the optimizer's random state)."""
    return np.random.default_rng(random.getrandbits(64))


def _flip_positions(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Indices to flip with per-gene probability p: Binomial count, then positions (O(flips))."""
    k = int(rng.binomial(n, p)) if p > 0 else 0
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k > n // 8:
        return np.flatnonzero(rng.random(n) < p)
    return np.unique(rng.integers(0, n, k))


def fitness_class(weights: tuple[float, ...]) -> type[base.Fitness]:
    """A DEAP fitness type with these objective weights."""
    return type("Fitness", (base.Fitness,), {"weights": weights})


MAX_POPULATION = 100_000  # plans per generation; a larger one is a typo, not a search


@dataclass
class OptimizerConfig:
    population: int = 24
    generations: int = 15
    offspring: int | None = None  # lambda for the GA; defaults to population
    cxpb: float = 0.9
    mutpb: float = 0.3
    tournament: int = 3
    elite: int = 2
    eta_cx: float = 15.0
    eta_mut: float = 20.0
    indpb: float | None = None  # per-gene mutation probability of a mutated genome; defaults to 1 / genome size

    def validate(self, name: str) -> None:
        for key in ("population", "generations", "tournament", "elite"):  # a word where a number belongs: one line
            check_int(f"optimizer.params.{key}", getattr(self, key), 0)
        if self.offspring is not None:
            check_int("optimizer.params.offspring", self.offspring, 1)
        for key in ("cxpb", "mutpb", "indpb", "eta_cx", "eta_mut"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise GapruneError(f"optimizer.params.{key}={value!r} must be a number")
        if self.population < 2:
            raise GapruneError(f"optimizer.params.population={self.population} is too small; use at least 4")
        for key in ("population", "offspring"):
            if (getattr(self, key) or 0) > MAX_POPULATION:  # every plan and its record are held in memory
                raise GapruneError(f"optimizer.params.{key}={getattr(self, key)} is too large; use at most {MAX_POPULATION}")
        if self.generations < 0:
            raise GapruneError(f"optimizer.params.generations={self.generations} must be >= 0")
        if name == "nsga2" and (self.population < 4 or self.population % 4):
            raise GapruneError(
                f"optimizer.params.population={self.population} does not work for NSGA-II: it needs a multiple of 4 "
                "(DCD tournament), e.g. 24"
            )
        if name == "ga" and not 0 <= self.elite < self.population:
            raise GapruneError(f"optimizer.params.elite={self.elite} must be in [0, population)")
        for key in ("cxpb", "mutpb", "indpb"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise GapruneError(f"optimizer.params.{key}={value} must be a probability in [0, 1]")


GenerationCallback = Callable[[int, list[Individual], list[Individual]], None]


class Optimizer:
    """Shared plumbing: variation operators, evaluation, checkpointable state.

    `problem`: a `gaprune.search.problem.Problem` or anything shaped like it: `encoding` (the genome
    layout) and `evaluate(genomes, generation)` -> one record per genome with a "score" (NSGA-II also
    uses `weights` and `values(record)`), e.g. `gaprune.search.layerwise.problem.LayerProblem`."""

    name = "base"

    def __init__(self, problem: Problem, config: OptimizerConfig, seeds: Sequence[Sequence[float]] = ()) -> None:
        config.validate(self.name)
        self.problem = problem
        self.config = config
        self.encoding = problem.encoding
        self.bits = bool(getattr(self.encoding, "bit_genome", False))
        if self.bits and (self.encoding.n_real or self.encoding.choices != 2):
            raise GapruneError(f"{type(self.encoding).__name__}: bit genomes need n_real == 0 and choices == 2")
        copy = (lambda genome: np.array(genome, dtype=bool)) if self.bits else list
        self.seeds = [copy(genome) for genome in seeds][: config.population]  # first members of generation 0
        self.fitness_cls = fitness_class(self.fitness_weights())
        size = self.encoding.size
        self.indpb = config.indpb if config.indpb is not None else 1.0 / max(1, size)

    def fitness_weights(self) -> tuple[float, ...]:
        return (1.0,)

    def fitness_values(self, record: dict[str, Any]) -> tuple[float, ...]:
        return (record["score"],)

    # --- individuals -------------------------------------------------------------------------
    def make(self, genes: Sequence[float]) -> Individual:
        ind = BitIndividual(genes) if self.bits else Individual(genes)
        ind.fitness = self.fitness_cls()
        return ind

    def clone(self, ind: Individual) -> Individual:
        twin = self.make(ind)
        if ind.fitness.valid:
            twin.fitness.values = ind.fitness.values
        return twin

    def evaluate(self, individuals: Sequence[Individual], generation: int) -> None:
        invalid = [ind for ind in individuals if not ind.fitness.valid]
        for ind, record in zip(invalid, self.problem.evaluate(invalid, generation)):
            ind.fitness.values = self.fitness_values(record)

    def random_population(self, n: int) -> list[Individual]:
        return [self.make(self.encoding.random_genome(random)) for _ in range(n)]

    # --- variation ---------------------------------------------------------------------------
    def mate(self, a: Individual, b: Individual) -> None:
        if self.bits:  # uniform crossover, 0.5 per bit
            swap = np.unpackbits(_numpy_rng().integers(0, 256, (len(a) + 7) // 8, dtype=np.uint8))[:len(a)].view(bool)
            a.bits, b.bits = np.where(swap, b.bits, a.bits), np.where(swap, a.bits, b.bits)
            del a.fitness.values, b.fitness.values
            return
        n = self.encoding.n_real
        ra, rb = list(a[:n]), list(b[:n])
        if ra:
            tools.cxSimulatedBinaryBounded(ra, rb, eta=self.config.eta_cx, low=self.encoding.low, up=self.encoding.high)
        da, db = list(a[n:]), list(b[n:])
        if da:
            tools.cxUniform(da, db, indpb=0.5)
        a[:], b[:] = ra + da, rb + db
        del a.fitness.values, b.fitness.values

    def mutate(self, ind: Individual) -> None:
        if self.bits:  # bit flips with probability indpb each
            ind.bits[_flip_positions(_numpy_rng(), len(ind), self.indpb)] ^= True
            del ind.fitness.values
            return
        n = self.encoding.n_real
        reals = list(ind[:n])
        if reals:
            tools.mutPolynomialBounded(reals, eta=self.config.eta_mut, low=self.encoding.low, up=self.encoding.high,
                                       indpb=self.indpb)
        choices = self.encoding.choices
        discrete = [float((int(g) + random.randrange(1, choices)) % choices)  # a different value (bit flip)
                    if choices > 1 and random.random() < self.indpb else g for g in ind[n:]]
        ind[:] = reals + discrete
        del ind.fitness.values

    # --- loop --------------------------------------------------------------------------------
    def initial(self) -> list[Individual]:
        seeded = [self.make(genome) for genome in self.seeds]
        population = seeded + self.random_population(self.config.population - len(seeded))
        self.evaluate(population, 0)
        return population

    def step(self, population: list[Individual], generation: int) -> tuple[list[Individual], list[Individual]]:
        """One generation: returns (next population, offspring evaluated this generation)."""
        raise NotImplementedError

    def run(self, on_generation: GenerationCallback, state: dict[str, Any] | None = None) -> list[Individual]:
        if state is None:
            population = self.initial()
            start = 1
            on_generation(0, population, [])
        else:
            population = [self.from_state(item) for item in state["population"]]
            random.setstate(_random_state_from_json(state["random_state"]))
            start = int(state["generation"]) + 1
        for generation in range(start, self.config.generations + 1):
            population, offspring = self.step(population, generation)
            on_generation(generation, population, offspring)
        return population

    # --- state -------------------------------------------------------------------------------
    def to_state(self, generation: int, population: Sequence[Individual]) -> dict[str, Any]:
        return {
            "optimizer": self.name,
            "generation": generation,
            "population": [{"genome": self._genome_json(ind), "fitness": list(ind.fitness.values),
                            "crowding_dist": getattr(ind.fitness, "crowding_dist", None)} for ind in population],
            "random_state": _random_state_to_json(random.getstate()),
        }

    def _genome_json(self, ind: Individual) -> Any:
        if self.bits:  # packed: a 10^5-bit genome stays a short string
            return {"size": len(ind), "packed": np.packbits(ind.bits).tobytes().hex()}
        return list(ind)

    def from_state(self, item: dict[str, Any]) -> Individual:
        genome = item["genome"]
        if isinstance(genome, dict):
            genome = np.unpackbits(np.frombuffer(bytes.fromhex(genome["packed"]), np.uint8))[:genome["size"]]
        ind = self.make(genome)
        ind.fitness.values = tuple(item["fitness"])
        if item.get("crowding_dist") is not None:
            ind.fitness.crowding_dist = item["crowding_dist"]  # NSGA-II's DCD tournament reads it
        return ind


OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("ga")
class GeneticAlgorithm(Optimizer):
    """(mu + lambda) GA: tournament selection, SBX + uniform crossover, bounded polynomial
    mutation, hall-of-fame elites always survive."""

    name = "ga"

    def step(self, population, generation):
        cfg = self.config
        offspring: list[Individual] = []
        target = cfg.offspring or cfg.population
        while len(offspring) < target:
            a, b = (self.clone(p) for p in tools.selTournament(population, 2, tournsize=cfg.tournament))
            if random.random() < cfg.cxpb:
                self.mate(a, b)
            for child in (a, b):
                if random.random() < cfg.mutpb:
                    self.mutate(child)
            offspring.extend([a, b])
        offspring = offspring[:target]
        self.evaluate(offspring, generation)
        pool = population + offspring
        elites = tools.selBest(pool, cfg.elite)
        rest = tools.selTournament(pool, cfg.population - cfg.elite, tournsize=cfg.tournament)
        return [self.clone(ind) for ind in elites + rest], offspring


@OPTIMIZERS.register("nsga2")
class NSGA2(Optimizer):
    """Elitist NSGA-II: selNSGA2 on parents + offspring, DCD tournament, SBX + polynomial mutation.
    Maximises the proxy and minimises MACs (and params) as fractions of the baseline."""

    name = "nsga2"

    def fitness_weights(self):
        return self.problem.weights

    def fitness_values(self, record):
        return self.problem.values(record)

    def initial(self):
        return tools.selNSGA2(super().initial(), self.config.population)

    def step(self, population, generation):
        cfg = self.config
        if not all(hasattr(ind.fitness, "crowding_dist") for ind in population):
            population = tools.selNSGA2(population, cfg.population)  # restores crowding after resume
        offspring = [self.clone(ind) for ind in tools.selTournamentDCD(population, len(population))]
        for a, b in zip(offspring[::2], offspring[1::2]):
            if random.random() < cfg.cxpb:
                self.mate(a, b)
            self.mutate(a)
            self.mutate(b)
        self.evaluate(offspring, generation)
        return tools.selNSGA2(population + offspring, cfg.population), offspring


@OPTIMIZERS.register("random")
class RandomSearch(Optimizer):
    """The honest control: the same number of evaluations, plans drawn uniformly at random."""

    name = "random"

    def step(self, population, generation):
        offspring = self.random_population(self.config.offspring or self.config.population)
        self.evaluate(offspring, generation)
        return tools.selBest(population + offspring, self.config.population), offspring


def optimizer_config(name: str, **params) -> OptimizerConfig:
    """Validated optimizer options (checked before any work is done)."""
    OPTIMIZERS.get(name)
    try:
        config = OptimizerConfig(**params)
    except TypeError as err:
        raise GapruneError(f"bad option for optimizer={name}: {err}")
    config.validate(name)
    return config


def build_optimizer(name: str, problem: Problem, seeds: Sequence[Sequence[float]] = (), **params) -> Optimizer:
    """`seeds`: genomes placed first in the initial population (the rest is random)."""
    return OPTIMIZERS.get(name)(problem, optimizer_config(name, **params), seeds)


def _random_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _random_state_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)
