"""Channel strategies, keep counts and genome encodings: which channels a gene keeps, and
that every genome decodes to a valid plan."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from gaprune.pruning.strategies import STRATEGIES
from gaprune.pruning.units import PrunableUnit
from gaprune.search.encodings import build_encoding
from gaprune.utils.errors import GapruneError


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
