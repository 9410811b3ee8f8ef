"""Compute accounting (gaprune.engine.compute): the ledger, the forward hook, fractional fine-tunes,
and a tiny search + fine-tune recounted by hand from its records; the finalists' winner continued
by the final fine-tune ends with the same weights as one started over, for less compute."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gaprune.data.loaders import make_loader
from gaprune.engine.compute import Compute, counting
from gaprune.engine.training import TrainConfig, train
from gaprune.utils.errors import GapruneError
from helpers import REPO, paths, run_cli


def test_ledger_adds_by_phase_and_round_trips():
    compute = Compute()
    compute.add("proxy", 10)
    compute.add("proxy", 5)
    compute.add("finetune", 100)
    assert compute.total == 115
    assert compute.to_json() == {"total": 115, "importance": 0, "proxy": 15, "finalists": 0, "finetune": 100, "retrain": 0}
    assert Compute.from_json(compute.to_json()).to_json() == compute.to_json()
    assert (compute + Compute({"importance": 7})).total == 122
    with pytest.raises(GapruneError, match="unknown compute phase 'search'"):
        compute.add("search", 1)


def test_hook_counts_forwards_and_backward_as_twice_the_forward():
    model, compute = nn.Linear(4, 2), Compute()
    with counting(model, 8.0, compute, "importance"):
        with torch.no_grad():
            model(torch.zeros(3, 4))  # 3 images, forward only
        assert compute.total == 24
        model(torch.zeros(5, 4)).sum().backward()  # autograd records it: forward + backward
        assert compute.total == 24 + 5 * 8 * 3
        with compute.paused():
            model(torch.zeros(5, 4))
        assert compute.total == 144
    model(torch.zeros(5, 4))  # the hook is gone after the block
    assert compute.total == 144


def test_steps_cap_a_fine_tune_across_epochs(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
    batches = make_loader(digits, "train", 256, shuffle=True)
    per_epoch = len(batches)
    steps = per_epoch + 2  # one epoch and two steps of the next
    history = train(model, batches, make_loader(digits, "val", 512), TrainConfig(epochs=2, lr=0.01, steps=steps))
    assert [row["steps"] for row in history] == [per_epoch, 2]
    assert history[1]["train_images"] == 2 * 256
    with pytest.raises(GapruneError, match="steps=0 must be a whole number >= 1"):
        TrainConfig(epochs=1, lr=0.01, steps=0).validate()


def _bundle_sizes(root: Path) -> tuple[int, int]:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from gaprune.pipeline.setup import load_bundle

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("search", paths(root))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    bundle = load_bundle(cfg)
    return len(bundle.train), len(bundle.val)


SEARCH = ["logger.mode=disabled", "optimizer.params.population=4", "optimizer.params.generations=1",
          "fitness.calib_samples=128", "score.target_macs_reduction=0.5", "pick=target_macs", "finalists.count=1",
          "finalists.steps=3", "finetune.epochs=2", "finetune.latency.enabled=false"]


def test_search_and_finetune_compute_recounted_by_hand(trained, tmp_path):
    """LeNet-5 (no BN: no adaptive-BN passes) on digits, L1 channels (no importance passes)."""
    runs = {}
    for continued in ("true", "false"):
        run = tmp_path / f"continue-{continued}"
        run_cli("search.py", *paths(trained), *SEARCH, f"finalists.continue_winner={continued}", f"hydra.run.dir={run}")
        runs[continued] = run
    run = runs["true"]
    records = json.loads((run / "evaluations.json").read_text())
    summary = json.loads((run / "search_summary.json").read_text())
    finalists = json.loads((run / "finalists.json").read_text())
    (row,) = json.loads((run / "finetune" / "results.json").read_text())["results"]
    base = summary["baseline_macs"]
    train_n, val_n = _bundle_sizes(trained)
    batch = 64  # conf/finetune/default.yaml
    by_id = {r["id"]: r for r in records}

    proxy = sum(128 * r["macs"] for r in records)  # each new plan: 128 calibration images through its pruned net
    finalist = {f["id"]: 3 * batch * (3 * by_id[f["id"]]["macs"] + base)  # 3 KD steps: student fwd+bwd, teacher fwd
                + 2 * val_n * by_id[f["id"]]["macs"] for f in finalists["rows"]}  # val before and after
    assert summary["compute_macs_by_phase"] == {"total": proxy + sum(finalist.values()), "importance": 0,
                                                "proxy": proxy, "finalists": sum(finalist.values()), "finetune": 0,
                                                "retrain": 0}
    macs = row["macs"]
    trained_images = 2 * train_n - 3 * batch  # the winner's first 3 steps were its finalist fine-tune
    finetune = trained_images * (3 * macs + base) + 3 * val_n * macs  # val before + after each epoch
    assert row["compute_macs_by_phase"]["finetune"] == finetune
    assert row["compute_macs"] == proxy + sum(finalist.values()) + finetune
    assert row["steps"] == 2 * math.ceil(train_n / batch)

    # started over instead: the same weights, 3 more steps of compute
    (again,) = json.loads((runs["false"] / "finetune" / "results.json").read_text())["results"]
    assert again["test_acc"] == row["test_acc"] and again["val_acc"] == row["val_acc"]
    mine = torch.load(next((run / "finetune").glob("pruned-*.pt")), weights_only=True)["state_dict"]
    theirs = torch.load(next((runs["false"] / "finetune").glob("pruned-*.pt")), weights_only=True)["state_dict"]
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert again["compute_macs"] - row["compute_macs"] == 3 * batch * (3 * macs + base)
    assert "| compute |" in (run / "finetune" / "results.md").read_text()
