"""Importance and fitness on a real model: Taylor / weight importances and their cache, the
taylor_proxy and calib fitnesses (execution modes and chunking agree), option errors.

LeNet-5 trained for a few epochs on the bundled digits (~2 s).
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gaprune.engine.training import evaluate
from gaprune.models import build_model
from gaprune.pruning.importance import IMPORTANCES, compute_importance
from gaprune.pruning.physical import prune_model
from gaprune.pruning.plan import Plan
from gaprune.pruning.strategies import STRATEGIES
from gaprune.pruning.units import discover_units
from gaprune.search.encodings import build_encoding
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.utils.errors import GapruneError

from helpers import trained_on_digits


@pytest.fixture(scope="module")
def lenet(digits):
    """(trained LeNet-5, its 4 units incl. hidden linears, taylor importance, val batches)."""
    return trained_on_digits(digits, "lenet5", 5, include_linear=True)


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
