"""Search methods beyond keep ratios: channel_mask and layer_sparsity encodings, adaptive-BN
calibration, fine-tune and distortion fitnesses; each also once through search.py.

LeNet-5 (no BN) and a width-4 ResNet-20 (BN, residual coupling) trained briefly on digits.
"""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from gaprune.data.datasets import load_dataset
from gaprune.data.loaders import make_loader
from gaprune.engine.training import evaluate, train
from gaprune.pruning.batchnorm import batch_norms
from gaprune.pruning.cost import CostModel
from gaprune.pruning.masking import magnitude_masks, masked_weights, sparse_layers
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.search.encodings import build_encoding, validate_encoding
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.search.optimizers import build_optimizer
from gaprune.search.problem import Objective, Problem
from gaprune.utils.errors import GapruneError

from helpers import X0, run_cli, trained_on_digits


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


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


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# --- channel_mask ---------------------------------------------------------------------------------


def test_channel_mask_layout_and_decoding(lenet) -> None:
    model, units, importance, _ = lenet
    enc = build_encoding("channel_mask", units, importance)
    assert (enc.n_real, enc.n_discrete, enc.choices) == (0, sum(u.channels for u in units), 2)
    full = enc.decode(enc.full_genome())
    assert all(full.keep[u.name] == tuple(range(u.channels)) for u in units)
    # all bits off: every unit keeps exactly its most important channel
    empty = enc.decode([0.0] * enc.size)
    for unit in units:
        assert empty.keep[unit.name] == (int(np.argmax(importance[unit.name])),)
    # the bits are the kept channels, unit after unit
    rng = random.Random(0)
    genome = enc.random_genome(rng)
    plan, start = enc.decode(genome), 0
    for unit in units:
        bits = genome[start:start + unit.channels]
        start += unit.channels
        if any(bits):
            assert plan.keep[unit.name] == tuple(i for i, b in enumerate(bits) if b == 1.0)
    # min_keep tops a unit up with its most important dropped channels
    enc3 = build_encoding("channel_mask", units, importance, min_keep=3)
    one_bit = [0.0] * enc3.size
    one_bit[0] = 1.0  # conv1, channel 0
    kept = enc3.decode(one_bit).keep["conv1"]
    ranked = [i for i in np.argsort(-importance["conv1"], kind="stable") if i != 0][:2]
    assert kept == tuple(sorted([0, *map(int, ranked)]))


def test_channel_mask_plans_prune_physically_to_the_same_widths_and_cost(lenet) -> None:
    model, units, importance, _ = lenet
    enc = build_encoding("channel_mask", units, importance, init_keep=[0.05, 0.6])
    cost = CostModel(model, units, X0)
    rng = random.Random(3)
    for genome in [enc.random_genome(rng) for _ in range(4)] + [[0.0] * enc.size]:
        plan = enc.decode(genome)
        pruned = prune_model(model, units, plan, X0)
        for unit in units:
            layer = pruned.get_submodule(unit.name)
            width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            assert width == len(plan.keep[unit.name]) >= 1
        assert cost.cost(plan) == count_macs_params(pruned, X0)


def test_channel_mask_random_genomes_follow_init_keep(lenet) -> None:
    _, units, importance, _ = lenet
    rng = random.Random(0)
    sparse = build_encoding("channel_mask", units, importance, init_keep=0.2)
    dense = build_encoding("channel_mask", units, importance, init_keep=0.9)
    assert 0.1 < np.mean([sparse.random_genome(rng) for _ in range(20)]) < 0.3
    assert 0.8 < np.mean([dense.random_genome(rng) for _ in range(20)]) < 1.0
    spread = build_encoding("channel_mask", units, importance, init_keep=[0.1, 0.9])
    means = [np.mean(spread.random_genome(rng)) for _ in range(30)]
    assert min(means) < 0.35 and max(means) > 0.65  # each genome draws its own keep probability


def test_channel_mask_option_errors(lenet) -> None:
    _, units, importance, _ = lenet
    for bad in (0, 1.5, [0.9, 0.1], [0.2, 0.5, 0.7], "half"):
        with pytest.raises(GapruneError, match="init_keep"):
            validate_encoding("channel_mask", init_keep=bad)
    with pytest.raises(GapruneError, match="min_keep"):
        build_encoding("channel_mask", units, importance, min_keep=0)
    with pytest.raises(GapruneError, match="r_min"):
        validate_encoding("channel_mask", r_min=0.1)
    validate_encoding("channel_mask", init_keep=[0.3, 0.9], min_keep=2)


