"""searcher=layerwise_weight_mask: per-layer GA over binary weight masks (gaprune/search/layerwise/).

In-process tests use the LeNet-5 digits baseline that train.py writes (session fixture); the
entry-point test runs search.py as a user does.
"""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from gaprune.data.loaders import capped, make_loader
from gaprune.engine.checkpoint import load_model
from gaprune.engine.training import TrainConfig, evaluate, train
from gaprune.models import build_model
from gaprune.pipeline.layerwise import STATE
from gaprune.pruning.masking import apply_masks_permanently, masked_weights
from gaprune.pruning.plan import SparsePlan
from gaprune.search.layerwise.evaluate import LayerEvaluator
from gaprune.search.layerwise.ga import (LayerwiseResult, WeightMaskConfig, evolve_layer, forward_order, layer_optimizer,
                                         layer_seed, resolve_layers, search_layers)
from gaprune.search.layerwise.problem import LayerProblem
from gaprune.search.optimizers import OPTIMIZERS, BitIndividual, Optimizer
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import with_digest
from helpers import assert_same_state, baseline_of, run_cli

LENET_LAYERS = ["conv1", "conv2", "fc1", "fc2", "fc3"]


@pytest.fixture(scope="module")
def calib(digits):
    return list(make_loader(digits, "val", 256, limit=512))


@pytest.fixture()
def lenet(trained):  # noqa: F811
    model, _, _ = load_model(baseline_of(trained))
    return model


def small(**overrides) -> WeightMaskConfig:
    params = dict(population=12, generations=6, keep_prob=0.7, mutpb=0.01, chunk=6)
    params.update(overrides)
    return WeightMaskConfig.from_params(params)


def model_accuracy(model, batches) -> float:
    return evaluate(model, batches)["acc"]


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def retrainer(digits, steps: int = 8, lr: float = 0.01):
    """What run_layerwise_search does: SGD on train, masks re-applied after every step."""
    def retrain(model, masks, index):
        batches = make_loader(digits, "train", 64, shuffle=True, augment=True, seed=layer_seed(0, index))
        train(model, capped(batches, steps), make_loader(digits, "val", 256), TrainConfig(epochs=1, lr=lr),
              after_step=lambda: apply_masks_permanently(model, masks))
        return {"steps": steps}
    return retrain


def test_batched_evaluation_equals_masked_weights(lenet, calib):
    """Every evaluation mode gives the accuracy of the model under gaprune.pruning.masking.masked_weights."""
    rng = np.random.default_rng(0)
    for layer in LENET_LAYERS:
        size = lenet.get_submodule(layer).weight.numel()
        bits = rng.random((3, size)) < np.array([[1.0], [0.7], [0.3]])
        shape = lenet.get_submodule(layer).weight.shape
        expected = []
        for row in bits:
            with masked_weights(lenet, {layer: torch.from_numpy(row).reshape(shape)}):
                expected.append(evaluate(lenet, calib)["acc"])
        for mode in LayerEvaluator.MODES:
            got = LayerEvaluator(lenet, layer, calib, chunk=2, mode=mode).accuracy(bits)
            assert np.allclose(got, expected), (layer, mode, got, expected)
        auto = LayerEvaluator(lenet, layer, calib)
        assert auto.mode == ("loop" if layer == "conv1" else "expand")  # CPU: shared prefix only
    assert np.allclose(LayerEvaluator(lenet, "fc3", calib).accuracy(np.ones((1, 840), bool)),
                       model_accuracy(lenet, calib))


def test_ga_on_one_layer_improves_fitness(lenet, calib):
    before = copy.deepcopy(lenet.state_dict())
    config = small(generations=10)
    outcome = evolve_layer(lenet, "fc1", calib, config, seed=0, progress=False)
    rows = outcome.rows
    assert [r["generation"] for r in rows] == list(range(11))
    best = [r["best_fitness"] for r in rows]
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:]))  # elitism: the best never gets lost
    assert best[-1] > best[0] + 0.005
    assert rows[-1]["mean_fitness"] > rows[0]["mean_fitness"]
    mask = outcome.mask
    assert mask.shape == (120, 400) and mask.dtype == torch.bool
    summary = outcome.summary
    assert summary["sparsity"] == pytest.approx(1 - mask.float().mean().item())
    assert summary["fitness"] == pytest.approx(config.w_acc * summary["acc_ga"] + config.w_sparsity * summary["sparsity"])
    assert summary["evaluations"] <= 12 + 10 * 10  # population - elite offspring per generation; survivors are not re-evaluated
    with masked_weights(lenet, {"fc1": mask}):
        assert evaluate(lenet, calib)["acc"] == pytest.approx(summary["acc_ga"])
    assert_same_state(lenet, before)  # evolve_layer leaves the model alone


