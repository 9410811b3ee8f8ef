"""One-shot baseline pruners (SPEC "Baselines"): targets reached, expected per-layer patterns,
rate-distortion allocation, masks kept through fine-tuning, the scripts/oneshot.py entry."""
from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gaprune.data.datasets import load_dataset
from gaprune.engine.checkpoint import example_input, load_model, read_checkpoint
from gaprune.models import build_model
from gaprune.oneshot import OneshotContext, build_pruner
from gaprune.oneshot.rate_distortion import allocate, layer_distortion, logits, measure_curves
from gaprune.oneshot.structured import slimming_scores, taylor_mass_kept
from gaprune.oneshot.unstructured import apportion, keep_budget, lamp_scores
from gaprune.pruning.masking import sparse_layers
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.pruning.units import discover_units
from gaprune.utils.errors import GapruneError
from helpers import REPO, baseline_of, run_cli

MACS_TARGET, SPARSITY_TARGET = 0.6, 0.9


@pytest.fixture(scope="module")
def lenet(trained):  # noqa: F811
    model, meta, _ = load_model(baseline_of(trained))
    x0 = example_input(meta)
    units = discover_units(model, x0, include_linear=True)
    return OneshotContext(model, units, x0, load_dataset("digits"))


def weights(model):
    return {n: model.get_submodule(n).weight.detach() for n in sparse_layers(model)}


# --- structured ---------------------------------------------------------------------------------

STRUCTURED = [("global_taylor", {"rule": "min"}), ("global_taylor", {"rule": "median"}),
              ("global_taylor", {"rule": "max"}), ("uniform_l1", {})]


