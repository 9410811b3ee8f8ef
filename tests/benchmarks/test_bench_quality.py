"""The quality benchmark (`python -m benchmarks.quality`) end to end on a tiny digits protocol:
every arm lands at the MACs target with the same fine-tune budget, proxy correlations are
computed, results are written in the documented schema, and a rerun skips every finished item."""
from __future__ import annotations

import json

import pytest

from benchmarks.quality import cli as bench
from benchmarks.quality.compute import finetune_compute, matched_steps
from benchmarks.quality.finalists import render_short_vs_full, short_vs_full
from benchmarks.quality.report import goal_check, report


@pytest.mark.slow  # a whole tiny protocol, run three times: minutes
def test_bench_quality_tiny_protocol_and_resume(tmp_path, capsys):
    argv = ["--protocol", "digits", "--out", str(tmp_path / "out"), "--arms", "default", "random", "uniform_l1",
            "--set", "baseline_epochs=2", "--set", "population=4", "--set", "generations=1",
            "--set", 'models={"resnet20": {"overrides": ["model.params.width=4"], "targets": [0.5], "seeds": [0]}}',
            "--set", "fidelity.resnet20.plans=4"]
    results = bench.main(argv)
    assert set(results["baselines"]) == {"resnet20"}
    cells = results["arms"]["resnet20@0.5"]
    assert set(cells) == {"default", "random", "uniform_l1"}
    for arm, cell in cells.items():
        assert cell["seeds"] == [0] and 0.0 <= cell["test_acc"][0] <= 1.0
        assert 0.5 - 1e-9 <= cell["macs_reduction"][0] <= 0.51 + (0.05 if arm == "uniform_l1" else 0.0)
    assert set(results["fidelity"]) >= {"taylor_proxy", "calib", "calib_adaptive_bn", "calib_adaptive_bn_all_val",
                                        "calib_adaptive_bn_bn32", "distortion", "finalists", "finalists_neg_loss"}
    assert all(set(v) == {"kendall_tau", "spearman"} for v in results["fidelity"].values())
    assert results["fidelity_studies"]["resnet20@0.5"]["plans_finetuned"] == 4
    goal = results["goal"]["resnet20@0.5"]  # the default against the better of random and uniform L1
    rivals = {arm: cells[arm]["test_acc"][0] for arm in ("random", "uniform_l1")}
    assert goal["best_simple"] == max(rivals, key=rivals.get)
    assert goal["margin"] == pytest.approx(cells["default"]["test_acc"][0] - max(rivals.values()))
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["arms"] == results["arms"]
    assert "## Proxy fidelity" in (tmp_path / "out" / "results.md").read_text()
    # the default's finalists next to the full fine-tunes: the uniform seed is the uniform_l1 arm's plan
    (short_vs_full,) = results["finalists_short_vs_full"]
    assert (short_vs_full["cell"], short_vs_full["seed"]) == ("resnet20@0.5", 0)
    assert short_vs_full["winner"]["test_acc"] == cells["default"]["test_acc"][0]
    assert short_vs_full["uniform"]["test_acc"] == cells["uniform_l1"]["test_acc"][0]
    default_path = tmp_path / "out" / "items" / "resnet20@0.5" / "default-s0.json"
    default_item = json.loads(default_path.read_text())
    assert sum(r["winner"] for r in default_item["finalists"]) == 1
    assert short_vs_full["uniform"]["id"] in {r["id"] for r in default_item["finalists"]}
    assert "## Finalists: lead over the one-shot seeds" in (tmp_path / "out" / "results.md").read_text()
    capsys.readouterr()

    items = sorted((tmp_path / "out" / "items").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in items}
    again = bench.main(argv)  # everything finished: nothing is recomputed
    assert again["arms"] == results["arms"]
    assert {p: p.stat().st_mtime_ns for p in items} == stamps
    assert "[bench]" not in capsys.readouterr().out.replace("[bench] wrote", "")

    # a proxy missing from the study (e.g. one added later) is scored alone, on the same plans
    scores_path = tmp_path / "out" / "items" / "fidelity" / "resnet20@0.5" / "scores.json"
    scores = json.loads(scores_path.read_text())
    dropped = scores["scores"].pop("calib_adaptive_bn_bn32")
    scores_path.write_text(json.dumps(scores))
    bench.main(argv)
    rescored = json.loads(scores_path.read_text())
    assert rescored["scores"]["calib_adaptive_bn_bn32"] == dropped and "partial" not in rescored
    assert rescored["scores"]["calib"] == scores["scores"]["calib"] and rescored["plans"] == scores["plans"]
    assert capsys.readouterr().out.count("[bench] fidelity resnet20@0.5:") == 1

    # an item written before items carried their finalists gains them from its run dir
    default_path.write_text(json.dumps({k: v for k, v in default_item.items() if k != "finalists"}))
    reported = bench.main(argv + ["--report"])
    assert json.loads(default_path.read_text()) == default_item
    assert reported["finalists_short_vs_full"] == results["finalists_short_vs_full"]


