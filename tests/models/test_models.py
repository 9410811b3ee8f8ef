"""Model zoo: shapes, registry errors, layer hygiene and torch-pruning groups."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch_pruning as tp
from torch import nn

from gaprune.models import MODELS, build_model, output_layer
from gaprune.utils.errors import GapruneError

OWN = ["lenet5", "vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32", "resnet56",
       "resnet18", "mobilenetv2"]


def _input_for(name: str) -> tuple[int, torch.Tensor]:
    channels = 1 if name == "lenet5" else 3
    return channels, torch.randn(2, channels, 32, 32)


def test_all_expected_models_registered() -> None:
    assert set(OWN) <= set(MODELS.names())


@pytest.mark.parametrize("name", OWN)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_model_builds_and_gives_logits(name: str, num_classes: int) -> None:
    channels, x = _input_for(name)
    model = build_model(name, num_classes, channels, 32).eval()
    with torch.no_grad():
        assert model(x).shape == (2, num_classes)
    assert output_layer(model).out_features == num_classes


@pytest.mark.parametrize("name", OWN)
def test_layers_are_distinct_and_parameterless_ops_functional(name: str) -> None:
    """MACs counters see each layer once: no nn.ReLU/MaxPool modules, no module reused."""
    channels, x = _input_for(name)
    model = build_model(name, 10, channels, 32)
    assert not any(isinstance(m, (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d))
                   for m in model.modules())
    calls: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.__setitem__(mod, calls.get(mod, 0) + 1))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    model.eval()(x)
    for h in hooks:
        h.remove()
    assert len(calls) == len(hooks)  # every layer is used ...
    assert set(calls.values()) == {1}  # ... exactly once


@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
def test_weight_init(name: str) -> None:
    model = build_model(name, 10, 3, 32)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 64)
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)


def test_lenet5_handles_28x28_and_classic_geometry() -> None:
    assert build_model("lenet5", 10, 1, 32).fc1.in_features == 400
    model = build_model("lenet5", 10, 1, 28)
    assert model.fc1.in_features == 256
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_paper_head_and_small_inputs() -> None:
    model = build_model("vgg16", 100, 3, 32, head="paper", dropout=0.3)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(512, 4096), (4096, 4096),
                                                                  (4096, 100)]
    assert output_layer(model) is linears[-1]
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules()) == 2
    small = build_model("vgg11", 10, 1, 28).eval()  # 5 pools would hit 0x0 at 28 px
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet_width_and_projection_shortcuts() -> None:
    model = build_model("resnet20", 10, 3, 32, width=8)
    assert model.conv1.out_channels == 8 and model.fc.in_features == 32
    assert model.layer1[0].shortcut is None  # identity where shape is unchanged
    sc = model.layer2[0].shortcut
    assert isinstance(sc[0], nn.Conv2d) and sc[0].kernel_size == (1, 1)
    assert isinstance(sc[1], nn.BatchNorm2d)


def test_torchvision_model_builds() -> None:
    model = build_model("torchvision.resnet18", 10, 3, 32).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert output_layer(model) is model.fc


def test_unknown_names_and_options_raise() -> None:
    with pytest.raises(GapruneError, match="'resnet99'.*lenet5"):
        build_model("resnet99", 10, 3, 32)
    with pytest.raises(GapruneError, match="nonexistent_net"):
        build_model("torchvision.nonexistent_net", 10, 3, 32)
    with pytest.raises(GapruneError, match="'hed'.*head"):
        build_model("vgg16", 10, 3, 32, hed="paper")
    with pytest.raises(GapruneError, match="'width'"):
        build_model("lenet5", 10, 1, 32, width=8)
    with pytest.raises(GapruneError, match="'deep'"):
        build_model("vgg16", 10, 3, 32, head="deep")
    with pytest.raises(GapruneError, match="image_size >= 16"):
        build_model("lenet5", 10, 1, 8)


def test_model_modules_do_not_import_torchvision() -> None:
    code = "import sys, gaprune.models, gaprune.data.datasets; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _groups(model: nn.Module, x: torch.Tensor, roots: list[type]) -> tuple[tp.DependencyGraph, list]:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return dg, list(dg.get_all_groups(ignored_layers=[output_layer(model)],
                                      root_module_types=roots))


@pytest.mark.parametrize("name,kwargs,expected", [
    ("vgg16", {}, 13), ("vgg16", {"head": "paper"}, 13), ("resnet56", {}, 30),
    ("resnet20", {}, 12), ("resnet32", {}, 18), ("vgg11", {}, 8), ("resnet18", {}, 12),
    ("mobilenetv2", {}, 25), ("mobilenetv2", {"width_mult": 0.5}, 25),
])
def test_dependency_graph_group_counts(name: str, kwargs: dict, expected: int) -> None:
    model = build_model(name, 10, 3, 32, **kwargs)
    _, groups = _groups(model, torch.randn(1, 3, 32, 32), [nn.Conv2d])
    assert len(groups) == expected


def test_lenet5_groups_include_hidden_linears() -> None:
    model = build_model("lenet5", 10, 1, 32)
    _, groups = _groups(model, torch.randn(1, 1, 32, 32), [nn.Conv2d, nn.Linear])
    assert len(groups) == 4
    roots = {g[0].dep.target.module for g in groups}
    assert model.fc3 not in roots and {model.conv1, model.conv2, model.fc1, model.fc2} == roots


def test_pruning_a_residual_stage_group_keeps_resnet20_runnable() -> None:
    model = build_model("resnet20", 10, 3, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    macs_before, params_before = tp.utils.count_ops_and_params(model, x)
    dg, _ = _groups(model, x, [nn.Conv2d])
    shortcut = model.layer2[0].shortcut[0]
    group = dg.get_pruning_group(shortcut, tp.prune_conv_out_channels, idxs=[0, 1])
    group.prune()
    # the whole stage-2 residual stream shrinks together, 32 -> 30
    assert shortcut.out_channels == 30
    assert all(block.conv2.out_channels == 30 and block.conv1.in_channels == 30
               for block in list(model.layer2)[1:])
    assert model.layer2[0].conv2.out_channels == 30 and model.layer3[0].conv1.in_channels == 30
    assert model.layer2[0].conv1.out_channels == 32  # inner convs are separate groups
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    macs_after, params_after = tp.utils.count_ops_and_params(model, x)
    assert macs_after < macs_before and params_after < params_before


def test_resnet18_cifar_geometry() -> None:
    model = build_model("resnet18", 100, 3, 32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.out_channels == 64 and model.fc.in_features == 512
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    assert [s[0].conv2.out_channels for s in stages] == [64, 128, 256, 512]
    assert model.layer1[0].shortcut is None and all(s[1].shortcut is None for s in stages)
    for stage in stages[1:]:
        conv, bn = stage[0].shortcut
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)
    assert sum(p.numel() for p in model.parameters()) == 11_220_132  # the usual CIFAR ResNet-18
    assert build_model("resnet18", 10, 3, 32, width=16).fc.in_features == 128


def test_mobilenetv2_cifar_geometry_and_width_mult() -> None:
    model = build_model("mobilenetv2", 10, 3, 32)
    assert model.conv1.stride == (1, 1) and model.conv1.out_channels == 32
    assert len(model.layers) == 17 and model.fc.in_features == 1280
    assert model.layers[0].conv1 is None  # expansion 1: no expand conv
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    # 32x32 -> 4x4 at the head: strides 1 (stem), 1, 1, 2, 2, 1, 2, 1
    assert [b.stride for b in model.layers] == [1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert [b.use_residual for b in model.layers].count(True) == 10
    seen: list[torch.Size] = []
    model.conv2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 1280, 4, 4)]
    half = build_model("mobilenetv2", 10, 3, 32, width_mult=0.5)
    assert half.conv1.out_channels == 16 and half.layers[-1].conv3.out_channels == 160
    assert half.fc.in_features == 1280  # the last width never shrinks below 1280
    assert build_model("mobilenetv2", 10, 3, 64).eval()(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(GapruneError, match="width_mult"):
        build_model("mobilenetv2", 10, 3, 32, width_mult=0)


@pytest.mark.parametrize("name,units_expected", [("resnet18", 12), ("mobilenetv2", 25)])
def test_new_models_prune_and_analytic_cost_matches_torch_pruning(name: str, units_expected: int) -> None:
    import random

    from gaprune.pruning.cost import CostModel
    from gaprune.pruning.importance import compute_importance
    from gaprune.pruning.masking import ChannelMasker
    from gaprune.pruning.physical import count_macs_params, prune_model
    from gaprune.pruning.units import discover_units
    from gaprune.search.encodings import build_encoding

    torch.manual_seed(0)
    model = build_model(name, 10, 3, 32).eval()
    x = torch.randn(1, 3, 32, 32)
    units = discover_units(model, x)
    assert len(units) == units_expected
    for unit in units:  # depthwise convs ride along with their producer, never roots
        root = model.get_submodule(unit.name)
        assert root.groups == 1
    if name == "mobilenetv2":
        owner = {m: u.name for u in units for m in u.out_modules}
        for i, block in enumerate(model.layers):
            producer = "conv1" if block.conv1 is None else f"layers.{i}.conv1"
            assert owner[f"layers.{i}.conv2"] == producer
    importance = compute_importance("l1", model, units, lambda: [], 0)
    encoding = build_encoding("ratio", units, importance, r_min=0.2)
    cost = CostModel(model, units, x)
    rng = random.Random(0)
    plans = [encoding.decode(encoding.random_genome(rng)) for _ in range(3)]
    batch = torch.randn(2, 3, 32, 32)
    masker = ChannelMasker(model, units)
    for plan in plans:
        pruned = prune_model(model, units, plan, x)
        assert cost.cost(plan) == count_macs_params(pruned, x)
        with torch.no_grad():
            out = pruned(batch)
            masker.set_plans([plan])
            masked = model(batch)
            masker.set_plans(None)
        assert out.shape == (2, 10)
        assert torch.allclose(out, masked, atol=1e-4, rtol=1e-4)  # masking == physical pruning
    masker.remove()
    assert cost.verify(plans) and not cost.exact
    assert cost.cost(plans[0])[0] < cost.base_macs
