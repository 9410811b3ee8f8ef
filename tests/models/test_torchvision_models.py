"""Every torchvision classification builder through the pruning stack on 32x32 inputs.

Per model: units from torch-pruning's groups (or one clean error), 1-2 random plans whose cost
(shape counter, never the physical fallback) equals torch-pruning's count of the physically
pruned model, sliced (and, where exact, masked) calibration forwards equal to the pruned
model's output, importance, and a pruned checkpoint that reloads to the same outputs.
The fast subset runs by default; the rest is `-m slow`. Models that need larger inputs run at
their smallest size (`SIZES`; at 32x32 they are a one-line error, tested fast); the builders
gaprune refuses (`REFUSED`: torch-pruning never finishes analysing them) are one-line errors.
"""
from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from gaprune.models import build_model
from gaprune.models.torchvision_models import REFUSED
from gaprune.pruning.cost import CostModel
from gaprune.pruning.importance import IMPORTANCES
from gaprune.pruning.masking import ChannelMasker, masks_exact
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan
from gaprune.pruning.slicing import sliced_forward, sliced_state
from gaprune.pruning.units import discover_units
from gaprune.utils.errors import GapruneError

# regnet_x_400mf: grouped convs; shufflenet: channel-shuffle barrier; squeezenet: conv classifier
FAST = ["resnet18", "mobilenet_v2", "regnet_x_400mf", "shufflenet_v2_x0_5", "squeezenet1_1"]
ALL = tvm.list_models(module=tvm)
SIZES = {"inception_v3": 75, "maxvit_t": 224, "vit_h_14": 28}  # smallest input each runs at (gaprune's error says so)
# Swin V2: torch-pruning's group search (get_all_groups) grows without bound (17 GB after 8 min,
# MemoryError under a 9 GB cap), so gaprune refuses these builders up front (REFUSED).


def _params(names):
    return [pytest.param(n, marks=[] if n in FAST else [pytest.mark.slow]) for n in names if n not in REFUSED]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_builders_are_one_line_errors_before_building(name):
    with pytest.raises(GapruneError, match=f"model 'torchvision.{name}' cannot be pruned here: .*Swin V2") as err:
        build_model(f"torchvision.{name}", 10, 3, 32)
    assert "\n" not in str(err.value)