def test_ga_with_channel_mask_improves_the_score(lenet) -> None:
    model, units, importance, calib = lenet
    enc = build_encoding("channel_mask", units, importance)
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    problem = Problem(enc, build_fitness("calib", context), CostModel(model, units, X0),
                      Objective(w_acc=1.0, w_macs=0.5), objectives=["proxy"])
    optimizer = build_optimizer("ga", problem, population=10, generations=6, tournament=3)
    random.seed(2)
    best: list[float] = []
    final = optimizer.run(lambda g, pop, off: best.append(max(problem.record_of(ind)["score"] for ind in pop)))
    assert best == sorted(best) and best[-1] > best[0] + 0.01
    assert all(g in (0.0, 1.0) for ind in final for g in ind)  # bits stay bits under crossover / mutation
    assert len(problem.records) > 30
    # NSGA-II (SBX over an empty real part) runs too
    nsga = Problem(enc, build_fitness("taylor_proxy", context), CostModel(model, units, X0), Objective())
    random.seed(0)
    build_optimizer("nsga2", nsga, population=8, generations=2).run(lambda *_: None)
    assert len({r["macs"] for r in nsga.records}) > 5


# --- layer_sparsity -------------------------------------------------------------------------------


def test_layer_sparsity_plans_have_the_requested_per_layer_sparsity(lenet) -> None:
    model, units, importance, _ = lenet
    enc = build_encoding("layer_sparsity", units, importance, model=model, s_max=0.99)
    assert enc.layer_names() == sparse_layers(model) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert (enc.n_real, enc.n_discrete, enc.low, enc.high) == (5, 0, 0.0, 0.99)
    levels = [0.0, 0.5, 0.9, 0.3, 0.75]
    plan = enc.decode(levels)
    assert isinstance(plan, SparsePlan)
    for (name, mask), level in zip(plan.masks.items(), levels):
        weight = model.get_submodule(name).weight.detach()
        assert mask.shape == weight.shape and mask.dtype == torch.bool
        assert int(mask.sum()) == max(1, round((1 - level) * weight.numel()))
        if level > 0:  # magnitude pruning inside the layer: every kept |w| >= every dropped |w|
            assert weight.abs()[mask].min() >= weight.abs()[~mask].max()
        assert torch.equal(mask, magnitude_masks(model, {name: level})[name])
    assert plan.record_fields()["keep_ratios"] == pytest.approx([1 - s for s in levels], abs=0.01)
    assert enc.decode(enc.full_genome()).sparsity() == 0.0
    rng = random.Random(0)
    for _ in range(5):
        genome = enc.random_genome(rng)
        assert all(0.0 <= g <= 0.99 for g in genome)
    # excluded layers stay dense (no gene)
    head_dense = build_encoding("layer_sparsity", units, importance, model=model, exclude=["fc3"])
    assert head_dense.layer_names() == ["conv1", "conv2", "fc1", "fc2"]


def test_layer_sparsity_option_errors(lenet) -> None:
    model, units, importance, _ = lenet
    with pytest.raises(GapruneError, match="needs the baseline model"):
        build_encoding("layer_sparsity", units, importance)
    for bad in (0, 1.0, 1.5):
        with pytest.raises(GapruneError, match="s_max"):
            validate_encoding("layer_sparsity", s_max=bad)
    with pytest.raises(GapruneError, match="s_min"):
        validate_encoding("layer_sparsity", s_max=0.5, s_min=0.6)
    with pytest.raises(GapruneError, match="unknown layer"):
        build_encoding("layer_sparsity", units, importance, model=model, exclude=["fc9"])


def test_sparse_cost_counts_nonzero_weights(lenet) -> None:
    model, units, importance, _ = lenet
    enc = build_encoding("layer_sparsity", units, importance, model=model)
    cost = enc.cost_model(model, X0, random.Random(0))
    assert (cost.base_macs, cost.base_params) == count_macs_params(model, X0)
    assert cost.cost(enc.decode(enc.full_genome())) == (cost.base_macs, cost.base_params)
    layers = set(enc.layer_names())
    rng = random.Random(1)
    for _ in range(3):
        plan = enc.decode(enc.random_genome(rng))
        macs, params = cost.cost(plan)
        with masked_weights(model, plan.masks):
            nonzero = sum(int((model.get_submodule(n).weight != 0).sum()) for n in layers)
            other = sum(p.numel() for name, p in model.named_parameters() if name.rsplit(".", 1)[0] not in layers
                        or not name.endswith("weight"))
        assert params == nonzero + other
        assert macs < cost.base_macs


