"""GGPA grow-and-prune (trainer=grow_prune, model=vgg_seed) on digits, tiny seed widths."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gaprune.data.datasets import load_dataset
from gaprune.data.loaders import make_loader
from gaprune.engine.checkpoint import load_model
from gaprune.engine.grow_prune import (GrowPruneConfig, carry_optimizer, conv_widths, gamma_prune_plan, grow,
                                       growth_scores, mark_layers, stage_increments)
from gaprune.engine.grow_prune_schedule import grow_and_prune
from gaprune.engine.training import TrainConfig, make_optimizer, seed_everything, train
from gaprune.models import build_model
from gaprune.pruning.units import discover_units
from gaprune.utils.errors import GapruneError

from helpers import X0, paths, run_cli

HERE = Path(__file__).resolve().parent  # the killed child process imports this module from here

SEED = [4, 4, "M", 6, 6, "M", 8]


def bundle():
    return load_dataset("digits", train_limit=400, test_limit=200)


def rebuild_fn(layers):
    return build_model("vgg_seed", 10, 1, 32, layers=layers)


def test_seed_model_matches_the_paper() -> None:
    model = build_model("vgg_seed", 10, 3, 32)
    assert [c.out_channels for c in model.convs] == [8, 8, 16, 16] + [32] * 4 + [64] * 8
    assert all(c.bias is None for c in model.convs) and all(float(b.weight.detach().min()) == 0.5 == float(b.weight.detach().max())
                                                            for b in model.bns)
    assert stage_increments([8, 8, "M", 16, "M", "M", 64], None) == [2, 2, 4, 16]
    with pytest.raises(GapruneError, match="one per stage"):
        stage_increments(SEED, [1, 2])


def test_growth_scores_are_kernel_summed_weight_gradients() -> None:
    seed_everything(0)
    model = rebuild_fn(SEED)
    x, y = torch.randn(6, 1, 32, 32), torch.randint(0, 10, (6,))
    scores = growth_scores(model, [(x, y)])
    F.cross_entropy(model.eval()(x), y).backward()
    for i, conv in enumerate(list(model.convs[1:])):
        expected = conv.weight.grad.sum((2, 3)).abs().mean(0).double().numpy()
        np.testing.assert_allclose(scores[i], expected, rtol=1e-4, atol=1e-9)
    head = model.classifier.weight.grad
    np.testing.assert_allclose(scores[-1], head.abs().mean(0).double().numpy(), rtol=1e-4, atol=1e-9)
    assert head.sum(0).abs().max() < 1e-6 < scores[-1].max()  # summing over outputs first gives zero (original)


def test_growth_widens_only_marked_layers_and_keeps_the_function() -> None:
    digits = bundle()
    seed_everything(0)
    torch.set_num_threads(1)  # the killed subprocess and this process must compute in the same float order
    model = rebuild_fn(SEED)
    config = TrainConfig(epochs=3, lr=0.05)
    optimizer, scheduler = make_optimizer(model, config)
    batches = make_loader(digits, "train", 64, shuffle=True, seed=0)
    train(model, batches, make_loader(digits, "val", 256), TrainConfig(epochs=1, lr=0.05), optimizer_state=(optimizer, scheduler))
    scores = growth_scores(model, itertools.islice(make_loader(digits, "train", 64), 3))
    marked = mark_layers([float(s.min()) for s in scores], 50)
    assert 0 < len(marked) < len(SEED) - 2
    grown, layers = grow(model, SEED, marked, stage_increments(SEED, None), scores, rebuild_fn, 0.01,
                         torch.Generator().manual_seed(0))
    before, after = conv_widths(SEED), conv_widths(layers)
    for i, (b, a) in enumerate(zip(before, after)):
        assert a == b + (stage_increments(SEED, None)[i] if i in marked else 0)
    x = next(iter(make_loader(digits, "val", 128)))[0]
    with torch.no_grad():
        old, new = model.eval()(x), grown.eval()(x)
    assert (new - old).abs().max() < 0.05 * old.abs().max()
    new_opt, new_sched = carry_optimizer(model, optimizer, scheduler, grown, config)
    assert new_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] and new_sched.last_epoch == 1


def test_prune_removes_the_planned_share_with_the_floor() -> None:
    model = rebuild_fn([8, 8, "M", 8]).eval()
    units = discover_units(model, X0)
    scores = {units[0].name: np.zeros(8), units[1].name: np.arange(8.0) + 10, units[2].name: np.arange(8.0)}
    plan, info = gamma_prune_plan(units, scores, percent=0.5, min_keep=0.25)
    counts = plan.keep_counts()
    assert info["removed"] == 12 == 24 - sum(counts) and counts[0] == 2  # unit 0 (all zeros) held at its floor
    assert plan.keep[units[2].name] == tuple(range(8))[-len(plan.keep[units[2].name]):]  # lowest go first
    with pytest.raises(GapruneError, match="floor"):
        gamma_prune_plan(units, scores, percent=0.9, min_keep=0.25)


@pytest.mark.parametrize("kwargs,match", [({"grow_until": 3, "prune_at": 2}, "grow_until"),
                                          ({"prune_at": 9}, "prune_at"), ({"percent": 1.0}, "percent"),
                                          ({"grow_percentile": 101}, "grow_percentile")])
def test_bad_options_are_one_line_errors(kwargs, match) -> None:
    options = {"grow_until": 1, "prune_at": 2, **kwargs}
    with pytest.raises(GapruneError, match=match) as err:
        GrowPruneConfig(**options).validate(4)
    assert "\n" not in str(err.value)


def run_schedule(state_path: str, kill_after: int = 0) -> dict:
    """The schedule as tests run it (also in a subprocess that SIGKILLs itself after an epoch)."""
    import os
    import signal

    digits = bundle()
    seed_everything(0)

    def on_epoch(row):
        if kill_after and row["epoch"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed subprocess and this process must compute in the same float order
    try:
        result = grow_and_prune(
            SEED, rebuild_fn, make_loader(digits, "train", 64, shuffle=True, augment=True, seed=0),
            make_loader(digits, "val", 256),
            lambda epoch: itertools.islice(make_loader(digits, "train", 64, shuffle=True, seed=epoch), 2),
            TrainConfig(epochs=5, lr=0.05, bn_sparsity=1e-4), GrowPruneConfig(grow_until=2, prune_at=4, percent=0.3),
            Path(state_path), X0, on_epoch=on_epoch)
    finally:
        torch.set_num_threads(threads)
    return {"state": result.model.state_dict(), "result": result}


def test_kill_mid_schedule_resumes_to_identical_weights(tmp_path: Path) -> None:
    killed = tmp_path / "killed.state"
    code = f"import sys; sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent)!r}]; import test_grow_prune as t; t.run_schedule({str(killed)!r}, 3)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9 and killed.is_file(), proc.stderr[-2000:]
    resumed = run_schedule(str(killed))
    straight = run_schedule(str(tmp_path / "straight.state"))
    assert [r["widths"] for r in resumed["result"].history] == [r["widths"] for r in straight["result"].history]
    assert resumed["state"].keys() == straight["state"].keys()
    assert all(torch.equal(resumed["state"][k], straight["state"][k]) for k in straight["state"])
    history = straight["result"].history
    assert [r["phase"] for r in history] == ["grow", "grow", "score", "score", "retrain"]
    assert sum(history[1]["widths"]) > sum(conv_widths(SEED)) and sum(history[3]["widths"]) < sum(history[2]["widths"])


def test_train_py_grow_prune_saves_a_loadable_baseline(tmp_path: Path) -> None:
    ck = tmp_path / "ck" / "seed.pt"
    run_cli("train.py", "model=vgg_seed", "model.params.layers=[4,M,6,M,8]", "trainer=grow_prune", "trainer.epochs=3",
            "trainer.grow_until=1", "trainer.prune_at=2", "trainer.score_batches=2", "trainer.batch_size=64",
            "dataset.params.train_limit=300", "dataset.params.test_limit=100", "logger.mode=disabled",
            f"baseline={ck}", f"hydra.run.dir={tmp_path / 'run'}", *paths(tmp_path))
    model, meta, plan = load_model(ck)
    assert plan is None and meta["model"]["kwargs"]["layers"] == [*meta["grow_prune"]["final_layers"]]
    assert [c.out_channels for c in model.convs] == conv_widths(meta["model"]["kwargs"]["layers"])
    assert (tmp_path / "run" / "widths.png").is_file() and (tmp_path / "run" / "history.csv").is_file()
    assert not Path(f"{ck}.state").exists()
    bad = run_cli("train.py", "model=vgg_seed", "trainer=grow_prune", "trainer.prune_at=999", "logger.mode=disabled",
                  f"hydra.run.dir={tmp_path / 'bad'}", *paths(tmp_path), check=False)
    assert bad.returncode != 0 and "prune_at" in (bad.stderr + bad.stdout).strip().splitlines()[-1]