def test_layer_ga_runs_on_the_shared_optimizer(lenet, calib, monkeypatch):
    """The per-layer GA is the registry's "ga" driven through Optimizer.run on the layer's problem."""
    runs = []
    run = Optimizer.run

    def spy(self, on_generation, state=None):
        runs.append(self)
        return run(self, on_generation, state)

    monkeypatch.setattr(Optimizer, "run", spy)
    config = small(generations=3)
    outcome = evolve_layer(lenet, "fc2", calib, config, seed=0, progress=False)
    (optimizer,) = runs
    assert type(optimizer) is OPTIMIZERS.get("ga") and isinstance(optimizer.problem, LayerProblem)
    encoding = optimizer.encoding
    assert (encoding.n_real, encoding.n_discrete, encoding.choices, optimizer.bits) == (0, 84 * 120, 2, True)
    cfg = optimizer.config
    assert (cfg.population, cfg.generations, cfg.offspring, cfg.elite) == (12, 3, 10, config.elite)
    assert (cfg.mutpb, optimizer.indpb, cfg.cxpb, cfg.tournament) == (1.0, config.mutpb, config.cxpb, config.tournament)
    ones, magnitude = optimizer.seeds  # generation 0 starts with the all-ones and the magnitude mask
    assert ones.all() and 1 - magnitude.mean() == pytest.approx(1 - config.keep_prob, abs=1e-3)
    assert outcome.rows[0]["best_fitness"] >= config.w_acc * model_accuracy(lenet, calib)  # the all-ones seed
    assert outcome.summary["evaluations"] == len(optimizer.problem.records)


def test_layer_ga_state_resumes_exactly(lenet, calib):
    """Optimizer.to_state / from_state (through JSON) on bit genomes: the resumed run repeats the rest."""
    config = small(generations=4)

    def fresh():
        problem = LayerProblem(LayerEvaluator(lenet, "fc2", calib, config.chunk), config.keep_prob, config.w_acc,
                               config.w_sparsity)
        return problem, layer_optimizer(problem, config, seeds=[problem.encoding.full_genome()])

    problem, optimizer = fresh()
    states = {}
    random.seed(1)
    final = optimizer.run(lambda g, pop, _: states.setdefault(g, json.loads(json.dumps(optimizer.to_state(g, pop)))))
    assert all(isinstance(ind, BitIndividual) for ind in final)
    assert all(len(json.dumps(item["genome"])) < 3000 for item in states[2]["population"])  # packed 10080 bits
    _, resumed = fresh()
    random.seed(99)  # the state, not the global seed, drives the rest of the run
    again = resumed.run(lambda *_: None, state=states[2])
    assert [np.array(i, dtype=bool).tolist() for i in again] == [np.array(i, dtype=bool).tolist() for i in final]
    assert [i.fitness.values for i in again] == [i.fitness.values for i in final]


def test_deterministic_given_seed(lenet, calib):
    config = small(generations=4)
    a = evolve_layer(lenet, "conv2", calib, config, seed=3, progress=False)
    b = evolve_layer(lenet, "conv2", calib, config, seed=3, progress=False)
    c = evolve_layer(lenet, "conv2", calib, config, seed=4, progress=False)
    assert torch.equal(a.mask, b.mask) and without_time(a.rows) == without_time(b.rows)
    assert not torch.equal(a.mask, c.mask)


