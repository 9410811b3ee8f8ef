"""Prunable units, physical pruning, analytic cost and channel masking.

The analytic cost and the channel masker are only useful if they agree exactly with what
torch-pruning does to a real copy of the network; these tests compare them on random plans.
"""
from __future__ import annotations

import copy
import functools
import random
import warnings

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from gaprune.models import build_model, output_layer
from gaprune.pruning.cost import CostModel
from gaprune.pruning.masking import ChannelMasker
from gaprune.pruning.physical import prune_model
from gaprune.pruning.plan import Plan
from gaprune.pruning.units import discover_units, feature_modules
from gaprune.search.encodings import build_encoding
from gaprune.utils.errors import GapruneError

# name -> (model kwargs, input channels, include_linear)
SETUPS = {
    "lenet5": ({}, 1, True),
    "lenet5-conv": ({}, 1, False),
    "vgg16": ({}, 3, False),
    "vgg16-paper": ({"head": "paper"}, 3, True),
    "resnet20": ({}, 3, False),
    "resnet56": ({}, 3, False),
}


def _arch(key: str) -> str:
    return key.split("-")[0]


@functools.lru_cache(maxsize=None)
def _setup(key: str):
    """(model, units, example input) built once per module; tests must not modify the model."""
    kwargs, channels, include_linear = SETUPS[key]
    torch.manual_seed(0)
    model = build_model(_arch(key), 10, channels, 32, **kwargs).eval()
    x0 = torch.zeros(1, channels, 32, 32)
    return model, discover_units(model, x0, include_linear=include_linear), x0


def _random_importance(units, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u.name: rng.random(u.channels) for u in units}


def _random_plans(units, n: int, seed: int, r_min: float = 0.1, extreme: bool = True) -> list[Plan]:
    """n random ratio/strategy plans, plus the most extreme one (every unit at r_min) if asked."""
    enc = build_encoding("ratio_strategy", units, _random_importance(units, seed), r_min=r_min)
    rng = random.Random(seed)
    plans = [enc.decode(enc.random_genome(rng)) for _ in range(n)]
    if extreme:
        plans.append(enc.decode([r_min] * enc.n_real + [1.0] * enc.n_discrete))
    return plans


def _randomise_bn(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
            module.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=gen) * 0.3)


# --- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,expected", [("vgg16", 13), ("resnet56", 30), ("resnet20", 12), ("lenet5", 4),
                                          ("lenet5-conv", 2), ("vgg16-paper", 15)])
def test_unit_count(key: str, expected: int) -> None:
    _, units, _ = _setup(key)
    assert len(units) == expected
    assert len({u.name for u in units}) == expected


def test_vgg16_units_are_the_convs_in_order() -> None:
    model, units, _ = _setup("vgg16")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [u.channels for u in units] == [c.out_channels for c in convs]
    assert [u.name for u in units] == [f"convs.{i}" for i in range(13)]
    for i, unit in enumerate(units):
        assert unit.out_modules == [f"convs.{i}", f"bns.{i}"]
        assert feature_modules(model, unit) == [f"bns.{i}"]


def test_resnet_stage_unit_couples_stem_block_outputs_and_shortcut() -> None:
    model, units, _ = _setup("resnet20")
    by_root = {u.name: u for u in units}
    stage1 = by_root["conv1"]
    assert stage1.channels == 16
    assert set(stage1.out_modules) == {"conv1", "bn1"} | {f"layer1.{b}.{k}" for b in range(3) for k in ("conv2", "bn2")}
    # stages 2 and 3: every block output conv/BN and the projection shortcut are one unit
    for stage, width in ((2, 32), (3, 64)):
        unit = next(u for u in units if f"layer{stage}.0.shortcut.0" in u.out_modules)
        expected = {f"layer{stage}.0.shortcut.0", f"layer{stage}.0.shortcut.1"} | {
            f"layer{stage}.{b}.{k}" for b in range(3) for k in ("conv2", "bn2")}
        assert set(unit.out_modules) == expected
        assert unit.channels == width
    # inner units: one block's first conv + BN, consumed by that block's second conv only
    inner = [u for u in units if u.name.endswith(".conv1")]
    assert len(inner) == 9
    for unit in inner:
        block = unit.name[: -len(".conv1")]
        assert unit.out_modules == [f"{block}.conv1", f"{block}.bn1"]
        assert unit.in_modules == {f"{block}.conv2": 1}
    # every out layer belongs to exactly one unit
    outs = [name for u in units for name in u.out_modules]
    assert len(outs) == len(set(outs))
    # the last stage feeds the classifier, which is an input (never an output) of the unit
    assert "fc" in by_root["layer3.0.conv2"].in_modules


