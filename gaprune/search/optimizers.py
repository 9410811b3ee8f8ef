"""DEAP optimizers over an encoding: elitist GA, NSGA-II, and random search at equal budget.

All three share one loop shape so each generation can be checkpointed and resumed exactly:
the state after generation g holds the population, the archive and the `random` module's state.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from deap import base, tools

from gaprune.search.problem import Problem
from gaprune.utils.errors import GapruneError
from gaprune.utils.registry import Registry


class Individual(list):
    """A genome with a DEAP fitness attached."""

    fitness: base.Fitness


def fitness_class(weights: tuple[float, ...]) -> type[base.Fitness]:
    """A DEAP fitness type with these objective weights (shared with the layer-wise GA)."""
    return type("Fitness", (base.Fitness,), {"weights": weights})


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
    indpb: float | None = None  # per-gene mutation probability; defaults to 1 / genome size

    def validate(self, name: str) -> None:
        if self.population < 2:
            raise GapruneError(f"optimizer.params.population={self.population} is too small; use at least 4")
        if self.generations < 0:
            raise GapruneError(f"optimizer.params.generations={self.generations} must be >= 0")
        if name == "nsga2" and (self.population < 4 or self.population % 4):
            raise GapruneError(
                f"optimizer.params.population={self.population} does not work for NSGA-II: it needs a multiple of 4 "
                "(DCD tournament), e.g. 24"
            )
        if name == "ga" and not 0 <= self.elite < self.population:
            raise GapruneError(f"optimizer.params.elite={self.elite} must be in [0, population)")
        for key in ("cxpb", "mutpb"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise GapruneError(f"optimizer.params.{key}={getattr(self, key)} must be a probability in [0, 1]")


GenerationCallback = Callable[[int, list[Individual], list[Individual]], None]


class Optimizer:
    """Shared plumbing: variation operators, evaluation, checkpointable state."""

    name = "base"

    def __init__(self, problem: Problem, config: OptimizerConfig, seeds: Sequence[Sequence[float]] = ()) -> None:
        config.validate(self.name)
        self.seeds = [list(genome) for genome in seeds][: config.population]  # first members of generation 0
        self.problem = problem
        self.config = config
        self.encoding = problem.encoding
        self.fitness_cls = fitness_class(self.fitness_weights())
        size = self.encoding.size
        self.indpb = config.indpb if config.indpb is not None else 1.0 / max(1, size)

    def fitness_weights(self) -> tuple[float, ...]:
        return (1.0,)

    def fitness_values(self, record: dict[str, Any]) -> tuple[float, ...]:
        return (record["score"],)

    # --- individuals -------------------------------------------------------------------------
    def make(self, genes: Sequence[float]) -> Individual:
        ind = Individual(genes)
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
            "population": [{"genome": list(ind), "fitness": list(ind.fitness.values),
                            "crowding_dist": getattr(ind.fitness, "crowding_dist", None)} for ind in population],
            "random_state": _random_state_to_json(random.getstate()),
        }

    def from_state(self, item: dict[str, Any]) -> Individual:
        ind = self.make(item["genome"])
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