def test_calib_on_sparse_plans_drops_as_sparsity_rises(lenet) -> None:
    model, units, importance, calib = lenet
    state = _state(model)
    enc = build_encoding("layer_sparsity", units, importance, model=model, s_max=0.99)
    fitness = build_fitness("calib", FitnessContext(model=model, units=units, importance=importance, calib=calib))
    results = fitness.evaluate([enc.decode([s] * enc.n_real) for s in (0.0, 0.6, 0.9, 0.97, 0.99)])
    reference = evaluate(model, calib)
    assert results[0]["calib_acc"] == pytest.approx(reference["acc"], abs=1e-6)
    losses = [r["calib_loss"] for r in results]
    assert losses == sorted(losses)
    assert results[-1]["proxy"] < results[0]["proxy"] - 0.3
    _assert_same_state(model, state)  # the weight masks are off again


def test_layer_sparsity_search_trades_accuracy_for_sparse_macs(lenet) -> None:
    model, units, importance, calib = lenet
    enc = build_encoding("layer_sparsity", units, importance, model=model)
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    problem = Problem(enc, build_fitness("calib", context), enc.cost_model(model, X0, random.Random(0)), Objective())
    random.seed(0)
    build_optimizer("nsga2", problem, population=8, generations=3).run(lambda *_: None)
    records = problem.records
    assert len(records) > 20 and all(len(r["keep_ratios"]) == 5 for r in records)
    assert max(r["macs_reduction"] for r in records) > 0.5
    assert max(r["proxy"] for r in records) > 0.8


# --- calib with adaptive BN -----------------------------------------------------------------------


def test_adaptive_bn_changes_the_score_of_a_pruned_plan_and_restores_bn(resnet, digits) -> None:
    model = resnet[0]
    state = _state(model)
    plan = _ratio_plan(resnet, 0.3)
    plain = build_fitness("calib", _context(resnet, digits), adaptive_bn=False)
    adaptive = build_fitness("calib", _context(resnet, digits), adaptive_bn=True, bn_batches=4)
    assert adaptive.stackable is False and adaptive.groups([plan, plan, plan]) == [[0], [1], [2]]
    before, after = plain.evaluate([plan])[0], adaptive.evaluate([plan])[0]
    assert after["calib_loss"] != pytest.approx(before["calib_loss"], rel=1e-3)
    _assert_same_state(model, state)  # baseline BN buffers (and everything else) untouched
    assert all(bn.momentum == 0.1 for bn in batch_norms(model))
    assert adaptive.evaluate([plan])[0] == after  # same BN batches every time: deterministic


@pytest.mark.parametrize("execution", ["masked", "sliced"])
def test_adaptive_bn_equals_physically_pruned_with_reestimated_bn(resnet, digits, execution) -> None:
    model, units, _, calib = resnet
    state = _state(model)
    plan = _ratio_plan(resnet, 0.4)
    fitness = build_fitness("calib", _context(resnet, digits), adaptive_bn=True, bn_batches=3, bn_batch_size=32,
                            execution=execution)
    assert fitness.execution == execution
    score = fitness.evaluate([plan])[0]
    _assert_same_state(model, state)  # neither path leaves re-estimated statistics in the baseline
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
    state = _state(model)
    enc = build_encoding("layer_sparsity", units, importance, model=model)
    plans = [enc.decode([s] * enc.n_real) for s in (0.0, 0.7)]
    plain = build_fitness("calib", _context(resnet, digits), adaptive_bn=False).evaluate(plans)
    adaptive = build_fitness("calib", _context(resnet, digits), adaptive_bn=True, bn_batches=4).evaluate(plans)
    assert adaptive[1]["calib_loss"] != pytest.approx(plain[1]["calib_loss"], rel=1e-3)
    _assert_same_state(model, state)


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
    state = _state(model)
    plan = _ratio_plan(lenet, 0.15)
    calib = build_fitness("calib", _context(lenet, digits)).evaluate([plan])[0]
    fitness = build_fitness("finetune", _context(lenet, digits), epochs=2, lr=0.02)
    rng_state = torch.get_rng_state()
    first = fitness.evaluate([plan])[0]
    assert torch.equal(torch.get_rng_state(), rng_state)  # seeded inside, global RNG left alone
    assert first["calib_acc_before"] == pytest.approx(calib["calib_acc"], abs=1e-6)  # masked == pruned
    assert first["proxy"] == first["finetune_acc"] >= calib["calib_acc"] + 0.1
    assert fitness.evaluate([plan])[0] == first  # deterministic
    _assert_same_state(model, state)
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
    state = _state(model)
    enc = build_encoding("layer_sparsity", units, importance, model=model, s_max=0.99)
    fitness = build_fitness("distortion", _context(lenet, digits), reduction="max")
    values = [r["distortion"] for r in fitness.evaluate([enc.decode([s] * 5) for s in (0.0, 0.5, 0.9, 0.99)])]
    assert values[0] == 0.0 and values == sorted(values) and values[-1] > values[1] > 0
    _assert_same_state(model, state)


