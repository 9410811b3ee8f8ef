"""End-to-end: the entry points as a user runs them (subprocesses, real Hydra, real files)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from gaprune.engine.checkpoint import example_input, load_model
from gaprune.pruning.physical import count_macs_params
from helpers import REPO, baseline_of, paths, run_cli

FAST_SEARCH = ["optimizer.params.population=12", "optimizer.params.generations=4", "fitness.calib_samples=128"]


def only_run(root: Path, task: str) -> Path:
    runs = sorted(p.parent for p in (root / "out" / task).rglob(".hydra"))
    assert len(runs) == 1, runs
    return runs[0]


def test_train_learns_and_saves_a_loadable_baseline(trained):
    summary = json.loads((only_run(trained, "train") / "train_summary.json").read_text())
    assert summary["val_acc"] > 0.9 and summary["test_acc"] > 0.9  # 10 classes: chance is 0.1
    history = (only_run(trained, "train") / "history.csv").read_text().splitlines()
    first, last = (float(line.split(",")[1]) for line in (history[1], history[-1]))
    assert last < first / 3  # train loss fell
    model, meta, plan = load_model(baseline_of(trained))
    assert plan is None and meta["macs"] == count_macs_params(model, example_input(meta))[0]


def test_quickstart_runs_end_to_end_with_wandb_offline(tmp_path):
    """`python search.py` with no baseline: trains it, searches, fine-tunes the knee with KD."""
    proc = run_cli("search.py", *paths(tmp_path), *FAST_SEARCH, "trainer.epochs=12", "finetune.epochs=4",
                   "logger.mode=offline")
    run = only_run(tmp_path, "search")
    assert baseline_of(tmp_path).is_file()
    for name in ("evaluations.json", "evaluations.csv", "generations.csv", "pareto.json", "best_plan.json",
                 "state.json", "fitness.png", "pareto.png", "keep_ratios.png", "finetune/results.md"):
        assert (run / name).is_file(), name
    assert list((run / "wandb").glob("offline-run-*")), "wandb offline run missing"
    assert "| knee |" in proc.stdout
    results = json.loads((run / "finetune" / "results.json").read_text())
    row = results["results"][0]
    assert row["macs_reduction"] > 0.05
    assert row["macs"] == row["predicted_macs"]  # analytic search cost == torch-pruning count
    assert row["test_acc"] > 0.8
    pruned, meta, plan = load_model(next((run / "finetune").glob("pruned-knee-*.pt")))
    assert plan is not None and count_macs_params(pruned, example_input(meta))[0] == row["macs"]
    assert pruned(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_search_improves_and_finetune_standalone(trained, tmp_path):
    out = [f"paths.checkpoints={trained / 'ck'}", f"paths.output_root={tmp_path}"]
    run_cli("search.py", *out, "optimizer=ga", "optimizer.params.population=12", "optimizer.params.generations=6",
            "fitness.calib_samples=128", "then_finetune=false", "logger.mode=disabled")
    run = sorted((tmp_path / "search").iterdir())[0]
    generations = json.loads((run / "generations.json").read_text())
    assert [g["generation"] for g in generations] == list(range(7))
    best = [g["best_score"] for g in generations]
    assert best == sorted(best) and best[-1] > best[0]  # elitist GA: never worse, here better
    run_cli("finetune.py", *out, f"search_dir={run}", "pick=all", "finetune.epochs=1", "finetune.kd=false",
            "logger.mode=disabled")
    results = json.loads(next((tmp_path / "finetune").rglob("results.json")).read_text())
    front = json.loads((run / "pareto.json").read_text())
    assert len(results["results"]) == len(front) >= 2
    assert all(r["macs"] == r["predicted_macs"] for r in results["results"])
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path), "--out",
                             str(tmp_path / "table.md")], capture_output=True, text=True, check=True).stdout
    table_rows = [line for line in report.splitlines() if line.startswith("| ga ratio_strategy / calib")]
    assert len(table_rows) == len(front) and (tmp_path / "table.md").read_text().strip() == report.strip()


def test_hydra_multirun_sweeps_two_overrides(trained, tmp_path):
    out = [f"paths.checkpoints={trained / 'ck'}", f"paths.output_root={tmp_path}"]
    run_cli("search.py", "-m", *out, "optimizer=ga,nsga2", "encoding=ratio,ratio_strategy", "fitness=taylor_proxy",
            "optimizer.params.population=8", "optimizer.params.generations=2", "then_finetune=false",
            "logger.mode=disabled")
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "search" / "multirun").rglob("search_summary.json")]
    assert sorted((s["optimizer"], s["encoding"]) for s in summaries) == [
        ("ga", "ratio"), ("ga", "ratio_strategy"), ("nsga2", "ratio"), ("nsga2", "ratio_strategy")]


def test_missing_baseline_without_autotrain_is_one_clear_line(tmp_path):
    proc = run_cli("search.py", *paths(tmp_path), "train_if_missing=false", "logger.mode=disabled", check=False)
    assert proc.returncode == 2
    assert "not found; train it with: python train.py model=lenet5 dataset=digits" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_vgg16_search_on_prepared_cifar10(cifar10_root, tmp_path):
    """VGG-16 on real CIFAR-10 (from ../shared/data via prepare.py): train a tiny baseline, search."""
    common = [*paths(tmp_path), "model=vgg16", "dataset=cifar10", f"dataset.params.data_dir={cifar10_root}",
              "dataset.params.train_limit=330", "dataset.params.test_limit=100", "logger.mode=disabled"]
    run_cli("search.py", *common, "trainer.epochs=1", "trainer.batch_size=32", "importance.calib_batches=1",
            "importance.calib_batch_size=16", "fitness=taylor_proxy", "optimizer.params.population=8",
            "optimizer.params.generations=3", "then_finetune=false")
    summary = json.loads(next((tmp_path / "out" / "search").rglob("search_summary.json")).read_text())
    assert len(summary["units"]) == 13 and summary["data"]["name"] == "cifar10"
    assert summary["picks"]["knee"]["macs_reduction"] > 0.05
