"""Search core: strategies, encodings, importance, fitness, problem, optimizers and picks.

Real-model tests use LeNet-5 trained for a few epochs on the bundled digits (~2 s).
"""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from gaprune.data.datasets import load_dataset
from gaprune.engine.training import evaluate
from gaprune.models import build_model
from gaprune.pruning.cost import CostModel
from gaprune.pruning.importance import IMPORTANCES, compute_importance
from gaprune.pruning.physical import prune_model
from gaprune.pruning.plan import Plan
from gaprune.pruning.strategies import STRATEGIES
from gaprune.pruning.units import PrunableUnit, discover_units
from gaprune.search.encodings import build_encoding
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.search.optimizers import build_optimizer
from gaprune.search.picks import knee, pareto_front, pick_plans
from gaprune.search.problem import Objective, Problem
from gaprune.utils.errors import GapruneError

from helpers import X0, trained_on_digits


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def lenet(digits):
    """(trained LeNet-5, its 4 units incl. hidden linears, taylor importance, val batches)."""
    return trained_on_digits(digits, "lenet5", 5, include_linear=True)


@pytest.fixture(scope="module")
def cost(lenet):
    model, units, _, _ = lenet
    return CostModel(model, units, X0)


def _units(*channels: int) -> list[PrunableUnit]:
    return [PrunableUnit(f"u{i}", c, [f"u{i}"]) for i, c in enumerate(channels)]


def _distinct_importance(units, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u.name: rng.permutation(u.channels).astype(float) + rng.random(u.channels) * 0.1 for u in units}


# --- strategies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 7, 16, 33])
def test_min_keeps_exactly_the_top_k(channels: int) -> None:
    rng = np.random.default_rng(channels)
    importance = rng.random(channels)
    for keep in range(1, channels + 1):
        chosen = STRATEGIES.get("min")(importance, keep)
        assert list(chosen) == sorted(set(chosen.tolist())) and len(chosen) == keep
        top = set(np.argsort(importance)[::-1][:keep].tolist())
        assert set(chosen.tolist()) == top
        if keep < channels:  # everything kept is at least as important as everything removed
            removed = np.setdiff1d(np.arange(channels), chosen)
            assert importance[chosen].min() > importance[removed].max()


@pytest.mark.parametrize("channels", [1, 2, 5, 8, 16, 33])
def test_median_removes_a_contiguous_rank_window_around_the_median(channels: int) -> None:
    rng = np.random.default_rng(100 + channels)
    importance = rng.random(channels)
    ranks = np.empty(channels, dtype=int)
    ranks[np.argsort(importance)] = np.arange(channels)  # rank 0 = least important
    for keep in range(1, channels + 1):
        chosen = STRATEGIES.get("median")(importance, keep)
        assert len(chosen) == keep and list(chosen) == sorted(set(chosen.tolist()))
        assert chosen.min() >= 0 and chosen.max() < channels
        removed = np.setdiff1d(np.arange(channels), chosen)
        if removed.size == 0:
            continue
        window = np.sort(ranks[removed])
        assert np.all(np.diff(window) == 1), "removed ranks must be contiguous"
        centre = (window[0] + window[-1]) / 2
        assert abs(centre - (channels - 1) / 2) <= 0.5, "window must be centred on the median rank"
        if keep >= 2:  # both tails survive
            assert np.argmax(importance) in chosen and np.argmin(importance) in chosen


def test_strategies_edge_cases() -> None:
    importance = np.array([0.3, 0.1, 0.9, 0.5, 0.2])
    for name in ("min", "median"):
        assert STRATEGIES.get(name)(importance, 5).tolist() == [0, 1, 2, 3, 4]
        one = STRATEGIES.get(name)(importance, 1)
        assert one.shape == (1,) and 0 <= one[0] < 5
    assert STRATEGIES.get("min")(importance, 1).tolist() == [2]
    assert STRATEGIES.get("min")(importance, 2).tolist() == [2, 3]
    # median keep 2 of 5: lowest (1) and highest (2) survive, ranks 1..3 removed
    assert STRATEGIES.get("median")(importance, 2).tolist() == [1, 2]
    with pytest.raises(GapruneError, match="max"):
        STRATEGIES.get("max")


# --- encodings ------------------------------------------------------------------------------------


def _expected_count(ratio: float, channels: int, r_min: float) -> int:
    low = max(1, math.ceil(round(r_min * channels, 9)))
    return min(max(math.floor(ratio * channels + 0.5), low), channels)