@pytest.mark.parametrize("name,params", STRUCTURED, ids=["taylor-min", "taylor-median", "taylor-max", "uniform_l1"])
def test_structured_methods_reach_the_macs_target_and_prune_physically(lenet, name, params):
    result = build_pruner(name, target_macs_reduction=MACS_TARGET, **params).run(lenet)
    plan = result.plan
    assert isinstance(plan, Plan) and min(plan.keep_counts()) >= 1
    reduction = result.info["macs_reduction"]
    # LeNet-5 is coarse (one conv1 channel is ~10% of the MACs): reached, with minimal overshoot
    assert MACS_TARGET <= reduction < MACS_TARGET + 0.12
    if "one_fewer_removal_reduction" in result.info:
        assert result.info["one_fewer_removal_reduction"] < MACS_TARGET
    pruned = prune_model(lenet.model, lenet.units, plan, lenet.example_input)
    assert pruned(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    cost = lenet.cost_model()
    assert count_macs_params(pruned, lenet.example_input) == cost.cost(plan)
    assert 1 - count_macs_params(pruned, lenet.example_input)[0] / cost.base_macs == pytest.approx(reduction)


def test_global_taylor_rules_min_median_max(lenet):
    plans = {rule: build_pruner("global_taylor", target_macs_reduction=MACS_TARGET, rule=rule).run(lenet).plan
             for rule in ("min", "median", "max")}
    taylor = lenet.importance("taylor", 8, 128)
    mass = {rule: taylor_mass_kept(plan, taylor) for rule, plan in plans.items()}
    assert mass["min"] > mass["max"] + 0.2 and mass["min"] >= mass["median"] > mass["max"]
    assert plans["median"].keep_counts() == plans["min"].keep_counts()  # counts chosen globally, as min
    for unit in lenet.units:  # median keeps both tails of every unit it prunes
        keep, score = plans["median"].keep[unit.name], taylor[unit.name]
        if 2 <= len(keep) < unit.channels:
            assert int(np.argmax(score)) in keep and int(np.argmin(score)) in keep


def test_slimming_thresholds_bn_gammas_globally(lenet):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, 32).eval()
    x0 = torch.zeros(1, 3, 32, 32)
    units = discover_units(model, x0)
    with torch.no_grad():  # a "sparsity-trained" look: about half the gammas near zero
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.copy_(torch.rand(bn.num_features) * (torch.rand(bn.num_features) < 0.5) + 1e-4)
    ctx = OneshotContext(model, units, x0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sparse gammas: no warning
        result = build_pruner("slimming", target_macs_reduction=0.5).run(ctx)
    assert 0.5 <= result.info["macs_reduction"] < 0.51 and result.info["one_fewer_removal_reduction"] < 0.5
    pruned = prune_model(model, units, result.plan, x0)
    assert count_macs_params(pruned, x0) == ctx.cost_model().cost(result.plan)
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    threshold = result.info["threshold"]
    for unit in units:
        bns = [model.get_submodule(n) for n in unit.out_modules if isinstance(model.get_submodule(n), torch.nn.BatchNorm2d)]
        gamma = torch.stack([bn.weight.abs() for bn in bns]).mean(0)
        keep = set(result.plan.keep[unit.name])
        removed = [c for c in range(unit.channels) if c not in keep]
        assert all(gamma[c] <= threshold for c in removed)
        if len(keep) > 1:  # one global threshold (a unit's last channel is always kept)
            assert all(gamma[c] >= threshold for c in keep)
    plain_resnet = OneshotContext(build_model("resnet20", 10, 3, 32).eval(), units, x0)
    with pytest.warns(UserWarning, match="not sparse.*trainer.bn_sparsity"):
        build_pruner("slimming", target_macs_reduction=0.5).run(plain_resnet)
    with pytest.raises(GapruneError, match="no BatchNorm"):
        build_pruner("slimming", target_macs_reduction=0.5).run(lenet)


def test_slimming_reads_only_each_units_channels_of_a_concatenating_batchnorm():
    """DenseNet: a BN reading a concatenation is wider than any one unit; a layer's score is the
    mean |gamma| over its own positions there (offsets by hand below), and the plan prunes exactly."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=10).eval()
    x0 = torch.zeros(1, 3, 32, 32)
    units = discover_units(model, x0)
    with torch.no_grad():  # gamma = BN position + 1 (x 1e-3 for half of them: sparse enough)
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.copy_((torch.arange(bn.num_features) + 1.0) * torch.where(torch.arange(bn.num_features) % 2 == 0, 1.0, 1e-3))
    ctx = OneshotContext(model, units, x0)
    scores = slimming_scores(model, units)
    result = build_pruner("slimming", target_macs_reduction=0.3).run(ctx)
    gamma = lambda pos: (pos + 1.0) * np.where(pos % 2 == 0, 1.0, 1e-3)  # noqa: E731
    c = np.arange(4)
    # block 1, layer 1's 4 channels: positions 8..11 of denselayer2.norm1 and of transition1.norm
    np.testing.assert_allclose(scores["features.denseblock1.denselayer1.conv2"], (gamma(8 + c) + gamma(8 + c)) / 2)
    # block 1, layer 2: positions 12..15 of transition1.norm only
    np.testing.assert_allclose(scores["features.denseblock1.denselayer2.conv2"], gamma(12 + c))
    assert result.info["macs_reduction"] >= 0.3
    assert count_macs_params(prune_model(model, units, result.plan, x0), x0) == ctx.cost_model().cost(result.plan)


# --- unstructured -------------------------------------------------------------------------------

UNSTRUCTURED = [("global_magnitude", {}), ("uniform", {}), ("uniform", {"keep_first_dense": True}), ("erk", {}),
                ("lamp", {}), ("rate_distortion", {"grid": 12})]


@pytest.fixture(scope="module")
def sparse_plans(lenet):
    return {f"{name}{'-dense1' if params.get('keep_first_dense') else ''}":
            build_pruner(name, target_sparsity=SPARSITY_TARGET, **params).run(lenet).plan for name, params in UNSTRUCTURED}


def test_unstructured_methods_hit_the_target_sparsity(lenet, sparse_plans):
    sizes = {n: w.numel() for n, w in weights(lenet.model).items()}
    total = sum(sizes.values())
    for name, plan in sparse_plans.items():
        assert isinstance(plan, SparsePlan)
        assert list(plan.masks) == list(sizes) and all(plan.masks[n].numel() == s for n, s in sizes.items())
        assert sum(int(m.sum()) for m in plan.masks.values()) == keep_budget(total, SPARSITY_TARGET), name
        assert plan.sparsity() == pytest.approx(SPARSITY_TARGET, abs=1 / total), name
        for layer, mask in plan.masks.items():  # inside a layer, the largest |w| are kept
            w = lenet.model.get_submodule(layer).weight.detach().abs()
            if mask.any() and not mask.all():
                assert w[mask].min() >= w[~mask].max(), (name, layer)


def test_layer_patterns_uniform_erk_lamp_global(lenet, sparse_plans):
    w = weights(lenet.model)
    sizes = np.array([x.numel() for x in w.values()])
    dens = {name: np.array(plan.densities()) for name, plan in sparse_plans.items()}
    assert np.all(np.abs(dens["uniform"] - 0.1) <= 1 / sizes)  # equal per layer, up to rounding
    first = dens["uniform-dense1"]
    assert first[0] == 1.0 and np.ptp(first[1:]) <= 2 / sizes[1:].min()  # first conv dense, the rest equal
    raw = np.array([sum(x.shape) / x.numel() for x in w.values()])  # ERK: sum of dims / product
    assert np.allclose(dens["erk"] / raw, (dens["erk"] / raw).mean(), rtol=0.02)  # density proportional to it
    assert dens["erk"][0] > 5 * dens["erk"][2]  # conv1 (150 weights) much denser than fc1 (48000)
    capped = np.array(build_pruner("erk", target_sparsity=0.8).run(lenet).plan.densities())
    assert capped[0] == capped[-1] == 1.0  # conv1 and the classifier would pass 1: dense, excess redistributed
    assert np.allclose(capped[1:-1] / raw[1:-1], (capped[1:-1] / raw[1:-1]).mean(), rtol=0.02)
    assert (capped * sizes).sum() == pytest.approx(0.2 * sizes.sum(), abs=1)
    for layer, mask in sparse_plans["lamp"].masks.items():  # LAMP: every layer keeps its largest weight
        assert mask.flatten()[w[layer].abs().flatten().argmax()]
    torch.testing.assert_close(lamp_scores(torch.tensor([1.0, -3.0, 2.0])),
                               torch.tensor([1 / 14, 1.0, 4 / 13], dtype=torch.float64))
    glob = sparse_plans["global_magnitude"].masks  # one global |w| threshold
    kept_min = min(w[n].abs()[m].min() for n, m in glob.items() if m.any())
    pruned_max = max(w[n].abs()[~m].max() for n, m in glob.items() if (~m).any())
    assert kept_min >= pruned_max


# --- rate-distortion ----------------------------------------------------------------------------

def test_rate_distortion_dp_beats_uniform_at_the_same_budget(lenet):
    model = lenet.model
    calib = [x for x, _ in lenet.batches("val", 256, limit=256)]
    masks = {n: torch.ones_like(x, dtype=torch.bool) for n, x in weights(model).items()}
    sizes = np.array([m.numel() for m in masks.values()])
    keep = keep_budget(int(sizes.sum()), SPARSITY_TARGET)
    curves = measure_curves(model, masks, calib, grid=16)
    dp, predicted = allocate(list(curves.values()), sizes, keep, int(sizes.sum()))
    uniform = apportion((1 - SPARSITY_TARGET) * sizes, sizes, keep)
    assert dp.sum() == uniform.sum() == keep
    reference = logits(model, calib)
    measured = {name: sum(layer_distortion(model, layer, int(k), calib, reference) for layer, k in zip(masks, counts))
                for name, counts in (("dp", dp), ("uniform", uniform))}
    assert measured["dp"] < measured["uniform"] / 2, measured


def test_dp_allocation_is_optimal_on_small_curves():
    rng = np.random.default_rng(0)
    sizes = [6, 9, 12]
    curves = []
    for n in sizes:
        ks = np.arange(1, n + 1)
        curves.append((ks, np.sort(rng.random(n) * 10)[::-1] * (ks < n)))  # decreasing, 0 when dense
    for keep in (3, 10, 17, 24):
        counts, predicted = allocate(curves, sizes, keep, sum(sizes), bins=sum(sizes))  # 1 weight per bin
        brute = min(sum(c[1][k - 1] for c, k in zip(curves, combo))
                    for combo in itertools.product(*(range(1, n + 1) for n in sizes)) if sum(combo) <= keep)
        assert counts.sum() == keep and predicted == pytest.approx(brute)


def test_iterative_schedule_reaches_one_minus_one_minus_a_to_the_k(lenet):
    result = build_pruner("rate_distortion", target_sparsity=0.5, grid=8, schedule_steps=3, step_amount=0.5).run(lenet)
    assert result.plan.sparsity() == pytest.approx(1 - 0.5 ** 3, abs=1e-4)
    steps = result.info["steps"]
    assert [s["target_sparsity"] for s in steps] == pytest.approx([0.5, 0.75, 0.875])
    assert [s["sparsity"] for s in steps] == pytest.approx([0.5, 0.75, 0.875], abs=1e-4)
    for a, b in zip(steps, steps[1:]):  # pruned weights stay pruned
        assert all(b["densities"][n] <= a["densities"][n] for n in a["densities"])
    default = build_pruner("rate_distortion", target_sparsity=0.9, schedule_steps=2)
    assert default.schedule()[-1] == pytest.approx(0.9)  # a chosen so step k lands on the target


# --- shared fine-tune routine with masks, checkpoints ---------------------------------------------

def finetune_cfg(epochs: int = 1):
    return OmegaConf.create({
        "seed": 0, "dataset": {"augment": True}, "logger": {"mode": "disabled", "project": "gaprune", "group": None,
                                                            "tags": []},
        "finetune": {"epochs": epochs, "batch_size": 64, "eval_batch_size": 512, "lr": 0.01, "momentum": 0.9,
                     "weight_decay": 5e-4, "nesterov": True, "kd": True, "kd_temperature": 4.0, "kd_alpha": 0.9}})


def test_sparse_finetune_keeps_masks_and_checkpoint_round_trips(lenet, sparse_plans, trained, tmp_path):  # noqa: F811
    from gaprune.pipeline.finetune import open_job

    teacher, meta, _ = load_model(baseline_of(trained))
    job = open_job(finetune_cfg(), tmp_path, teacher, meta, lenet.bundle, torch.device("cpu"), "oneshot", "lamp")
    plan = sparse_plans["lamp"]
    row = job.run(plan, "lamp")
    assert row["sparsity"] == pytest.approx(SPARSITY_TARGET, abs=1e-4) and row["test_acc"] > 0.8
    assert row["params_reduction"] > 0.85 and row["macs"] == row["predicted_macs"] < meta["macs"]
    raw = read_checkpoint(tmp_path / "pruned-lamp-lamp.pt")["state_dict"]  # as saved, masks not re-applied
    for name, mask in plan.masks.items():
        saved = raw[f"{name}.weight"]
        assert torch.all(saved[~mask] == 0) and torch.count_nonzero(saved[mask]) > 0.9 * int(mask.sum())
    model, ck_meta, loaded = load_model(tmp_path / "pruned-lamp-lamp.pt")
    assert isinstance(loaded, SparsePlan) and loaded.signature() == plan.signature()
    assert ck_meta["sparsity"] == pytest.approx(plan.sparsity())
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
    table = job.close()
    assert "| sparsity |" in table and "| lamp | lamp | - |" in table and "90.0% |" in table

    # the iterative schedule's short fine-tune between steps keeps the masks too
    result = build_pruner("rate_distortion", target_sparsity=0.75, grid=6, schedule_steps=2,
                          step_finetune_epochs=1).run(
        OneshotContext(job.teacher, lenet.units, lenet.example_input, lenet.bundle, finetune=job.short_finetune))
    assert result.weights is not None and result.plan.sparsity() == pytest.approx(0.75, abs=1e-4)
    start = {k: v for k, v in result.weights.items() if k.endswith(".weight") and k[:-7] in result.plan.masks}
    assert all(torch.all(v[~result.plan.masks[k[:-7]]] == 0) for k, v in start.items())
    assert not torch.equal(result.weights["fc1.weight"], teacher.fc1.weight.detach() * result.plan.masks["fc1"])


# --- entry point --------------------------------------------------------------------------------

def oneshot_cli(trained_root: Path, out: Path, *overrides: str, check: bool = True):  # noqa: F811
    return run_cli("scripts/oneshot.py", f"paths.checkpoints={trained_root / 'ck'}", f"paths.output_root={out}",
                   "logger.mode=disabled", "finetune.epochs=1", *overrides, check=check)


def test_entry_point_global_taylor_and_lamp(trained, tmp_path):  # noqa: F811
    oneshot_cli(trained, tmp_path / "gt", "oneshot=global_taylor", "target_macs_reduction=0.6")
    run = next((tmp_path / "gt" / "oneshot").iterdir())
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert config.oneshot.params.importance == "taylor" and config.importance.name == "l1"  # global *Taylor*
    table = (run / "results.md").read_text()
    assert table.splitlines()[0].startswith("| plan | pick | search proxy | val acc | test acc | Δ test acc | MACs | "
                                            "MACs red. | params | params red. | compute | latency b1 | speedup |")
    assert "| min | global_taylor | - |" in table
    row = json.loads((run / "results.json").read_text())["results"][0]
    assert row["macs_reduction"] >= 0.6 and row["macs"] == row["predicted_macs"] and row["test_acc"] > 0.8
    plan = Plan.from_json(json.loads((run / "plan.json").read_text()))
    pruned, meta, loaded = load_model(run / "pruned-global_taylor-min.pt")
    assert loaded == plan and count_macs_params(pruned, example_input(meta))[0] == row["macs"]

    proc = oneshot_cli(trained, tmp_path / "lamp", "oneshot=lamp", "target_sparsity=0.9")
    run = next((tmp_path / "lamp" / "oneshot").iterdir())
    assert "| lamp | lamp | - |" in (run / "results.md").read_text() and "| sparsity |" in proc.stdout
    assert (run / "results.csv").read_text().splitlines()[0].split(",")[:12] == [
        "plan_id", "pick", "search_proxy", "val_acc_before_finetune", "val_acc", "test_acc", "test_acc_delta", "macs",
        "params", "macs_reduction", "params_reduction", "sparsity"]
    plan = SparsePlan.from_json(json.loads((run / "plan.json").read_text()))
    assert plan.sparsity() == pytest.approx(0.9, abs=1e-4)
    first = json.loads((run / "results.json").read_text())
    oneshot_cli(trained, tmp_path / "lamp", "oneshot=lamp", f"resume={run}")  # finished: nothing re-done
    assert json.loads((run / "results.json").read_text()) == first


@pytest.mark.parametrize("overrides,expected", [
    (["oneshot.name=nope"], "unknown one-shot pruner 'nope'; choose one of: erk, global_magnitude"),
    (["target_macs_reduction=1.5"], "target_macs_reduction=1.5 is out of range"),
    (["oneshot=lamp", "target_sparsity=0"], "target_sparsity=0 is out of range"),
    (["oneshot=global_taylor", "oneshot.params.rule=mean"], "oneshot.params.rule='mean' is not one of: min, median, max"),
    (["oneshot=uniform", "+oneshot.params.bogus=1"], "oneshot=uniform has no option(s) bogus; valid: keep_first_dense"),
])
def test_bad_options_fail_before_any_work(overrides, expected, tmp_path):
    from hydra import compose, initialize_config_dir

    from gaprune.pipeline.oneshot import run_oneshot

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("oneshot", overrides=[f"paths.output_root={tmp_path}", f"paths.checkpoints={tmp_path}",
                                             *overrides])
    with pytest.raises(GapruneError) as err:
        run_oneshot(cfg)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_slimming_without_batchnorm_is_one_line_and_writes_nothing(tmp_path):
    proc = run_cli("scripts/oneshot.py", "oneshot=slimming", f"paths.checkpoints={tmp_path / 'ck'}",
                   f"paths.output_root={tmp_path / 'out'}", "logger.mode=disabled", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gaprune: error:")]
    assert len(errors) == 1 and "oneshot=slimming ranks channels by BatchNorm |gamma| but LeNet5 has no" in errors[0]
    assert not (tmp_path / "ck").exists()  # refused before a baseline was trained
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"]
