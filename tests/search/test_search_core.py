"""Search core: the problem (records, cache, objectives), the optimizers (GA, NSGA-II,
random: improvement, determinism, exact resume) and the picks (Pareto front, knee, target).

Real-model tests use LeNet-5 trained for a few epochs on the bundled digits (~2 s).
"""
from __future__ import annotations

import json
import random

import pytest

from gaprune.pruning.cost import CostModel
from gaprune.search.encodings import build_encoding
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.search.optimizers import build_optimizer
from gaprune.search.picks import knee, pareto_front, pick_plans
from gaprune.search.problem import Problem, Score
from gaprune.utils.errors import GapruneError

from helpers import X0, trained_on_digits


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet(digits):
    """(trained LeNet-5, its 4 units incl. hidden linears, taylor importance, val batches)."""
    return trained_on_digits(digits, "lenet5", 5, include_linear=True)


@pytest.fixture(scope="module")
def cost(lenet):
    model, units, _, _ = lenet
    return CostModel(model, units, X0)


# --- problem --------------------------------------------------------------------------------------


def _problem(lenet, cost, fitness: str = "taylor_proxy", objectives=("proxy", "macs", "params"), **score) -> Problem:
    model, units, importance, calib = lenet
    enc = build_encoding("ratio_strategy", units, importance, r_min=0.1)
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    return Problem(enc, build_fitness(fitness, context), cost, Score(**score), objectives=objectives)


def test_problem_records_and_cache(lenet, cost) -> None:
    problem = _problem(lenet, cost)
    calls = []
    original = problem.fitness.evaluate
    problem.fitness.evaluate = lambda plans: calls.append(len(plans)) or original(plans)
    rng = random.Random(0)
    genome = problem.encoding.random_genome(rng)
    twin = list(genome)
    twin[0] += 1e-6  # decodes to the same plan
    records = problem.evaluate([genome, twin, problem.encoding.full_genome()], generation=0)
    assert calls == [2] and problem.cache_hits == 1 and len(problem.records) == 2
    assert records[0] is records[1]
    full = records[2]
    assert full["macs_reduction"] == 0.0 and full["params_reduction"] == 0.0 and full["proxy"] == pytest.approx(1.0)
    rec = records[0]
    macs, params = cost.cost(problem.encoding.decode(genome))
    assert (rec["macs"], rec["params"]) == (macs, params)
    assert rec["macs_reduction"] == pytest.approx(1 - macs / cost.base_macs)
    assert rec["score"] == pytest.approx(rec["proxy"] + 0.5 * rec["macs_reduction"])
    assert problem.values(rec) == pytest.approx((rec["proxy"], macs / cost.base_macs, params / cost.base_params))
    assert problem.record_of(genome) is rec
    problem.evaluate([genome], generation=1)
    assert calls == [2] and problem.cache_hits == 2


def test_objective_and_problem_errors(lenet, cost) -> None:
    assert Score(target_macs_reduction=0.5).of(0.9, 0.3, 0.0) == pytest.approx(0.9 - 2.0 * 0.2)
    assert Score(target_macs_reduction=0.5).of(0.9, 0.6, 0.0) == pytest.approx(0.9)
    assert Score(w_acc=1, w_macs=0.5, w_params=0.25).of(0.8, 0.4, 0.2) == pytest.approx(1.05)
    with pytest.raises(GapruneError, match="target_macs_reduction"):
        Score(target_macs_reduction=1.5)
    with pytest.raises(GapruneError, match="objectives"):
        _problem(lenet, cost, objectives=("macs", "params"))
    problem = _problem(lenet, cost)
    problem.fitness.evaluate = lambda plans: [{"proxy": float("nan")} for _ in plans]
    with pytest.raises(GapruneError, match="non-finite"):
        problem.evaluate([problem.encoding.full_genome()], 0)


# --- optimizers -----------------------------------------------------------------------------------


def _strip(records):
    """Records without wall-clock fields (the only thing allowed to differ between runs)."""
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


def _run(lenet, cost, name: str, seed: int, fitness: str = "taylor_proxy", **params):
    problem = _problem(lenet, cost, fitness)
    optimizer = build_optimizer(name, problem, **params)
    random.seed(seed)
    populations = []
    final = optimizer.run(lambda g, pop, off: populations.append([problem.record_of(ind) for ind in pop]))
    return problem, populations, final


def test_ga_improves_on_calib_fitness(lenet, cost) -> None:
    problem, populations, final = _run(lenet, cost, "ga", seed=1, fitness="calib", population=8, generations=5)
    best = [max(r["score"] for r in pop) for pop in populations]
    assert len(populations) == 6
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:])), "elitism: the best never gets worse"
    assert best[-1] > best[0]
    assert max(r["score"] for r in problem.records) == best[-1]
    assert len(final) == 8


@pytest.mark.parametrize("name", ["nsga2", "random"])
def test_best_never_gets_worse(lenet, cost, name: str) -> None:
    key = "proxy" if name == "nsga2" else "score"
    problem, populations, _ = _run(lenet, cost, name, seed=2, population=8, generations=4)
    best = [max(r[key] for r in pop) for pop in populations]
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:]))
    assert len(problem.records) > 8  # later generations evaluated new plans