def test_keep_count_formula() -> None:
    rng = random.Random(0)
    for r_min in (0.05, 0.1, 0.3, 0.5):
        units = _units(6, 10, 16, 64, 120)
        enc = build_encoding("ratio", units, _distinct_importance(units), r_min=r_min)
        for _ in range(300):
            channels = rng.choice([6, 10, 16, 64, 120])
            ratio = rng.uniform(0.0, 1.0)
            if abs(ratio * channels % 1 - 0.5) < 1e-6:
                continue  # exact .5 ties: rounding mode is not specified
            assert enc.keep_count(ratio, channels) == _expected_count(ratio, channels, r_min)
    enc = build_encoding("ratio", _units(10), {"u0": np.ones(10)}, r_min=0.3)
    assert enc.keep_count(0.0, 10) == 3  # ceil(0.3 * 10) is 3 even though 0.3 * 10 == 3.0000000000000004
    assert enc.keep_count(1.0, 10) == 10
    enc = build_encoding("ratio", _units(64), {"u0": np.ones(64)}, r_min=0.1)
    assert enc.keep_count(0.3, 64) == 19
    assert enc.keep_count(0.05, 64) == 7  # clamped up to ceil(0.1 * 64)
    assert enc.keep_count(0.01, 6) == 1  # never zero channels


def test_keep_count_round_to() -> None:
    units = _units(64)
    enc = build_encoding("ratio", units, _distinct_importance(units), r_min=0.1, round_to=8)
    for ratio in np.linspace(0.1, 1.0, 37):
        count = enc.keep_count(float(ratio), 64)
        assert count % 8 == 0 and 8 <= count <= 64
        assert abs(count - ratio * 64) <= 4.5 + 1e-9
    assert enc.keep_count(0.3, 64) == 16  # 19.2 -> 19 -> nearest multiple of 8
    assert enc.keep_count(1.0, 64) == 64
    assert enc.keep_count(0.5, 6) == 3  # narrower than round_to: plain rounding


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_full_genome_decodes_to_the_unpruned_plan(round_to: int) -> None:
    """full_genome() is 'the unpruned plan' for every round_to, also for widths that are not
    multiples of round_to (LeNet-5's fc2 has 84, conv1 6)."""
    units = _units(6, 16, 20, 84, 120)
    for name in ("ratio", "ratio_strategy"):
        enc = build_encoding(name, units, _distinct_importance(units), r_min=0.1, round_to=round_to)
        plan = enc.decode(enc.full_genome())
        assert plan.keep_counts() == [u.channels for u in units], f"{name} round_to={round_to}"


def test_ratio_strategy_decodes_strategy_genes() -> None:
    units = _units(10, 12, 16, 9)
    importance = _distinct_importance(units, seed=1)
    enc = build_encoding("ratio_strategy", units, importance, r_min=0.1)
    assert (enc.n_real, enc.n_discrete, enc.size, enc.choices) == (4, 4, 8, 2)
    genome = [0.5, 0.3, 0.75, 0.6] + [0.0, 1.0, 0.4, 0.6]
    plan = enc.decode(genome)
    assert list(plan.strategies.values()) == ["min", "median", "min", "median"]
    for unit, ratio, strategy in zip(units, genome[:4], plan.strategies.values()):
        count = _expected_count(ratio, unit.channels, 0.1)
        expected = STRATEGIES.get(strategy)(importance[unit.name], count)
        assert plan.keep[unit.name] == tuple(expected.tolist())
        assert plan.channels[unit.name] == unit.channels
    # out-of-range strategy genes clamp to the first / last strategy
    assert list(enc.decode([1.0] * 4 + [-3.0, 7.0, 0.49, 0.51]).strategies.values()) == ["min", "median", "min", "median"]


def test_ratio_encoding_uses_the_fixed_strategy() -> None:
    units = _units(10, 12)
    importance = _distinct_importance(units, seed=2)
    enc = build_encoding("ratio", units, importance, r_min=0.2, strategy="median")
    assert (enc.n_discrete, enc.size) == (0, 2)
    plan = enc.decode([0.5, 0.5])
    assert set(plan.strategies.values()) == {"median"}
    assert plan.keep["u0"] == tuple(STRATEGIES.get("median")(importance["u0"], 5).tolist())


def test_random_genomes_are_within_bounds_and_decode_to_valid_plans() -> None:
    units = _units(6, 16, 120)
    enc = build_encoding("ratio_strategy", units, _distinct_importance(units), r_min=0.25)
    rng = random.Random(0)
    for _ in range(50):
        genome = enc.random_genome(rng)
        assert len(genome) == enc.size
        assert all(0.25 <= g <= 1.0 for g in genome[:3]) and all(g in (0.0, 1.0) for g in genome[3:])
        plan = enc.decode(genome)
        plan.validate()
        assert all(len(plan.keep[u.name]) >= math.ceil(0.25 * u.channels) for u in units)