def test_distortion_option_errors(lenet, digits) -> None:
    with pytest.raises(GapruneError, match="reduction"):
        build_fitness("distortion", _context(lenet, digits), reduction="median")
    with pytest.raises(GapruneError, match="data"):
        build_fitness("distortion", _context(lenet, digits), data="uniform")
    with pytest.raises(GapruneError, match="taylor_proxy scores channel plans"):
        enc = build_encoding("layer_sparsity", lenet[1], lenet[2], model=lenet[0])
        build_fitness("taylor_proxy", _context(lenet, digits)).evaluate([enc.decode(enc.full_genome())])


# --- through search.py ----------------------------------------------------------------------------


def _search(trained_root: Path, tmp: Path, *overrides: str) -> tuple[Path, dict]:
    run_cli("search.py", f"paths.checkpoints={trained_root / 'ck'}", f"paths.output_root={tmp}",
            "logger.mode=disabled", "then_finetune=false", "fitness.calib_samples=128", *overrides)
    run = next((tmp / "search").rglob("search_summary.json")).parent
    return run, json.loads((run / "search_summary.json").read_text())


def test_cli_channel_mask_with_finetune_fitness(trained, tmp_path) -> None:
    run, summary = _search(trained, tmp_path, "encoding=channel_mask", "fitness=finetune", "fitness.params.steps=3",
                           "optimizer=ga", "optimizer.params.population=4", "optimizer.params.generations=1")
    assert summary["encoding"] == "channel_mask" and summary["fitness"] == "finetune"
    records = json.loads((run / "evaluations.json").read_text())
    assert all("finetune_acc" in r and len(r["genome"]) == 6 + 16 + 120 + 84 for r in records)
    best = json.loads((run / "best_plan.json").read_text())
    assert all(u["strategy"] == "mask" and u["keep_count"] >= 1 for u in best["plan"]["units"])


def test_cli_layer_sparsity_with_distortion(trained, tmp_path) -> None:
    run, summary = _search(trained, tmp_path, "encoding=layer_sparsity", "fitness=distortion",
                           "fitness.params.reduction=max", "fitness.params.data=gaussian",
                           "optimizer.params.population=8", "optimizer.params.generations=2")
    assert summary["evaluations"] > 8 and summary["picks"]["knee"]["macs_reduction"] > 0.1
    records = json.loads((run / "evaluations.json").read_text())
    assert all(r["proxy"] == -r["distortion_max"] and len(r["keep_ratios"]) == 5 for r in records)
    plan = SparsePlan.from_json(json.loads((run / "best_plan.json").read_text())["plan"])
    assert list(plan.masks) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert (run / "keep_ratios.png").is_file()


def test_cli_adaptive_bn_calib_on_a_bn_model(tmp_path) -> None:
    """A tiny ResNet-20 baseline is trained by search.py itself, then searched with adaptive BN."""
    run_cli("search.py", f"paths.checkpoints={tmp_path / 'ck'}", f"paths.output_root={tmp_path}",
            "logger.mode=disabled", "then_finetune=false", "model=resnet20", "model.params.width=4",
            "trainer.epochs=1", "dataset.params.train_limit=300", "importance.calib_batches=1", "fitness.calib_samples=64",
            "fitness.params.adaptive_bn=true", "fitness.params.bn_batches=2", "optimizer.params.population=4",
            "optimizer.params.generations=1")
    summary = json.loads(next((tmp_path / "search").rglob("search_summary.json")).read_text())
    assert summary["fitness"] == "calib" and summary["evaluations"] >= 4
