"""Searching at a MACs target: genome repair, one-shot seeds, and a search that stays at the target."""
from __future__ import annotations

import random

import numpy as np
import pytest

from gaprune.data.datasets import load_dataset
from gaprune.pruning.cost import CostModel
from gaprune.search.encodings import build_encoding
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.search.optimizers import build_optimizer
from gaprune.search.problem import Problem, Score
from gaprune.search.target import TargetRepair, macs_reduction, target_seeds
from gaprune.utils.errors import GapruneError

from helpers import REPO, X0, trained_on_digits


@pytest.fixture(scope="module")
def resnet():
    """ResNet-20 (width 8, BN) briefly trained on digits: (model, units, importance, calib)."""
    return trained_on_digits(load_dataset("digits", seed=0), "resnet20", 2, include_linear=False, width=8)


@pytest.fixture(scope="module")
def setup(resnet):
    model, units, importance, calib = resnet
    encoding = build_encoding("ratio_strategy", units, importance, r_min=0.1)
    return encoding, CostModel(model, units, X0)


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_repair_lands_every_genome_in_the_target_band(resnet, setup, target) -> None:
    encoding, cost = setup
    units = resnet[1]
    repair = TargetRepair(encoding, cost, target, tolerance=0.01)
    rng = random.Random(0)
    before, after = [], []
    for _ in range(40):
        genome = encoding.random_genome(rng)
        before.append(macs_reduction(cost, encoding.decode(genome)))
        fixed = repair(genome)
        after.append(macs_reduction(cost, encoding.decode(fixed)))
        assert fixed[encoding.n_real:] == genome[encoding.n_real:]  # strategy genes untouched
        assert all(encoding.low <= g <= encoding.high for g in fixed[: encoding.n_real])
        assert encoding.decode(repair(fixed)).signature() == encoding.decode(fixed).signature()  # stable
        if after[-1] > target + 0.01:  # past the band only where no single channel can be handed back
            counts = encoding.decode(fixed).keep_counts()
            for i, unit in enumerate(units):
                if counts[i] < unit.channels:
                    grown = counts[:i] + [counts[i] + 1] + counts[i + 1:]
                    genes = [c / u.channels for c, u in zip(grown, units)] + fixed[encoding.n_real:]
                    assert macs_reduction(cost, encoding.decode(genes)) < target
    assert np.std(before) > 0.05  # the random genomes were spread out
    assert min(after) >= target and np.mean(after) < target + 0.01, after


def test_repair_keeps_the_allocation_shape(setup) -> None:
    encoding, cost = setup
    genome = [0.9 if i % 2 else 0.4 for i in range(encoding.n_real)] + [0.0] * encoding.n_discrete
    fixed = TargetRepair(encoding, cost, 0.6)(genome)
    ratios = fixed[: encoding.n_real]
    unclamped = [(r, g) for r, g in zip(ratios, genome) if encoding.low < r < encoding.high]
    factors = {round(r / g, 6) for r, g in unclamped}
    assert len(factors) == 1  # one common factor


def test_unreachable_target_gives_the_deepest_plan(setup) -> None:
    encoding, cost = setup
    fixed = TargetRepair(encoding, cost, 0.999)(encoding.full_genome())
    assert fixed[: encoding.n_real] == [encoding.low] * encoding.n_real


def test_repair_refuses_encodings_without_keep_ratios(resnet, setup) -> None:
    model, units, importance, _ = resnet
    with pytest.raises(GapruneError, match="repair_to_target"):
        TargetRepair(build_encoding("channel_mask", units, importance), setup[1], 0.5)