@pytest.mark.parametrize("r_min", [0, 0.0, -0.1, 1.5, 2])
def test_r_min_out_of_range_raises_naming_the_value(r_min) -> None:
    units = _units(8)
    with pytest.raises(GapruneError) as err:
        build_encoding("ratio_strategy", units, {"u0": np.ones(8)}, r_min=r_min)
    assert "r_min" in str(err.value) and str(r_min) in str(err.value)


def test_encoding_option_errors() -> None:
    units = _units(8)
    with pytest.raises(GapruneError, match="round_to"):
        build_encoding("ratio", units, {"u0": np.ones(8)}, round_to=0)
    with pytest.raises(GapruneError, match="bogus"):
        build_encoding("ratio", units, {"u0": np.ones(8)}, strategy="bogus")
    with pytest.raises(GapruneError, match="colour"):
        build_encoding("ratio", units, {"u0": np.ones(8)}, colour="red")
    with pytest.raises(GapruneError, match="nope"):
        build_encoding("nope", units, {"u0": np.ones(8)})


# --- importance -----------------------------------------------------------------------------------


def test_taylor_importance_is_normalised_per_unit(lenet) -> None:
    _, units, importance, _ = lenet
    assert set(importance) == {u.name for u in units}
    for unit in units:
        score = importance[unit.name]
        assert score.shape == (unit.channels,)
        assert np.all(score >= 0)
        assert score.sum() == pytest.approx(1.0, abs=1e-9)
        assert score.max() > score.min()  # informative, not the uniform fallback


def test_taylor_needs_batches(lenet) -> None:
    model, units, _, _ = lenet
    with pytest.raises(GapruneError, match="no batches"):
        compute_importance("taylor", model, units, lambda: iter([]), seed=0)


