"""scripts/bench_quality.py end to end on a tiny setting (digits, via the missing-dataset fallback):
every arm reaches the MACs target with the same fine-tune budget, fidelity taus are computed, and
results.json / results.md are written. Keeps the benchmark from rotting (~10 s)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "scripts" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quality_tiny_run(tmp_path, capsys):
    bench = load_script()
    args = bench.parse_args([
        "--quick", "--dataset", "mnist", "--data-dir", str(tmp_path / "no-data"), "--target", "0.6",
        "--population", "4", "--generations", "1", "--baseline-epochs", "2", "--finetune-epochs", "1",
        "--fidelity-plans", "5", "--fidelity-epochs", "1", "--fidelity-window", "0.1", "--out", str(tmp_path / "out"),
    ])
    results = bench.run_benchmark(args)
    out = capsys.readouterr().out
    assert "falling back to scikit-learn's digits" in out
    assert "| GA (NSGA-II, calib) |" in out and "Kendall tau" in out

    assert results["setting"]["dataset"]["name"] == "digits"
    arms = {entry["arm"]: entry for entry in results["comparison"]}
    assert set(arms) == {"ga", "random", "global_taylor", "uniform_l1"}
    for entry in arms.values():
        assert min(entry["macs_reduction"]) >= 0.6 - 1e-9  # every arm at (or above) the MACs target
        assert entry["finetune_epochs"] == [1] and entry["kd"] == [True]  # the same fine-tune budget
        assert all(0.0 <= acc <= 1.0 for acc in entry["test_acc"])
    assert arms["ga"]["evaluations"][0] <= 8 and arms["random"]["evaluations"][0] <= 8  # same proposal budget

    fidelity = results["fidelity"]
    assert fidelity["plans"] == 5
    assert {k["fitness"] for k in fidelity["kendall"]} >= {"taylor_proxy", "calib", "distortion"}
    assert any("no BatchNorm" in note for note in fidelity["notes"])  # LeNet-5: adaptive BN skipped
    assert all(0.5 - 1e-9 <= p["macs_reduction"] <= 0.7 + 1e-9 for p in fidelity["per_plan"])

    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["comparison"][0]["arm"] == "ga"
    assert "## Proxy fidelity" in (tmp_path / "out" / "results.md").read_text()