def _item(arm: str, seed: int, test_acc: float, keep_counts: list[int], finalists=None) -> dict:
    return {"model": "vgg16", "target": 0.73, "arm": arm, "seed": seed, "test_acc": test_acc,
            "keep_counts": keep_counts, **({"finalists": finalists} if finalists is not None else {})}


def test_finalists_short_vs_full_takes_the_first_records_as_the_seeds():
    rows = [{"id": 9, "proxy": 0.36, "finetune_acc": 0.68, "keep_counts": [3, 4], "winner": True},
            {"id": 0, "proxy": 0.27, "finetune_acc": 0.65, "keep_counts": [2, 2], "winner": False},
            {"id": 1, "proxy": 0.35, "finetune_acc": 0.66, "keep_counts": [1, 3], "winner": False}]
    items = [_item("default", 0, 0.71, [3, 4], rows), _item("uniform_l1", 0, 0.7102, [2, 2]),
             _item("global_l1", 0, 0.7076, [1, 3]),
             _item("default", 1, 0.70, [3, 4]),  # no finalists re-ranked: no row
             _item("default", 2, 0.70, [3, 4], rows), _item("uniform_l1", 2, 0.69, [2, 3])]  # a channel elsewhere
    table = short_vs_full(items)
    assert [(row["cell"], row["seed"]) for row in table] == [("vgg16@0.73", 0), ("vgg16@0.73", 2)]
    first, last = table
    assert first["winner"] == {"id": 9, "proxy": 0.36, "short_acc": 0.68, "test_acc": 0.71}
    assert first["uniform"] == {"id": 0, "proxy": 0.27, "short_acc": 0.65, "test_acc": 0.7102, "same_plan": True}
    assert (first["global"]["id"], first["global"]["test_acc"], first["global"]["same_plan"]) == (1, 0.7076, True)
    assert (last["uniform"]["test_acc"], last["uniform"]["same_plan"]) == (0.69, False)
    assert "global" not in last  # no global_l1 item on seed 2
    lines = render_short_vs_full(table, 100)
    assert "100-step" in lines[1]
    assert lines[-2].endswith("| +3.0 / -0.02 |") and "/ 69.00* |" in lines[-1]


def test_goal_check_takes_the_best_simple_mean_and_per_seed_margins():
    arms = {"m@0.5": {"default": {"seeds": [0, 1], "test_acc": [0.80, 0.78]},
                      "uniform_l1": {"seeds": [0, 1], "test_acc": [0.79, 0.77]},
                      "random": {"seeds": [0], "test_acc": [0.795]},
                      "taylor_nsga2": {"seeds": [0], "test_acc": [0.9]}},  # not a simple pruner
            "m@0.7": {"uniform_l1": {"seeds": [0], "test_acc": [0.7]}}}  # no default: no check
    (key,) = goal_check(arms)
    check = goal_check(arms)[key]
    assert key == "m@0.5" and check["best_simple"] == "random"
    assert check["margin"] == pytest.approx(0.79 - 0.795)
    assert check["per_seed_margin"] == {0: pytest.approx(0.005)}