def test_layers_in_sequence_keep_earlier_masks_through_retraining(lenet, calib, digits):
    layers = ["conv2", "fc1", "fc2"]
    config = small(keep_prob=0.6, generations=5, retrain_epochs=1)
    seen = []

    def on_layer(result: LayerwiseResult) -> None:
        # after each layer (and its retrain) every mask found so far holds in the weights
        for name, mask in result.masks.items():
            weight = lenet.get_submodule(name).weight.detach()
            assert torch.all(weight[~mask] == 0), (name, len(result.masks))
        seen.append(list(result.masks))

    result = search_layers(lenet, layers, calib, config, seed=0, retrain=retrainer(digits), on_layer=on_layer,
                           progress=False)
    assert seen == [layers[:1], layers[:2], layers]
    assert [r["layer"] for r in result.layers] == layers
    plan = result.plan()
    for r in result.layers:
        mask = plan.masks[r["layer"]]
        assert r["sparsity"] == pytest.approx(1 - mask.float().mean().item())
        assert r["kept"] == int(mask.sum())
        assert int((lenet.get_submodule(r["layer"]).weight == 0).sum()) >= r["weights"] - r["kept"]
    pruned = sum(r["weights"] - r["kept"] for r in result.layers)
    assert plan.sparsity() == pytest.approx(pruned / sum(r["weights"] for r in result.layers))
    assert result.layers[-1]["sparsity_so_far"] == pytest.approx(plan.sparsity())
    assert plan.sparsity() > 0.3  # moderate sparsity ...
    assert result.layers[-1]["acc_after_layer"] == pytest.approx(model_accuracy(lenet, calib))
    test_acc = evaluate(lenet, make_loader(digits, "test", 256))["acc"]
    assert test_acc > 0.7  # ... and well above chance (0.1)
    assert all(r["retrain_seconds"] > 0 for r in result.layers)


def test_resume_after_a_layer_repeats_the_uninterrupted_run(trained, calib, digits):  # noqa: F811
    path = baseline_of(trained)
    config = small(generations=3, retrain_epochs=1)
    layers = ["conv2", "fc2"]
    full_model = load_model(path)[0]
    full = search_layers(full_model, layers, calib, config, 0, retrain=retrainer(digits, 4), progress=False)

    saved = {}

    class Crash(Exception):
        pass

    def crash_after_first(result: LayerwiseResult) -> None:
        saved["done"] = LayerwiseResult(dict(result.masks), list(result.layers), list(result.rows))
        saved["weights"] = copy.deepcopy(model.state_dict())
        raise Crash

    model = load_model(path)[0]
    with pytest.raises(Crash):
        search_layers(model, layers, calib, config, 0, retrain=retrainer(digits, 4), on_layer=crash_after_first,
                      progress=False)
    resumed_model = load_model(path)[0]
    resumed_model.load_state_dict(saved["weights"])
    resumed = search_layers(resumed_model, layers, calib, config, 0, retrain=retrainer(digits, 4),
                            done=saved["done"], progress=False)
    assert SparsePlan(resumed.masks).signature() == SparsePlan(full.masks).signature()
    assert without_time(resumed.rows) == without_time(full.rows)
    assert_same_state(resumed_model, full_model.state_dict())


def test_layer_selection_and_config_errors(lenet):
    x0 = torch.zeros(1, 1, 32, 32)
    assert forward_order(lenet, x0) == LENET_LAYERS
    assert resolve_layers(lenet, "all", x0) == LENET_LAYERS
    assert resolve_layers(lenet, "fc1", x0) == ["fc1"]
    assert resolve_layers(lenet, ["fc2", "conv1"], x0) == ["conv1", "fc2"]  # forward order
    with pytest.raises(GapruneError, match="no conv/linear layer named 'fc9'.*conv1, conv2"):
        resolve_layers(lenet, ["fc9"], x0)
    for bad, match in (({"population": 2}, "population"), ({"population": 4, "elite": 4}, "elite"), ({"keep_prob": 0}, "keep_prob"),
                       ({"mutpb": 1.5}, "mutpb"), ({"w_acc": 0, "w_sparsity": 0}, "w_acc"), ({"layers": []}, "layers"),
                       ({"retrain_steps": 0}, "retrain_steps"), ({"typo": 1}, "bad option.*valid options")):
        with pytest.raises(GapruneError, match=match):
            WeightMaskConfig.from_params(bad)


