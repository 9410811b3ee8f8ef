"""Checkpoints: state_dict + metadata (+ plan), loaded without ever unpickling code."""
from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from gaprune.engine.checkpoint import example_input, load_model, read_checkpoint, save_checkpoint
from gaprune.models import build_model
from gaprune.pruning.physical import prune_model
from gaprune.pruning.plan import Plan
from gaprune.pruning.units import discover_units
from gaprune.search.encodings import build_encoding
from gaprune.utils.errors import GapruneError


def _meta(name: str, include_linear: bool = False, channels: int = 1, **kwargs) -> dict:
    return {
        "model": {"name": name, "include_linear": include_linear, "kwargs": kwargs},
        "data": {"name": "digits" if channels == 1 else "cifar10", "num_classes": 10, "in_channels": channels,
                 "image_size": 32},
        "seed": 0,
        "val_acc": 0.5,
        "test_acc": 0.5,
    }


def _model(meta: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    data = meta["data"]
    model = build_model(meta["model"]["name"], data["num_classes"], data["in_channels"], data["image_size"],
                        **meta["model"]["kwargs"])
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():  # non-default BN statistics, so a lost buffer would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
    return model.eval()


def _plan(model: nn.Module, meta: dict, seed: int) -> tuple[list, Plan]:
    units = discover_units(model, example_input(meta), include_linear=meta["model"]["include_linear"])
    rng = np.random.default_rng(seed)
    enc = build_encoding("ratio_strategy", units, {u.name: rng.random(u.channels) for u in units}, r_min=0.2)
    return units, enc.decode(enc.random_genome(random.Random(seed)))


def _logits(model: nn.Module, meta: dict) -> torch.Tensor:
    x = torch.randn(3, meta["data"]["in_channels"], 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def _assert_clean_message(err: GapruneError, path) -> str:
    message = str(err)
    assert str(path) in message
    assert "\n" not in message, "errors are printed as one line"
    assert not any(ord(ch) < 32 for ch in message), f"control characters in the message: {message!r}"
    return message


# --- round trips ----------------------------------------------------------------------------------


def test_baseline_round_trip(tmp_path) -> None:
    meta = _meta("lenet5")
    model = _model(meta, seed=1)
    path = tmp_path / "ck" / "lenet5-digits.pt"
    save_checkpoint(path, model, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["lenet5-digits.pt"]  # no temp file left
    loaded, loaded_meta, plan = load_model(path, expect_model="lenet5")
    assert plan is None and loaded_meta == meta
    assert not loaded.training
    state, original = loaded.state_dict(), model.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
    torch.testing.assert_close(_logits(loaded, meta), _logits(model, meta), rtol=0, atol=0)
    payload = read_checkpoint(path)
    assert payload["format"] == "gaprune-baseline" and "plan" not in payload


@pytest.mark.parametrize("name,include_linear,channels", [("lenet5", True, 1), ("resnet20", False, 3)])
def test_pruned_round_trip(tmp_path, name: str, include_linear: bool, channels: int) -> None:
    meta = _meta(name, include_linear=include_linear, channels=channels)
    baseline = _model(meta, seed=2)
    units, plan = _plan(baseline, meta, seed=3)
    pruned = prune_model(baseline, units, plan, example_input(meta))
    for p in pruned.parameters():  # "fine-tuned": weights differ from the baseline's
        p.data.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, pruned, meta, plan)
    loaded, loaded_meta, loaded_plan = load_model(path, expect_model=name)
    assert loaded_meta == meta
    assert loaded_plan == plan
    for unit, count in zip(units, plan.keep_counts()):
        root = loaded.get_submodule(unit.name)
        assert (root.out_channels if isinstance(root, nn.Conv2d) else root.out_features) == count
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in pruned.parameters())
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in baseline.parameters())
    torch.testing.assert_close(_logits(loaded, meta), _logits(pruned, meta), rtol=0, atol=0)


def test_expect_model_mismatch_raises(tmp_path) -> None:
    meta = _meta("lenet5")
    path = tmp_path / "lenet5.pt"
    save_checkpoint(path, _model(meta, 0), meta)
    with pytest.raises(GapruneError) as err:
        load_model(path, expect_model="resnet20")
    assert "lenet5" in str(err.value) and "resnet20" in str(err.value)