def test_report_has_one_fidelity_study_per_model_and_keeps_the_first_as_the_issue_schema(tmp_path):
    import argparse

    spec = {"dataset": "cifar10", "train_limit": 100, "test_limit": None, "trainer": "cifar", "baseline_epochs": 1,
            "finetune_epochs": 2, "finetune_batch_size": 8, "population": 4, "generations": 1, "calib_samples": 8,
            "finalist_steps": 5, "models": {},
            "fidelity": {"resnet20": {"target": 0.7, "window": 0.05, "plans": 4, "epochs": 1, "importance": "taylor"},
                         "vgg16": {"target": 0.73, "window": 0.05, "plans": 4, "epochs": 2, "importance": "l1"},
                         "lenet5": {"target": 0.5, "window": 0.1, "plans": 4, "epochs": 1, "importance": "l1"}}}
    accs = {"resnet20@0.7": [0.6, 0.7, 0.5, 0.8], "vgg16@0.73": [0.7, 0.6, 0.8, 0.5]}
    for name, acc in accs.items():
        root = tmp_path / "items" / "fidelity" / name
        (root / "finetune").mkdir(parents=True)
        plans = [{"macs_reduction": 0.7 + 0.01 * i} for i in range(4)]
        scores = {"window": [0.65, 0.75], "plans": plans, "seconds": {"calib": 1.0},
                  "scores": {"calib": [0.1, 0.2, 0.3, 0.4], "finalists": [0.5, 0.6, 0.7, 0.8]}}
        (root / "scores.json").write_text(json.dumps(scores))
        rows = [{"plan_id": i, "test_acc": a} for i, a in enumerate(acc[:3])]  # plan 3 not fine-tuned yet
        (root / "finetune" / "results.json").write_text(json.dumps({"results": rows}))
    (tmp_path / "items" / "fidelity" / "lenet5@0.5").mkdir()  # a study not started: left out
    finalists = [{"id": 9, "proxy": 0.36, "finetune_acc": 0.68, "keep_counts": [3, 4], "winner": True},
                 {"id": 0, "proxy": 0.27, "finetune_acc": 0.65, "keep_counts": [2, 2], "winner": False}]
    cell = tmp_path / "items" / "vgg16@0.73"  # VGG-16's arms share its study's budget: their points join its plot
    cell.mkdir()
    for arm, acc, extra in (("default", 0.71, {"finalists": finalists}), ("uniform_l1", 0.70, {})):
        item = {**_item(arm, 0, acc, [3, 4] if arm == "default" else [2, 2]), **extra, "macs_reduction": 0.73,
                "params_reduction": 0.7, "val_acc_before_finetune": 0.1, "seconds": 1.0}
        (cell / f"{arm}-s0.json").write_text(json.dumps(item))
    args = argparse.Namespace(out=tmp_path, spec=spec, protocol="cifar10", threads=1, results=tmp_path / "results")
    results = report(args, {}, 0.0)
    assert list(results["fidelity_studies"]) == ["resnet20@0.7", "vgg16@0.73"]
    assert results["finalists_short_vs_full"][0]["uniform"]["test_acc"] == 0.70
    vgg = results["fidelity_studies"]["vgg16@0.73"]
    assert (vgg["plans_finetuned"], vgg["plans"], vgg["finetune_epochs"]) == (3, 4, 2)
    assert vgg["test_acc_range"] == [0.6, 0.8]
    # calib rises with the plan index; the fine-tuned three agree on 1 of 3 pairs (ResNet-20), 2 of 3 (VGG-16)
    assert results["fidelity"]["calib"]["kendall_tau"] == pytest.approx(-1 / 3)  # the first study's
    assert vgg["correlations"]["calib"]["kendall_tau"] == pytest.approx(1 / 3)
    text = (tmp_path / "results.md").read_text()
    assert "## Proxy fidelity, resnet20@0.7: 3/4" in text and "## Proxy fidelity, vgg16@0.73: 3/4" in text
    assert "each fine-tuned 2 epoch(s): test 60.00-80.00%" in text
    for name in accs:  # a scatter per study, shown in the Markdown
        assert (tmp_path / f"results-fidelity-{name}.png").stat().st_size > 0
        assert f"![{name}](results-fidelity-{name}.png)" in text


def test_matched_steps_spend_up_to_the_reference_compute_and_no_more():
    spec, sizes = {"finetune_batch_size": 100}, {"train": 1000, "val": 200}  # 10 steps an epoch
    student, teacher = 2.0, 10.0
    two_epochs = finetune_compute(spec, sizes, student, teacher, 2)
    assert two_epochs == 2000 * (3 * student + teacher) + 3 * 200 * student  # train + val before and after each epoch
    budget = 5 + finetune_compute(spec, sizes, student, teacher, 3, 25)
    epochs, steps = matched_steps(spec, sizes, budget, 5, student, teacher)
    assert (epochs, steps) == (3, 25)
    assert 5 + finetune_compute(spec, sizes, student, teacher, 3, 26) > budget
    # a continued finalist's steps are not spent again
    assert finetune_compute(spec, sizes, student, teacher, 2, skipped_steps=3) == two_epochs - 300 * (3 * student + teacher)


@pytest.mark.parametrize("flag, value, message", [("--targets", "0.6", "--targets [0.6] not in protocol cifar10"),
                                                  ("--seeds", "7", "--seeds [7] not in protocol cifar10"),
                                                  ("--finetune-epochs", "3", "--finetune-epochs [3] not in protocol")])
def test_subsets_outside_the_protocol_are_errors_not_empty_tables(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--protocol", "cifar10", "--models", "resnet20", flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
