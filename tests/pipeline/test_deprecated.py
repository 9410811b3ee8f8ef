"""The deprecated spellings still work for one release, each with a one-line notice:
scripts/baseline.py (-> scripts/oneshot.py, method= -> oneshot=) and encoding=weight_mask
(-> searcher=layerwise_weight_mask, encoding.params -> searcher.params)."""
from __future__ import annotations

import json

from helpers import paths, run_cli, script_module


def notices(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "deprecated" in line]


def test_baseline_shim_translates_method_overrides() -> None:
    shim = script_module("baseline")
    assert shim.translate(["method=lamp", "method.params.rule=min", "+method.params.x=1", "-m", "methods=1",
                           "target_sparsity=0.9"]) == [
        "oneshot=lamp", "oneshot.params.rule=min", "+oneshot.params.x=1", "-m", "methods=1", "target_sparsity=0.9"]


def test_scripts_baseline_py_still_runs_a_one_shot_pruner(trained, tmp_path):
    proc = run_cli("scripts/baseline.py", f"paths.checkpoints={trained / 'ck'}", f"paths.output_root={tmp_path}",
                   "logger.mode=disabled", "finetune.epochs=1", "method=global_taylor", "method.params.rule=min",
                   "target_macs_reduction=0.6")
    assert notices(proc.stderr) == [
        "scripts/baseline.py is deprecated; use scripts/oneshot.py oneshot=<name> (same options)"]
    run = next((tmp_path / "oneshot").iterdir())
    row = json.loads((run / "results.json").read_text())["results"][0]
    assert row["pick"] == "global_taylor" and row["plan_id"] == "min" and row["macs_reduction"] >= 0.6


def test_encoding_weight_mask_still_runs_the_layerwise_search(trained, tmp_path):
    proc = run_cli("search.py", *paths(trained)[:1], f"paths.output_root={tmp_path}", "logger.mode=disabled",
                   "then_finetune=false", "encoding=weight_mask", "encoding.params.layers=fc2",
                   "encoding.params.population=4", "encoding.params.generations=1", "encoding.params.final_eval=false")
    assert len(notices(proc.stderr)) == 1 and "searcher=layerwise_weight_mask" in notices(proc.stderr)[0]
    run = next((tmp_path / "search").iterdir())
    summary = json.loads((run / "search_summary.json").read_text())
    assert summary["searcher"] == "layerwise_weight_mask" and summary["layers"] == ["fc2"]
    assert (run / "weight_masks.json").is_file() and (run / "layerwise_state.pt").is_file()


def test_options_renamed_this_release_keep_working_with_a_notice(capsys) -> None:
    from gaprune.utils.job import renamed_overrides

    assert renamed_overrides(["objective.target_macs_reduction=0.7", "+objective.w_macs=1", "seed=1",
                              "finalists.calib_samples=64", "optimizer.objectives=[proxy]"]) == [
        "score.target_macs_reduction=0.7", "+score.w_macs=1", "seed=1", "finalists.val_samples=64",
        "optimizer.objectives=[proxy]"]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == ("gaprune: objective.target_macs_reduction is now score.target_macs_reduction "
                        "(the old name works for one release)") and len(lines) == 3


def test_a_renamed_option_on_the_command_line_reaches_the_job(trained, tmp_path):
    proc = run_cli("search.py", *paths(trained)[:1], f"paths.output_root={tmp_path}", "logger.mode=disabled",
                   "objective.target_macs_reduction=1.5", check=False)
    assert "score.target_macs_reduction=1.5 is out of range" in proc.stderr and proc.returncode == 2
