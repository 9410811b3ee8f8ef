"""Every torchvision classification builder through the pruning stack on 32x32 inputs.

Per model: units from torch-pruning's groups (or one clean error), 1-2 random plans whose cost
(shape counter, never the physical fallback) equals torch-pruning's count of the physically
pruned model, sliced (and, where exact, masked) calibration forwards equal to the pruned
model's output, importance, and a pruned checkpoint that reloads to the same outputs.
The fast subset runs by default; the rest is `-m slow`.
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
from gaprune.pruning.cost import CostModel
from gaprune.pruning.importance import IMPORTANCES
from gaprune.pruning.masking import ChannelMasker, masks_exact
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan
from gaprune.pruning.slicing import sliced_forward, sliced_state
from gaprune.pruning.units import discover_units
from gaprune.utils.errors import GapruneError

FAST = ["resnet18", "mobilenet_v2", "regnet_x_400mf"]  # densenet121 / efficientnet_b0 pass too (-m slow)
ALL = tvm.list_models(module=tvm)


def _params(names):
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in names]


def _random_plan(units, rng: np.random.Generator) -> Plan:
    keep = {}
    for u in units:
        count = int(rng.integers(max(1, u.channels // 4), u.channels + 1))
        keep[u.name] = tuple(sorted(rng.choice(u.channels, count, replace=False).tolist()))
    return Plan(keep=keep, channels={u.name: u.channels for u in units})


@functools.lru_cache(maxsize=1)
def _built(name: str):
    torch.manual_seed(0)
    model = build_model(f"torchvision.{name}", 10, 3, 32).eval()
    x = torch.randn(2, 3, 32, 32)
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
            state = sliced_state(model, units, plan)
            torch.testing.assert_close(sliced_forward(model, state, x), expected, rtol=1e-4, atol=1e-4)
            if masks_exact(model, units):
                masker = ChannelMasker(model, units)
                try:
                    masker.set_plans([plan, plan])
                    got = model(x.repeat(2, 1, 1, 1)).reshape(2, 2, -1)
                finally:
                    masker.remove()
                torch.testing.assert_close(got[1], expected, rtol=1e-4, atol=1e-4)
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
    assert result == "ok" or result.startswith("no units"), result
