"""Search methods beyond keep ratios: the channel_mask and layer_sparsity encodings (their
plans, costs, option errors and searches); each method also once through search.py.

LeNet-5 (no BN) trained briefly on digits.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from gaprune.engine.training import evaluate
from gaprune.pruning.cost import CostModel
from gaprune.pruning.masking import magnitude_masks, masked_weights, sparse_layers
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import SparsePlan
from gaprune.search.encodings import build_encoding, validate_encoding
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.search.optimizers import build_optimizer
from gaprune.search.problem import Problem, Score
from gaprune.utils.errors import GapruneError

from helpers import X0, assert_same_state, run_cli, state_copy, trained_on_digits


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet(digits):
    """(trained LeNet-5, its 4 units, taylor importance, val batches)."""
    return trained_on_digits(digits, "lenet5", 8, include_linear=True)


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
                      Score(w_acc=1.0, w_macs=0.5), objectives=["proxy"])
    optimizer = build_optimizer("ga", problem, population=10, generations=6, tournament=3)
    random.seed(2)
    best: list[float] = []
    final = optimizer.run(lambda g, pop, off: best.append(max(problem.record_of(ind)["score"] for ind in pop)))
    assert best == sorted(best) and best[-1] > best[0] + 0.01
    assert all(g in (0.0, 1.0) for ind in final for g in ind)  # bits stay bits under crossover / mutation
    assert len(problem.records) > 30
    # NSGA-II (SBX over an empty real part) runs too
    nsga = Problem(enc, build_fitness("taylor_proxy", context), CostModel(model, units, X0), Score())
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
    state = state_copy(model)
    enc = build_encoding("layer_sparsity", units, importance, model=model, s_max=0.99)
    fitness = build_fitness("calib", FitnessContext(model=model, units=units, importance=importance, calib=calib))
    results = fitness.evaluate([enc.decode([s] * enc.n_real) for s in (0.0, 0.6, 0.9, 0.97, 0.99)])
    reference = evaluate(model, calib)
    assert results[0]["calib_acc"] == pytest.approx(reference["acc"], abs=1e-6)
    losses = [r["calib_loss"] for r in results]
    assert losses == sorted(losses)
    assert results[-1]["proxy"] < results[0]["proxy"] - 0.3
    assert_same_state(model, state)  # the weight masks are off again


def test_layer_sparsity_search_trades_accuracy_for_sparse_macs(lenet) -> None:
    model, units, importance, calib = lenet
    enc = build_encoding("layer_sparsity", units, importance, model=model)
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    problem = Problem(enc, build_fitness("calib", context), enc.cost_model(model, X0, random.Random(0)), Score())
    random.seed(0)
    build_optimizer("nsga2", problem, population=8, generations=3).run(lambda *_: None)
    records = problem.records
    assert len(records) > 20 and all(len(r["keep_ratios"]) == 5 for r in records)
    assert max(r["macs_reduction"] for r in records) > 0.5
    assert max(r["proxy"] for r in records) > 0.8


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
