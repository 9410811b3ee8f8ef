"""Fitnesses beyond calib: calib with adaptive BN (re-estimated BN statistics on masked and
sliced execution, auto on exactly for BN models), the short fine-tune fitness and distortion;
every one leaves the model as it found it.

LeNet-5 (no BN) and a width-4 ResNet-20 (BN, residual coupling) trained briefly on digits.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gaprune.data.loaders import make_loader
from gaprune.engine.training import evaluate, train
from gaprune.pruning.batchnorm import batch_norms
from gaprune.pruning.physical import prune_model
from gaprune.pruning.plan import Plan
from gaprune.search.encodings import build_encoding
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.utils.errors import GapruneError

from helpers import X0, assert_same_state, state_copy, trained_on_digits


# --- fixtures -------------------------------------------------------------------------------------


def _train_batches(digits):
    return lambda batch_size, augment=True: make_loader(digits, "train", batch_size, shuffle=True, augment=augment,
                                                        seed=0)


@pytest.fixture(scope="module")
def lenet(digits):
    """(trained LeNet-5, its 4 units, taylor importance, val batches)."""
    return trained_on_digits(digits, "lenet5", 8, include_linear=True)


@pytest.fixture(scope="module")
def resnet(digits):
    """(ResNet-20 of width 4 with BN, its units, taylor importance, val batches)."""
    return trained_on_digits(digits, "resnet20", 4, include_linear=False, width=4)


def _context(setup, digits, model=None) -> FitnessContext:
    base, units, importance, calib = setup
    return FitnessContext(model=model if model is not None else base, units=units, importance=importance,
                          calib=calib, train_batches=_train_batches(digits), seed=0)


def _ratio_plan(setup, ratio: float) -> Plan:
    _, units, importance, _ = setup
    encoding = build_encoding("ratio", units, importance, r_min=0.05)
    return encoding.decode([ratio] * encoding.n_real)


# --- calib with adaptive BN -----------------------------------------------------------------------


def test_adaptive_bn_changes_the_score_of_a_pruned_plan_and_restores_bn(resnet, digits) -> None:
    model = resnet[0]
    state = state_copy(model)
    plan = _ratio_plan(resnet, 0.3)
    plain = build_fitness("calib", _context(resnet, digits), adaptive_bn=False)
    adaptive = build_fitness("calib", _context(resnet, digits), adaptive_bn=True, bn_batches=4)
    assert adaptive.stackable is False and adaptive.groups([plan, plan, plan]) == [[0], [1], [2]]
    before, after = plain.evaluate([plan])[0], adaptive.evaluate([plan])[0]
    assert after["calib_loss"] != pytest.approx(before["calib_loss"], rel=1e-3)
    assert_same_state(model, state)  # baseline BN buffers (and everything else) untouched
    assert all(bn.momentum == 0.1 for bn in batch_norms(model))
    assert adaptive.evaluate([plan])[0] == after  # same BN batches every time: deterministic


@pytest.mark.parametrize("execution", ["masked", "sliced"])
def test_adaptive_bn_equals_physically_pruned_with_reestimated_bn(resnet, digits, execution) -> None:
    model, units, _, calib = resnet
    state = state_copy(model)
    plan = _ratio_plan(resnet, 0.4)
    fitness = build_fitness("calib", _context(resnet, digits), adaptive_bn=True, bn_batches=3, bn_batch_size=32,
                            execution=execution)
    assert fitness.execution == execution
    score = fitness.evaluate([plan])[0]
    assert_same_state(model, state)  # neither path leaves re-estimated statistics in the baseline
    pruned = prune_model(model, units, plan, X0)
    for bn in batch_norms(pruned):
        bn.reset_running_stats()
        bn.momentum = None
    pruned.train()
    with torch.no_grad():
        for x, _ in fitness.bn_data():
            pruned(x)
    reference = evaluate(pruned, calib)
    assert score["calib_acc"] == pytest.approx(reference["acc"], abs=1e-6)
    assert score["calib_loss"] == pytest.approx(reference["loss"], rel=1e-4)


def test_adaptive_bn_repairs_corrupted_bn_statistics(resnet, digits) -> None:
    model = copy.deepcopy(resnet[0])
    baseline = evaluate(model, resnet[3])["acc"]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in batch_norms(model):
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=generator))
            bn.running_var.mul_(25.0)
    full = _ratio_plan(resnet, 1.0)
    context = _context(resnet, digits, model=model)
    broken = build_fitness("calib", context, adaptive_bn=False).evaluate([full])[0]["proxy"]
    repaired = build_fitness("calib", context, adaptive_bn=True, bn_batches=8).evaluate([full])[0]["proxy"]
    assert broken < baseline - 0.2
    assert repaired > broken + 0.2 and repaired > baseline - 0.1


def test_adaptive_bn_on_sparse_plans(resnet, digits) -> None:
    model, units, importance, _ = resnet
    state = state_copy(model)
    enc = build_encoding("layer_sparsity", units, importance, model=model)
    plans = [enc.decode([s] * enc.n_real) for s in (0.0, 0.7)]
    plain = build_fitness("calib", _context(resnet, digits), adaptive_bn=False).evaluate(plans)
    adaptive = build_fitness("calib", _context(resnet, digits), adaptive_bn=True, bn_batches=4).evaluate(plans)
    assert adaptive[1]["calib_loss"] != pytest.approx(plain[1]["calib_loss"], rel=1e-3)
    assert_same_state(model, state)


def test_adaptive_bn_auto_is_on_exactly_for_models_with_batchnorm(lenet, resnet, digits) -> None:
    assert build_fitness("calib", _context(resnet, digits)).adaptive_bn is True
    assert build_fitness("calib", _context(lenet, digits)).adaptive_bn is False
    assert build_fitness("calib", _context(resnet, digits), adaptive_bn=False).adaptive_bn is False
    with pytest.raises(GapruneError, match="adaptive_bn='sometimes'"):
        build_fitness("calib", _context(resnet, digits), adaptive_bn="sometimes")


def test_adaptive_bn_option_errors(lenet, resnet, digits) -> None:
    with pytest.raises(GapruneError, match="no BatchNorm"):
        build_fitness("calib", _context(lenet, digits), adaptive_bn=True)
    no_train = FitnessContext(model=resnet[0], units=resnet[1], importance=resnet[2], calib=resnet[3])
    with pytest.raises(GapruneError, match="training batches"):
        build_fitness("calib", no_train, adaptive_bn=True)
    with pytest.raises(GapruneError, match="bn_batches"):
        build_fitness("calib", _context(resnet, digits), adaptive_bn=True, bn_batches=0)


# --- finetune -------------------------------------------------------------------------------------


def test_finetune_fitness_recovers_a_heavily_pruned_plan(lenet, digits) -> None:
    model = lenet[0]
    state = state_copy(model)
    plan = _ratio_plan(lenet, 0.15)
    calib = build_fitness("calib", _context(lenet, digits)).evaluate([plan])[0]
    fitness = build_fitness("finetune", _context(lenet, digits), epochs=2, lr=0.02)
    rng_state = torch.get_rng_state()
    first = fitness.evaluate([plan])[0]
    assert torch.equal(torch.get_rng_state(), rng_state)  # seeded inside, global RNG left alone
    assert first["calib_acc_before"] == pytest.approx(calib["calib_acc"], abs=1e-6)  # masked == pruned
    assert first["proxy"] == first["finetune_acc"] >= calib["calib_acc"] + 0.1
    assert fitness.evaluate([plan])[0] == first  # deterministic
    assert_same_state(model, state)
    steps = build_fitness("finetune", _context(lenet, digits), steps=5, lr=0.02).evaluate([plan])[0]
    assert steps["proxy"] != first["proxy"]


def test_finetune_fitness_keeps_sparse_masks(lenet, digits, monkeypatch) -> None:
    import gaprune.search.fitness as fitness_module

    model, units, importance, _ = lenet
    enc = build_encoding("layer_sparsity", units, importance, model=model, s_max=0.99)
    plan = enc.decode([0.97] * enc.n_real)
    seen = []

    def checked_train(student, *args, **kwargs):
        history = train(student, *args, **kwargs)
        seen.append(all(int((student.get_submodule(n).weight[~m] != 0).sum()) == 0 for n, m in plan.masks.items()))
        return history

    monkeypatch.setattr(fitness_module, "train", checked_train)
    calib = build_fitness("calib", _context(lenet, digits)).evaluate([plan])[0]
    tuned = build_fitness("finetune", _context(lenet, digits), epochs=2, lr=0.02).evaluate([plan])[0]
    assert seen == [True]  # the pruned weights are still zero after fine-tuning
    assert tuned["proxy"] > calib["proxy"]


def test_finetune_option_errors(lenet, digits) -> None:
    with pytest.raises(GapruneError, match="training batches"):
        build_fitness("finetune", FitnessContext(model=lenet[0], units=lenet[1], importance=lenet[2], calib=lenet[3]))
    with pytest.raises(GapruneError, match="steps"):
        build_fitness("finetune", _context(lenet, digits), steps=0)
    with pytest.raises(GapruneError, match="epochs"):
        build_fitness("finetune", _context(lenet, digits), epochs=0)


# --- distortion -----------------------------------------------------------------------------------


def test_distortion_is_zero_unpruned_and_grows_with_pruning(lenet, digits) -> None:
    plans = [_ratio_plan(lenet, r) for r in (1.0, 0.8, 0.5, 0.2)]
    for reduction in ("mean", "max"):
        fitness = build_fitness("distortion", _context(lenet, digits), reduction=reduction, chunk=4, execution="masked")
        results = fitness.evaluate(plans)
        values = [r["distortion"] for r in results]
        assert values[0] == pytest.approx(0.0, abs=1e-8)
        assert values == sorted(values) and values[-1] > 1.0
        assert all(r["proxy"] == -r["distortion"] for r in results)
        assert all(r["distortion_max"] >= r["distortion_mean"] for r in results)
        assert values == [r[f"distortion_{reduction}"] for r in results]
    one = build_fitness("distortion", _context(lenet, digits), execution="sliced").evaluate(plans)
    np.testing.assert_allclose([r["distortion"] for r in one], [r["distortion_mean"] for r in results], rtol=1e-4,
                               atol=1e-8)


def test_distortion_on_gaussian_inputs(lenet, digits) -> None:
    plans = [_ratio_plan(lenet, r) for r in (1.0, 0.5, 0.2)]
    real = build_fitness("distortion", _context(lenet, digits)).evaluate(plans)
    gaussian = build_fitness("distortion", _context(lenet, digits), data="gaussian").evaluate(plans)
    again = build_fitness("distortion", _context(lenet, digits), data="gaussian").evaluate(plans)
    assert gaussian == again  # seeded
    values = [r["distortion"] for r in gaussian]
    assert values[0] == pytest.approx(0.0, abs=1e-8) and values[1] < values[2]
    assert values[2] != pytest.approx(real[2]["distortion"], rel=1e-3)


def test_distortion_on_sparse_plans(lenet, digits) -> None:
    model, units, importance, _ = lenet
    state = state_copy(model)
    enc = build_encoding("layer_sparsity", units, importance, model=model, s_max=0.99)
    fitness = build_fitness("distortion", _context(lenet, digits), reduction="max")
    values = [r["distortion"] for r in fitness.evaluate([enc.decode([s] * 5) for s in (0.0, 0.5, 0.9, 0.99)])]
    assert values[0] == 0.0 and values == sorted(values) and values[-1] > values[1] > 0
    assert_same_state(model, state)


def test_distortion_option_errors(lenet, digits) -> None:
    with pytest.raises(GapruneError, match="reduction"):
        build_fitness("distortion", _context(lenet, digits), reduction="median")
    with pytest.raises(GapruneError, match="data"):
        build_fitness("distortion", _context(lenet, digits), data="uniform")
    with pytest.raises(GapruneError, match="taylor_proxy scores channel plans"):
        enc = build_encoding("layer_sparsity", lenet[1], lenet[2], model=lenet[0])
        build_fitness("taylor_proxy", _context(lenet, digits)).evaluate([enc.decode(enc.full_genome())])