@pytest.mark.parametrize("key", ["lenet5", "vgg16-paper", "resnet20"])
def test_classifier_output_is_never_a_unit_output(key: str) -> None:
    model, units, _ = _setup(key)
    classifier = output_layer(model)
    name = next(n for n, m in model.named_modules() if m is classifier)
    assert all(name not in u.out_modules and u.name != name for u in units)


def test_lenet5_linear_units_and_flatten_repeat() -> None:
    _, units, _ = _setup("lenet5")
    assert [(u.name, u.channels) for u in units] == [("conv1", 6), ("conv2", 16), ("fc1", 120), ("fc2", 84)]
    conv2 = units[1]
    assert conv2.in_modules == {"fc1": 25}  # 16 channels x 5x5 positions feed fc1


def test_model_without_conv_units_raises() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(GapruneError, match="no prunable"):
        discover_units(model, torch.zeros(1, 4))


# --- physical pruning ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["resnet20", "lenet5"])
def test_prune_model_follows_plan(key: str) -> None:
    model, units, x0 = _setup(key)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _random_plans(units, 1, seed=3)[0]
    pruned = prune_model(model, units, plan, x0)
    counts = dict(zip([u.name for u in units], plan.keep_counts()))
    assert any(counts[u.name] < u.channels for u in units)
    for unit in units:
        keep = counts[unit.name]
        for name in unit.out_modules:
            layer = pruned.get_submodule(name)
            width = {nn.Conv2d: "out_channels", nn.Linear: "out_features", nn.BatchNorm2d: "num_features"}[type(layer)]
            assert getattr(layer, width) == keep, name
        for name, repeat in unit.in_modules.items():
            layer = pruned.get_submodule(name)
            width = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
            assert width == keep * repeat, name
    x = torch.randn(3, *x0.shape[1:])
    with torch.no_grad():
        assert pruned(x).shape == (3, 10)
    base_macs, base_params = tp.utils.count_ops_and_params(model, x0)
    macs, params = tp.utils.count_ops_and_params(pruned, x0)
    assert macs < base_macs and params < base_params
    # the baseline itself is untouched (prune_model works on a copy)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prune_model_keeps_the_planned_channels() -> None:
    """The kept filters are exactly the plan's indices, in order."""
    model, units, x0 = _setup("lenet5-conv")
    plan = Plan(keep={"conv1": (0, 2, 5), "conv2": tuple(range(1, 16, 3))},
                channels={"conv1": 6, "conv2": 16})
    pruned = prune_model(model, units, plan, x0)
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[[0, 2, 5]])
    assert torch.equal(pruned.conv2.weight, model.conv2.weight[list(range(1, 16, 3))][:, [0, 2, 5]])


def test_prune_model_rejects_plan_of_another_model() -> None:
    model, units, x0 = _setup("lenet5-conv")
    _, other_units, _ = _setup("resnet20")
    other = _random_plans(other_units, 1, seed=0)[0]
    with pytest.raises(GapruneError, match="another model"):
        prune_model(model, units, other, x0)
    wrong_width = Plan(keep={"conv1": (0, 1), "conv2": (0, 1)}, channels={"conv1": 8, "conv2": 16})
    with pytest.raises(GapruneError, match="conv1"):
        prune_model(model, units, wrong_width, x0)


def test_plan_validation() -> None:
    with pytest.raises(GapruneError, match="every channel"):
        Plan(keep={"a": ()}, channels={"a": 4}).validate()
    with pytest.raises(GapruneError, match="outside"):
        Plan(keep={"a": (0, 4)}, channels={"a": 4}).validate()
    with pytest.raises(GapruneError, match="outside"):
        Plan(keep={"a": (1, 1)}, channels={"a": 4}).validate()
    with pytest.raises(GapruneError, match="malformed"):
        Plan.from_json({"units": [{"name": "a"}]})
    plan = Plan(keep={"a": (0, 3), "b": (1,)}, channels={"a": 4, "b": 2}, strategies={"a": "min", "b": "median"})
    assert Plan.from_json(plan.to_json()) == plan


# --- analytic cost vs torch-pruning ------------------------------------------------------------------


@pytest.mark.parametrize("key,n_plans,extreme", [("lenet5", 4, True), ("lenet5-conv", 2, True), ("vgg16", 2, True),
                                                 ("vgg16-paper", 2, True), ("resnet20", 3, True),
                                                 ("resnet56", 2, True)])