@pytest.mark.parametrize("name", ["ga", "nsga2", "random"])
def test_same_seed_same_run_other_seed_other_run(lenet, cost, name: str) -> None:
    p1, _, f1 = _run(lenet, cost, name, seed=5, population=8, generations=3)
    p2, _, f2 = _run(lenet, cost, name, seed=5, population=8, generations=3)
    p3, _, _ = _run(lenet, cost, name, seed=6, population=8, generations=3)
    assert _strip(p1.records) == _strip(p2.records)
    assert [list(i) for i in f1] == [list(i) for i in f2]
    assert _strip(p1.records) != _strip(p3.records)


@pytest.mark.parametrize("population", [6, 10, 3])
def test_nsga2_population_must_be_a_multiple_of_four(lenet, cost, population: int) -> None:
    with pytest.raises(GapruneError, match=f"population={population}"):
        build_optimizer("nsga2", _problem(lenet, cost), population=population, generations=1)


def test_optimizer_option_errors(lenet, cost) -> None:
    with pytest.raises(GapruneError, match="elite"):
        build_optimizer("ga", _problem(lenet, cost), population=4, elite=4)
    with pytest.raises(GapruneError, match="cxpb"):
        build_optimizer("ga", _problem(lenet, cost), cxpb=1.5)
    with pytest.raises(GapruneError, match="popsize"):
        build_optimizer("ga", _problem(lenet, cost), popsize=8)
    with pytest.raises(GapruneError, match="annealing"):
        build_optimizer("annealing", _problem(lenet, cost))


@pytest.mark.parametrize("name", ["ga", "nsga2", "random"])
def test_resume_from_state_equals_uninterrupted_run(lenet, cost, name: str) -> None:
    params = dict(population=8, generations=5)
    problem = _problem(lenet, cost, objectives=("proxy", "macs"))
    optimizer = build_optimizer(name, problem, **params)
    random.seed(11)
    states = {}

    def checkpoint(generation, population, _offspring):
        # what search.py writes each generation, through JSON as on disk
        state = json.loads(json.dumps(optimizer.to_state(generation, population)))
        states[generation] = (state, len(problem.records))

    final = optimizer.run(checkpoint)
    for generation in (0, 2, 4):
        state, n_records = states[generation]
        resumed_problem = _problem(lenet, cost, objectives=("proxy", "macs"))
        resumed_problem.restore(json.loads(json.dumps(problem.records[:n_records])))
        resumed = build_optimizer(name, resumed_problem, **params)
        random.seed(12345)  # the state, not the global seed, must drive the rest of the run
        resumed_final = resumed.run(lambda *_: None, state=state)
        assert _strip(resumed_problem.records) == _strip(problem.records), f"resumed after generation {generation}"
        assert [list(i) for i in resumed_final] == [list(i) for i in final]
        assert [i.fitness.values for i in resumed_final] == [i.fitness.values for i in final]


# --- picks ----------------------------------------------------------------------------------------


def _records(n: int, seed: int, decimals: int | None = None) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        proxy, reduction = rng.random(), rng.random()
        if decimals is not None:
            proxy, reduction = round(proxy, decimals), round(reduction, decimals)
        out.append({"id": i, "proxy": proxy, "macs_reduction": reduction, "score": proxy + 0.5 * reduction})
    return out


def _dominated(r, records) -> bool:
    return any(s["proxy"] >= r["proxy"] and s["macs_reduction"] >= r["macs_reduction"]
               and (s["proxy"] > r["proxy"] or s["macs_reduction"] > r["macs_reduction"]) for s in records)


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, None), (2, 1), (3, 1)])
def test_pareto_front_is_the_non_dominated_set(seed: int, decimals) -> None:
    records = _records(60, seed, decimals)
    front = pareto_front(records)
    assert front and all(not _dominated(r, records) for r in front)
    points = {(r["proxy"], r["macs_reduction"]) for r in front}
    assert len(points) == len(front)  # duplicates appear once
    expected = {(r["proxy"], r["macs_reduction"]) for r in records if not _dominated(r, records)}
    assert points == expected
    reductions = [r["macs_reduction"] for r in front]
    assert reductions == sorted(reductions, reverse=True) or reductions == sorted(reductions)


def test_knee_is_on_the_front_and_at_the_corner() -> None:
    records = _records(80, 7)
    front = pareto_front(records)
    assert knee(front) in front
    corner = [{"id": 0, "proxy": 1.0, "macs_reduction": 0.0, "score": 0},
              {"id": 1, "proxy": 0.95, "macs_reduction": 0.5, "score": 0},
              {"id": 2, "proxy": 0.2, "macs_reduction": 0.6, "score": 0}]
    assert knee(pareto_front(corner))["id"] == 1
    assert pick_plans(corner, "knee") == [corner[1]]


def test_pick_target_best_and_all() -> None:
    records = _records(50, 9)
    target = 0.6
    (picked,) = pick_plans(records, "target_macs", target)
    eligible = [r for r in records if r["macs_reduction"] >= target]
    assert picked["macs_reduction"] >= target
    assert picked["proxy"] == max(r["proxy"] for r in eligible)
    assert pick_plans(records, "best") == [max(records, key=lambda r: r["score"])]
    assert pick_plans(records, "all") == pareto_front(records)
    with pytest.raises(GapruneError, match="target_macs_reduction=0.99"):
        pick_plans([r for r in records if r["macs_reduction"] < 0.9], "target_macs", 0.99)
    with pytest.raises(GapruneError, match="target_macs_reduction"):
        pick_plans(records, "target_macs")
    with pytest.raises(GapruneError, match="elbow"):
        pick_plans(records, "elbow")
    with pytest.raises(GapruneError, match="no evaluated plans"):
        pick_plans([], "knee")