def test_seeds_are_the_oneshot_plans_at_the_target(resnet, setup) -> None:
    encoding, cost = setup
    _, units, importance, _ = resnet
    seeds = target_seeds(encoding, cost, importance, 0.6)
    assert set(seeds) == {"uniform", "global"}
    for genome in seeds.values():
        plan = encoding.decode(genome)
        assert 0.6 <= macs_reduction(cost, plan) <= 0.63
        assert set(plan.strategies.values()) == {"min"}
    uniform = encoding.decode(seeds["uniform"]).keep_ratios()
    assert max(uniform.values()) - min(uniform.values()) < 0.1  # one ratio (up to rounding)
    allocation = encoding.decode(seeds["global"]).keep_ratios()
    assert max(allocation.values()) - min(allocation.values()) > 0.1  # a real layer-wise allocation


def test_seeded_repaired_search_stays_at_the_target_and_never_loses_to_its_seeds(resnet, setup) -> None:
    model, units, importance, calib = resnet
    encoding, cost = setup
    target = 0.6
    fitness = build_fitness("calib", FitnessContext(model=model, units=units, importance=importance, calib=calib))
    repair = TargetRepair(encoding, cost, target)
    problem = Problem(encoding, fitness, cost, Score(target_macs_reduction=target), ["proxy", "macs", "params"],
                      repair=repair)
    seeds = target_seeds(encoding, cost, importance, target)
    random.seed(0)
    optimizer = build_optimizer("nsga2", problem, seeds=list(seeds.values()), population=8, generations=3)
    final = optimizer.run(lambda *_: None)
    records = problem.records
    assert [r["generation"] for r in records[:2]] == [0, 0]
    assert [r["keep_counts"] for r in records[:2]] == [encoding.decode(g).keep_counts() for g in seeds.values()]
    assert all(target <= r["macs_reduction"] <= target + 0.01 for r in records)
    # the genomes the optimizer holds are the repaired ones that were scored
    for ind in final:
        assert target <= macs_reduction(cost, encoding.decode(ind)) <= target + 0.01
    best = max(r["proxy"] for r in records)
    assert best >= max(r["proxy"] for r in records[:2])


def _search_config(*overrides: str):

    from hydra import compose, initialize_config_dir

    conf = REPO / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("search", overrides=list(overrides))


def test_nsga2_optimises_the_proxy_alone_where_the_repair_holds_the_target(setup, capsys) -> None:
    from gaprune.pipeline.search import search_objectives

    encoding, cost = setup
    repair = TargetRepair(encoding, cost, 0.6)
    assert search_objectives(_search_config("optimizer=nsga2"), None) == ["proxy", "macs", "params"]  # no target: front
    assert search_objectives(_search_config("optimizer=nsga2"), repair) == ["proxy"]
    assert "objectives at the target: proxy" in capsys.readouterr().out
    keep_front = _search_config("optimizer=nsga2", "optimizer.target_objectives=[proxy,macs,params]")
    assert search_objectives(keep_front, repair) == ["proxy", "macs", "params"]
    assert search_objectives(_search_config("optimizer=ga"), repair) == ["proxy"]


def test_latency_lut_is_wanted_only_when_the_objectives_in_use_have_latency(setup) -> None:
    from gaprune.pipeline.latency import wants_latency
    from gaprune.pipeline.search import search_objectives

    encoding, cost = setup
    cfg = _search_config("optimizer=nsga2", "optimizer.target_objectives=[proxy,latency]",
                         "score.target_macs_reduction=0.6")
    assert wants_latency(cfg)  # validation counts the objectives the search might optimise
    assert wants_latency(cfg, search_objectives(cfg, TargetRepair(encoding, cost, 0.6)))
    assert not wants_latency(cfg, search_objectives(cfg, None))  # repair off: the front, no latency, no LUT


def test_bad_target_objectives_are_one_line_errors(tmp_path) -> None:
    from helpers import run_cli

    proc = run_cli("search.py", f"paths.output_root={tmp_path}", "optimizer.target_objectives=[macs]", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gaprune:")]
    assert proc.returncode == 2 and len(errors) == 1 and "optimizer.target_objectives=['macs']" in errors[0]
    assert not (tmp_path / "search").exists()