def test_taylor_leaves_bn_statistics_and_grads_alone() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, 32)
    model.train()
    units = discover_units(model, torch.zeros(1, 3, 32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    scores = compute_importance("taylor", model, units, lambda: iter(batches), seed=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BN running stats must not change"
    assert all(p.grad is None for p in model.parameters())
    for unit in units:
        assert scores[unit.name].sum() == pytest.approx(1.0) and np.all(scores[unit.name] >= 0)


def test_weight_importances(lenet) -> None:
    model, units, _, _ = lenet
    l1 = compute_importance("l1", model, units, lambda: iter([]), seed=0)
    conv1 = model.conv1.weight.detach().abs().flatten(1).sum(1).double().numpy()
    np.testing.assert_allclose(l1["conv1"], conv1 / conv1.sum(), rtol=1e-5)
    with pytest.raises(GapruneError, match="bn_scale"):
        compute_importance("bn_scale", model, units, lambda: iter([]), seed=0)
    r1 = compute_importance("random", model, units, lambda: iter([]), seed=3)
    r2 = compute_importance("random", model, units, lambda: iter([]), seed=3)
    assert all(np.array_equal(r1[k], r2[k]) for k in r1)


def test_importance_cache_round_trip(lenet, tmp_path, monkeypatch) -> None:
    model, units, _, calib = lenet
    cache = tmp_path / "cache" / "imp.pt"
    first = compute_importance("taylor", model, units, lambda: iter(calib[:2]), seed=0, cache_path=cache)
    assert cache.is_file()

    def boom(**_):
        raise AssertionError("the cache should have been used")

    monkeypatch.setitem(IMPORTANCES._entries, "taylor", boom)
    second = compute_importance("taylor", model, units, lambda: iter(calib[:2]), seed=0, cache_path=cache)
    assert set(second) == set(first)
    for name in first:
        np.testing.assert_array_equal(second[name], first[name])
    monkeypatch.undo()
    # a corrupt cache is recomputed (and rewritten), never trusted
    cache.write_bytes(b"not a torch file")
    third = compute_importance("taylor", model, units, lambda: iter(calib[:2]), seed=0, cache_path=cache)
    for name in first:
        np.testing.assert_allclose(third[name], first[name], rtol=1e-6, atol=1e-12)
    monkeypatch.setitem(IMPORTANCES._entries, "taylor", boom)
    fourth = compute_importance("taylor", model, units, lambda: iter(calib[:2]), seed=0, cache_path=cache)
    np.testing.assert_array_equal(fourth["conv1"], third["conv1"])


# --- fitness --------------------------------------------------------------------------------------


def _full_plan(units) -> Plan:
    return Plan(keep={u.name: tuple(range(u.channels)) for u in units}, channels={u.name: u.channels for u in units})


def _min_plan(units, importance, keep: int) -> Plan:
    return Plan(keep={u.name: tuple(STRATEGIES.get("min")(importance[u.name], min(keep, u.channels)).tolist())
                      for u in units},
                channels={u.name: u.channels for u in units})


def test_taylor_proxy_full_is_one_and_drops_with_pruning(lenet) -> None:
    model, units, importance, _ = lenet
    fitness = build_fitness("taylor_proxy", FitnessContext(model=model, units=units, importance=importance))
    enc = build_encoding("ratio", units, importance, r_min=0.1)
    plans = [_full_plan(units), enc.decode([0.8] * 4), enc.decode([0.5] * 4), enc.decode([0.2] * 4)]
    proxies = [r["proxy"] for r in fitness.evaluate(plans)]
    assert proxies[0] == pytest.approx(1.0, abs=1e-9)
    assert proxies[0] > proxies[1] > proxies[2] > proxies[3] > 0
    # dropping one more channel of one unit lowers the proxy by that channel's share / #units
    smaller = dict(plans[1].keep)
    dropped = smaller["conv2"][0]
    smaller["conv2"] = smaller["conv2"][1:]
    proxy = fitness.evaluate([Plan(keep=smaller, channels=plans[1].channels)])[0]["proxy"]
    assert proxy == pytest.approx(proxies[1] - importance["conv2"][dropped] / 4)


def test_calib_full_plan_matches_evaluate(lenet) -> None:
    model, units, importance, calib = lenet
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    fitness = build_fitness("calib", context, chunk=4)
    full, tiny = fitness.evaluate([_full_plan(units), _min_plan(units, importance, 1)])
    reference = evaluate(model, calib)
    total = sum(len(y) for _, y in calib)
    assert round(full["calib_acc"] * total) == round(reference["acc"] * total)  # same number of hits
    assert full["proxy"] == full["calib_acc"] == pytest.approx(reference["acc"], abs=1e-6)
    assert full["calib_loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert reference["acc"] > 0.8  # the fixture model is trained
    assert tiny["proxy"] < full["proxy"] - 0.1
    assert tiny["calib_loss"] > full["calib_loss"]
    with torch.no_grad():  # the masks are off again after evaluation
        assert evaluate(model, calib) == reference


def test_calib_execution_modes_and_chunking_do_not_change_results(lenet) -> None:
    """Masked (stacked, any chunk) and sliced execution both equal the physically pruned model."""
    model, units, importance, calib = lenet
    enc = build_encoding("ratio_strategy", units, importance, r_min=0.1)
    rng = random.Random(4)
    plans = [enc.decode(enc.random_genome(rng)) for _ in range(10)]
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    one = build_fitness("calib", context, chunk=1, execution="masked").evaluate(plans)
    eight = build_fitness("calib", context, chunk=8, execution="masked").evaluate(plans)
    sliced = build_fitness("calib", context, execution="sliced").evaluate(plans)
    assert build_fitness("calib", context).execution == "sliced"  # auto on CPU
    for other in (eight, sliced):
        assert [r["calib_acc"] for r in one] == [r["calib_acc"] for r in other]
        np.testing.assert_allclose([r["calib_loss"] for r in one], [r["calib_loss"] for r in other], rtol=1e-5)
    with torch.no_grad():
        physical = [evaluate(prune_model(model, units, plan, calib[0][0][:1]), calib)["acc"] for plan in plans[:3]]
    assert physical == pytest.approx([r["calib_acc"] for r in sliced[:3]], abs=1e-6)
    assert len({r["calib_acc"] for r in one}) > 1  # the plans really differ
    neg = build_fitness("calib", context, chunk=8, metric="neg_loss").evaluate(plans[:3])
    assert [r["proxy"] for r in neg] == pytest.approx([-r["calib_loss"] for r in eight[:3]], rel=1e-5)


def test_fitness_option_errors(lenet) -> None:
    model, units, importance, calib = lenet
    with pytest.raises(GapruneError, match="calibration"):
        build_fitness("calib", FitnessContext(model=model, units=units, importance=importance))
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    with pytest.raises(GapruneError, match="metric"):
        build_fitness("calib", context, metric="f1")
    with pytest.raises(GapruneError, match="samplez"):
        build_fitness("calib", context, samplez=3)


# --- problem --------------------------------------------------------------------------------------


def _problem(lenet, cost, fitness: str = "taylor_proxy", objectives=("proxy", "macs", "params"), **objective) -> Problem:
    model, units, importance, calib = lenet
    enc = build_encoding("ratio_strategy", units, importance, r_min=0.1)
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    return Problem(enc, build_fitness(fitness, context), cost, Objective(**objective), objectives=objectives)


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
    assert Objective(target_macs_reduction=0.5).score(0.9, 0.3, 0.0) == pytest.approx(0.9 - 2.0 * 0.2)
    assert Objective(target_macs_reduction=0.5).score(0.9, 0.6, 0.0) == pytest.approx(0.9)
    assert Objective(w_acc=1, w_macs=0.5, w_params=0.25).score(0.8, 0.4, 0.2) == pytest.approx(1.05)
    with pytest.raises(GapruneError, match="target_macs_reduction"):
        Objective(target_macs_reduction=1.5)
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