def test_resnet18_single_layer_ga_step_on_random_data():
    """CIFAR ResNet-18, untrained: one small GA on one layer inside a residual block and on the head."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, 32).eval()
    x0 = torch.zeros(1, 3, 32, 32)
    order = forward_order(model, x0)
    assert order[0] == "conv1" and order[-1] == "fc" and len(order) == 21
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))]
    config = WeightMaskConfig.from_params({"layers": "layer2.0.conv2", "population": 4, "generations": 1, "elite": 1,
                                           "chunk": 4})
    (layer,) = resolve_layers(model, config.layers, x0)
    outcome = evolve_layer(model, layer, data, config, seed=0, progress=False)
    weight = model.get_submodule(layer).weight
    assert outcome.mask.shape == weight.shape and len(outcome.rows) == 2
    assert outcome.summary["mode"] in LayerEvaluator.MODES and 0 <= outcome.summary["sparsity"] < 1
    # the batched head evaluation agrees with masked_weights on this residual network
    bits = np.random.default_rng(0).random((2, 5120)) < 0.5
    evaluator = LayerEvaluator(model, "fc", data, chunk=2)
    assert evaluator.mode == "expand"
    expected = []
    for row in bits:
        with masked_weights(model, {"fc": torch.from_numpy(row).reshape(10, 512)}):
            expected.append(model_accuracy(model, data))
    assert np.allclose(evaluator.accuracy(bits), expected)
    inner = LayerEvaluator(model, "layer1.0.conv1", data, chunk=2)
    assert inner.mode == "loop"  # the residual add needs the un-expanded batch; CPU: no stacking
    size = inner.size
    bits = np.random.default_rng(1).random((2, size)) < 0.5
    stacked = LayerEvaluator(model, "layer1.0.conv1", data, chunk=2, mode="stack").accuracy(bits)
    assert np.allclose(stacked, inner.accuracy(bits))


def test_search_py_weight_mask_end_to_end_and_resume(trained, tmp_path):  # noqa: F811
    out = [f"paths.checkpoints={trained / 'ck'}", f"paths.output_root={tmp_path}", "logger.mode=disabled"]
    small_args = ["searcher=layerwise_weight_mask", "searcher.params.layers=[conv2,fc1]", "searcher.params.population=8",
                  "searcher.params.generations=3"]
    proc = run_cli("search.py", *out, *small_args, "then_finetune=false")  # the resumed run below fine-tunes
    assert "layer-wise weight-mask search done: 2 layers" in proc.stdout
    run = sorted(p.parent for p in (tmp_path / "search").rglob(STATE))[0]
    for name in ("layers.json", "layers.csv", "layer_results.json", "weight_masks.json", "search_summary.json",
                 "layers.png", "masked_model.pt", STATE):
        assert (run / name).is_file(), name
    assert not (run / "finetune").exists()
    summary = json.loads((run / "search_summary.json").read_text())
    rows = json.loads((run / "layers.json").read_text())
    assert [(r["layer"], r["generation"]) for r in rows] == [(n, g) for n in ("conv2", "fc1") for g in range(4)]
    assert len((run / "layers.csv").read_text().splitlines()) == 1 + len(rows)
    plan = SparsePlan.from_json(json.loads((run / "weight_masks.json").read_text()))
    assert list(plan.masks) == ["conv2", "fc1"] == summary["layers"]
    assert summary["sparsity"] == pytest.approx(plan.sparsity()) and summary["sparsity"] > 0.1
    assert [r["sparsity"] for r in summary["per_layer"]] == pytest.approx(
        [1 - m.float().mean().item() for m in plan.masks.values()])
    assert summary["sparse_macs"] < summary["baseline_macs"] and summary["macs_reduction"] > 0
    assert summary["sparse_params"] == summary["baseline_params"] - sum(int((~m).sum()) for m in plan.masks.values())
    assert summary["val_acc"] > 0.5 and summary["test_acc"] > 0.5 and summary["calib_acc"] > 0.5
    model, meta, _ = load_model(run / "masked_model.pt", expect_model="lenet5")
    base = load_model(baseline_of(trained))[0]
    for name, mask in plan.masks.items():  # no retrain: exactly the baseline times the masks
        assert torch.equal(model.get_submodule(name).weight, base.get_submodule(name).weight * mask)
    assert SparsePlan.from_json(meta["sparse"]["plan"]).signature() == plan.signature()
    assert meta["sparse"]["macs"] == summary["sparse_macs"] and meta["test_acc"] == summary["test_acc"]

    # resume: rewind the state to "conv2 done" (weights: baseline with conv2 masked) and continue
    state = torch.load(run / STATE, weights_only=True)
    final_masks = json.loads((run / "weight_masks.json").read_text())
    apply_masks_permanently(base, {"conv2": state["masks"]["conv2"]})
    torch.save(with_digest({**state, "masks": {"conv2": state["masks"]["conv2"]}, "results": state["results"][:1],
                            "rows": [r for r in state["rows"] if r["layer"] == "conv2"], "state_dict": base.state_dict()}),
               run / STATE)
    proc = run_cli("search.py", *out, *small_args, f"resume={run}")
    assert "resuming layer-wise weight-mask search" in proc.stdout and "1/2 layers done" in proc.stdout
    assert "layer conv2:" not in proc.stdout and "layer fc1:" in proc.stdout  # finished layers are skipped
    assert json.loads((run / "weight_masks.json").read_text()) == final_masks
    assert without_time(json.loads((run / "layers.json").read_text())) == without_time(rows)
    (row,) = json.loads((run / "finetune" / "results.json").read_text())["results"]  # then_finetune: masks kept
    assert row["pick"] == "weight_mask" and row["sparsity"] == pytest.approx(summary["sparsity"])
    resumed = json.loads((run / "search_summary.json").read_text())  # the resumed search counts both layers
    assert resumed["compute_macs"] == summary["compute_macs"] > 0
    assert row["compute_macs_by_phase"]["proxy"] == summary["compute_macs_by_phase"]["proxy"]  # the search's, then
    assert row["compute_macs"] == summary["compute_macs"] + row["compute_macs_by_phase"]["finetune"]  # its fine-tune


def test_search_py_single_layer_with_retrain(trained, tmp_path):  # noqa: F811
    out = [f"paths.checkpoints={trained / 'ck'}", f"paths.output_root={tmp_path}", "logger.mode=disabled"]
    run_cli("search.py", *out, "searcher=layerwise_weight_mask", "searcher.params.layers=fc2", "searcher.params.population=6",
            "searcher.params.generations=2", "searcher.params.retrain_epochs=1", "searcher.params.retrain_steps=5",
            "searcher.params.final_eval=false", "then_finetune=false")
    run = sorted(p.parent for p in (tmp_path / "search").rglob(STATE))[0]
    summary = json.loads((run / "search_summary.json").read_text())
    assert summary["layers"] == ["fc2"] and summary["val_acc"] is None and summary["per_layer"][0]["retrain_seconds"] > 0
    plan = SparsePlan.from_json(json.loads((run / "weight_masks.json").read_text()))
    model = load_model(run / "masked_model.pt")[0]
    base = load_model(baseline_of(trained))[0]
    mask = plan.masks["fc2"]
    assert torch.all(model.fc2.weight[~mask] == 0)  # pruned stays pruned through the retrain
    assert not torch.equal(model.fc1.weight, base.fc1.weight)  # ... which did train the network
    assert summary["network_sparsity"] == pytest.approx(int((~mask).sum()) / sum(
        model.get_submodule(n).weight.numel() for n in LENET_LAYERS))
    # compute, recounted: every mask scored on the calibration images, then 5 retrain steps of 64 images
    # (forward + backward) and the retrain's validation on the calibration images, all through the dense network
    (layer,) = json.loads((run / "layer_results.json").read_text())
    dense, calib = summary["baseline_macs"], summary["calib_samples"]
    assert layer["retrain_train_images"] == 5 * 64 and layer["retrain_eval_images"] == calib
    assert summary["compute_macs_by_phase"]["proxy"] == layer["evaluations"] * calib * dense
    assert summary["compute_macs_by_phase"]["retrain"] == 5 * 64 * 3 * dense + calib * dense
    assert summary["compute_macs"] == summary["compute_macs_by_phase"]["proxy"] + summary["compute_macs_by_phase"]["retrain"]
