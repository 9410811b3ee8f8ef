"""scripts/report.py: one table per (model, dataset) with its own baseline; a method's runs on
several seeds are one row (mean ± std, the seeds listed); speedups below 1x are flagged."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import REPO


def results_dir(root: Path, name: str, model: str, dataset: str, seed: int, test_acc: float, speedup: float,
                baseline_acc: float) -> None:
    row = {"plan_id": 1, "pick": "uniform_l1", "test_acc": test_acc, "test_acc_delta": test_acc - baseline_acc,
           "macs_reduction": 0.5, "params_reduction": 0.4, "compute_macs": 2e12, "latency_ms": 1.0,
           "latency_spread": 0.2, "speedup": speedup, "throughput_speedup": 1.5}
    baseline = {"val_acc": baseline_acc, "test_acc": baseline_acc, "macs": 1e6, "params": 1e5, "latency_ms": 1.2}
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(
        {"baseline": baseline, "results": [row], "oneshot": "uniform_l1", "model": model, "dataset": dataset,
         "seed": seed}))


def test_groups_by_model_and_dataset_and_aggregates_seeds(tmp_path):
    results_dir(tmp_path, "a", "resnet20", "cifar10", 0, 0.70, 1.2, 0.80)
    results_dir(tmp_path, "b", "resnet20", "cifar10", 1, 0.74, 1.4, 0.80)
    results_dir(tmp_path, "c", "lenet5", "digits", 0, 0.95, 0.9, 0.99)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout
    lenet, resnet = out.split("### ")[1:]
    assert lenet.startswith("Results: lenet5 / digits") and resnet.startswith("Results: resnet20 / cifar10")
    assert "| baseline | - | 99.00 |" in lenet and "| baseline | - | 80.00 |" in resnet  # each its own baseline
    (row,) = [line for line in resnet.splitlines() if line.startswith("| one-shot")]
    assert "| 0, 1 | 72.00 ± 2.83 |" in row and "1.30x |" in row and "±10%" in row
    (slow,) = [line for line in lenet.splitlines() if line.startswith("| one-shot")]
    assert "0.90x (slower)" in slow and "1.50x (slower)" not in slow