def test_analytic_cost_equals_torch_pruning_count(key: str, n_plans: int, extreme: bool) -> None:
    model, units, x0 = _setup(key)
    cost = CostModel(model, units, x0)
    base = tp.utils.count_ops_and_params(model, x0)
    assert (cost.base_macs, cost.base_params) == (int(base[0]), int(base[1]))
    full = Plan(keep={u.name: tuple(range(u.channels)) for u in units}, channels={u.name: u.channels for u in units})
    assert cost.cost(full) == (cost.base_macs, cost.base_params)
    for plan in _random_plans(units, n_plans, seed=11, r_min=0.05, extreme=extreme):
        macs, params = tp.utils.count_ops_and_params(prune_model(model, units, plan, x0), x0)
        assert cost.cost(plan) == (int(macs), int(params))
        assert macs < cost.base_macs
    assert not cost.exact


@pytest.mark.parametrize("key", ["lenet5", "resnet20"])
def test_verify_agrees_on_supported_models(key: str) -> None:
    model, units, x0 = _setup(key)
    cost = CostModel(model, units, x0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cost.verify(_random_plans(units, 1, seed=5, extreme=False)) is True
    assert not cost.exact


def test_verify_falls_back_to_exact_counting_on_mismatch() -> None:
    model, units, x0 = _setup("lenet5")
    cost = CostModel(model, units, x0)
    cost._full_macs += 7  # simulate an architecture the analytic count gets wrong
    plan = _random_plans(units, 1, seed=2)[0]
    with pytest.warns(UserWarning, match="exact"):
        assert cost.verify([plan]) is False
    assert cost.exact
    macs, params = tp.utils.count_ops_and_params(prune_model(model, units, plan, x0), x0)
    assert cost.cost(plan) == (int(macs), int(params))


# --- channel masking == physical pruning ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["resnet20", "lenet5"])
def test_masked_population_equals_physically_pruned_models(key: str) -> None:
    kwargs, channels, include_linear = SETUPS[key]
    torch.manual_seed(1)
    model = build_model(_arch(key), 10, channels, 32, **kwargs).eval()
    _randomise_bn(model, seed=2)
    x0 = torch.zeros(1, channels, 32, 32)
    units = discover_units(model, x0, include_linear=include_linear)
    plans = _random_plans(units, 2, seed=7)  # 2 random + the extreme one = population of 3
    x = torch.randn(4, channels, 32, 32)
    with torch.no_grad():
        reference = model(x)
    masker = ChannelMasker(model, units)
    masker.set_plans(plans)
    with torch.no_grad():
        masked = model(x.repeat(len(plans), 1, 1, 1)).reshape(len(plans), x.shape[0], -1)
    masker.set_plans(None)
    scale = reference.abs().max().item()
    for row, plan in enumerate(plans):
        pruned = prune_model(model, units, plan, x0)  # dependency tracing needs autograd on
        with torch.no_grad():
            physical = pruned(x)
        torch.testing.assert_close(masked[row], physical, atol=1e-4 * max(1.0, scale), rtol=1e-4)
        # non-trivial: the pruned network computes something else than the baseline
        assert (physical - reference).abs().max().item() > 1e-3 * scale
    with torch.no_grad():  # masks off: the baseline again
        torch.testing.assert_close(model(x), reference)
    masker.remove()
    masker.set_plans(plans)  # hooks removed: masks have no effect any more
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cost_model_of_a_model_on_the_gpu() -> None:
    """search.py builds the cost model from the model on its device and a CPU example input."""
    model, units, x0 = _setup("resnet20")
    on_gpu = copy.deepcopy(model).cuda()
    cost = CostModel(on_gpu, units, x0)
    reference = CostModel(model, units, x0)
    assert (cost.base_macs, cost.base_params) == (reference.base_macs, reference.base_params)
    plan = _random_plans(units, 1, seed=4, extreme=False)[0]
    assert cost.cost(plan) == reference.cost(plan)
    assert cost.verify([plan]) is True


@pytest.mark.parametrize("key", ["lenet5", "vgg16-paper", "resnet20"])
def test_sliced_state_runs_the_physically_pruned_network(key: str) -> None:
    """functional_call with sliced tensors == the torch-pruning pruned model, no copy needed."""
    from torch.func import functional_call

    from gaprune.pruning.slicing import sliced_state

    model, units, x0 = _setup(key)
    _randomise_bn(model, seed=1)
    model.eval()
    x = torch.randn(5, *x0.shape[1:], generator=torch.Generator().manual_seed(0))
    for plan in _random_plans(units, 3, seed=4):
        with torch.no_grad():
            expected = prune_model(model, units, plan, x0).eval()(x)
            got = functional_call(model, sliced_state(model, units, plan), (x,))
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)
        assert not torch.allclose(got, model(x), atol=1e-3)  # pruning really changed the output