def _random_plan(units, rng: np.random.Generator) -> Plan:
    keep = {}
    for u in units:
        count = int(rng.integers(max(1, u.channels // 4), u.channels + 1))
        keep[u.name] = tuple(sorted(rng.choice(u.channels, count, replace=False).tolist()))
    return Plan(keep=keep, channels={u.name: u.channels for u in units})


@functools.lru_cache(maxsize=1)
def _built(name: str):
    torch.manual_seed(0)
    size = SIZES.get(name, 32)
    model = build_model(f"torchvision.{name}", 10, 3, size).eval()
    x = torch.randn(2, 3, size, size)
    return model, x


def check(name: str, plans: int = 1) -> str:
    """Run the whole check; returns 'ok' or 'no units: ...' (a clean GapruneError)."""
    model, x = _built(name)
    x0 = x[:1].clone()
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            units = discover_units(model, x0)
    except GapruneError as err:
        assert "\n" not in str(err)
        return f"no units: {err}"
    cost = CostModel(model, units, x0)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(plans):
            plan = _random_plan(units, rng)
            pruned = prune_model(model, units, plan, x0)
            assert cost.cost(plan) == count_macs_params(pruned, x0)
            expected = pruned(x)
            # float32 sums in another order (other widths, batch sizes, kernels) err relative to the
            # output's scale (random-init inception_v3's logits reach 2e4: 0.012 off at one logit of 121)
            tol = {"rtol": 1e-4, "atol": max(1e-4, 1e-5 * expected.abs().max().item())}
            state = sliced_state(model, units, plan)
            torch.testing.assert_close(sliced_forward(model, state, x), expected, **tol)
            if masks_exact(model, units):
                masker = ChannelMasker(model, units)
                try:
                    masker.set_plans([plan, plan])
                    got = model(x.repeat(2, 1, 1, 1)).reshape(2, 2, -1)
                finally:
                    masker.remove()
                torch.testing.assert_close(got[1], expected, **tol)
            buffer = io.BytesIO()  # a pruned checkpoint: state_dict + plan, rebuilt from the baseline
            torch.save({"state_dict": pruned.state_dict(), "plan": plan.to_json()}, buffer)
            buffer.seek(0)
            data = torch.load(buffer, weights_only=True)
            rebuilt = prune_model(model, units, Plan.from_json(data["plan"]), x0)
            rebuilt.load_state_dict(data["state_dict"])
            torch.testing.assert_close(rebuilt.eval()(x), expected)
    assert cost.mode != "physical"  # exact without the slow fallback
    scores = IMPORTANCES.get("taylor")(model=model, units=units, batches=[(x, torch.tensor([1, 2]))])
    assert all(scores[u.name].shape == (u.channels,) for u in units)
    model.zero_grad(set_to_none=True)
    return "ok"


@pytest.mark.parametrize("name", _params(ALL))
def test_torchvision_classifier_prunes_exactly(name: str) -> None:
    result = check(name)
    print(f"{name}: {result}")  # the outcome table of a -m slow run (-rA shows it)
    assert result == "ok" or result.startswith("no units"), result


@pytest.mark.parametrize("name", sorted(SIZES))
def test_model_too_big_for_32x32_is_one_line_naming_the_size(name: str) -> None:
    with pytest.raises(GapruneError, match=f"{SIZES[name]}x{SIZES[name]}|divisible") as err:
        build_model(f"torchvision.{name}", 10, 3, 32)
    assert "\n" not in str(err.value)


def test_small_input_pools_fit_and_special_layers_are_handled() -> None:
    """AlexNet's last max-pool gets padding at 32x32 (and none at 224); ShuffleNet's shuffle groups
    are named in the notice; SqueezeNet's conv classifier keeps its outputs; grouped convs are genes."""
    assert build_model("torchvision.alexnet", 10, 3, 32).features[12].padding == (1, 1)
    assert build_model("torchvision.alexnet", 10, 3, 224).features[12].padding == 0
    shuffle = build_model("torchvision.shufflenet_v2_x0_5", 10, 3, 32).eval()
    with pytest.warns(UserWarning, match="shuffle: channel shuffle"):
        units = discover_units(shuffle, torch.zeros(1, 3, 32, 32))
    assert not any(s.layer.endswith("shuffle") for u in units for s in u.slices)
    squeeze = build_model("torchvision.squeezenet1_1", 10, 3, 32).eval()
    units = discover_units(squeeze, torch.zeros(1, 3, 32, 32))
    assert not any(s.layer == "classifier.1" and s.kind == "out" for u in units for s in u.slices)
    regnet = build_model("torchvision.regnet_x_400mf", 10, 3, 32).eval()
    units = {u.name: u for u in discover_units(regnet, torch.zeros(1, 3, 32, 32))}
    conv = regnet.get_submodule("trunk_output.block1.block1-0.f.b.0")  # 32 channels in 2 groups of 16
    unit = units["trunk_output.block1.block1-0.f.b.0"]
    assert conv.groups == 2 and unit.channels == conv.out_channels // conv.groups
    assert sorted(np.bincount(next(s.root for s in unit.slices if s.layer == unit.name))) == [2] * unit.channels


class _FixedHeads(torch.nn.Module):
    """conv -> a reshape to a fixed 4 heads of 2 channels -> conv: the first conv's width is not prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = y.reshape(y.shape[0], 4, 2, *y.shape[2:]).flip(1).flatten(1, 2)
        return self.c(self.b(y)).mean((2, 3))


def test_groups_the_forward_or_torch_pruning_cannot_take_are_not_genes() -> None:
    model = _FixedHeads().eval()
    with pytest.warns(UserWarning, match="a \\(the forward rejects a pruned width"):
        assert [u.name for u in discover_units(model, torch.zeros(1, 3, 4, 4))] == ["b"]
    with pytest.raises(GapruneError, match="torch-pruning cannot trace the channel dependencies of SwinTransformer") as err:
        discover_units(build_model("torchvision.swin_s", 10, 3, 32).eval(), torch.zeros(1, 3, 32, 32))
    assert "\n" not in str(err.value)