def test_state_dict_that_does_not_fit_raises(tmp_path) -> None:
    meta = _meta("lenet5", include_linear=True)
    baseline = _model(meta, 0)
    units, plan = _plan(baseline, meta, seed=1)
    path = tmp_path / "no-plan.pt"
    save_checkpoint(path, prune_model(baseline, units, plan, example_input(meta)), meta)  # plan forgotten
    with pytest.raises(GapruneError, match="does not fit"):
        load_model(path)


def test_pruned_checkpoint_with_malformed_plan_raises(tmp_path) -> None:
    meta = _meta("lenet5", include_linear=True)
    baseline = _model(meta, 0)
    units, plan = _plan(baseline, meta, seed=1)
    path = tmp_path / "bad-plan.pt"
    save_checkpoint(path, prune_model(baseline, units, plan, example_input(meta)), meta, plan)
    payload = torch.load(path, weights_only=True)
    payload["plan"] = {"units": [{"name": "conv1"}]}
    torch.save(payload, path)
    with pytest.raises(GapruneError, match="malformed"):
        load_model(path)


# --- files that must be refused -------------------------------------------------------------------


def test_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(GapruneError, match="not found") as err:
        load_model(path, hint="train it with: python train.py")
    assert "train.py" in _assert_clean_message(err.value, path)
    with pytest.raises(GapruneError, match="not found"):
        read_checkpoint(tmp_path)  # a directory is not a checkpoint


@pytest.mark.parametrize("cut", [0, 100, 0.5, -10])
def test_truncated_or_corrupt_file(tmp_path, cut) -> None:
    meta = _meta("lenet5")
    path = tmp_path / "ck.pt"
    save_checkpoint(path, _model(meta, 0), meta)
    data = path.read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else cut if cut >= 0 else len(data) + cut
    path.write_bytes(data[:end])
    with pytest.raises(GapruneError) as err:
        load_model(path)
    _assert_clean_message(err.value, path)


def test_random_bytes_are_refused(tmp_path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(GapruneError) as err:
        load_model(path)
    _assert_clean_message(err.value, path)


@pytest.mark.parametrize("payload", [
    {"weights": torch.zeros(3)},
    torch.zeros(3),
    {"format": "something-else", "state_dict": {}},
    {"format": "gaprune-baseline"},
    [1, 2, 3],
], ids=["dict", "tensor", "other-format", "no-state-dict", "list"])
def test_non_gaprune_torch_file(tmp_path, payload) -> None:
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(GapruneError, match="not a gaprune checkpoint") as err:
        load_model(path)
    _assert_clean_message(err.value, path)


class Shell:
    """Unpickling this runs a shell command: a loader must never do it."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class LocalThing:
    """An arbitrary class: not a plain tensor/container, so unpickling it means importing code."""

    def __init__(self) -> None:
        self.value = 3


@pytest.mark.parametrize("kind", ["raw-pickle", "raw-pickle-protocol0", "torch-save-shell", "torch-save-local-class"])
def test_pickled_code_is_refused(tmp_path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps(Shell(marker)))
    elif kind == "raw-pickle-protocol0":
        path.write_bytes(pickle.dumps(Shell(marker), protocol=0))
    elif kind == "torch-save-shell":
        torch.save({"format": "gaprune-baseline", "state_dict": {}, "meta": Shell(marker)}, path)
    else:
        torch.save({"format": "gaprune-baseline", "state_dict": {}, "meta": LocalThing()}, path)
    with pytest.raises(GapruneError) as err:
        load_model(path)
    assert not marker.exists(), "the pickled command ran"
    message = _assert_clean_message(err.value, path)
    if kind.startswith("torch-save"):  # a real torch archive: say why it is refused, name the culprit
        assert "refusing to load" in message
        assert ("system" if kind == "torch-save-shell" else "LocalThing") in message
    else:  # not even a torch archive: refused before anything is unpickled
        assert "refusing to load" in message or "not a torch file" in message
