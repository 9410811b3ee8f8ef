"""Crash safety and bad input: kill -9 then resume reproduces an uninterrupted run; every bad
input is one clear line, a non-zero exit, and nothing half-written."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, baseline_of, run_cli

SEARCH = ["optimizer.params.population=24", "optimizer.params.generations=12", "fitness.calib_samples=512",
          "then_finetune=false", "logger.mode=disabled"]


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items()} for r in records]


def test_search_killed_mid_run_resumes_to_the_uninterrupted_result(trained, tmp_path):
    ck = f"paths.checkpoints={trained / 'ck'}"
    run_cli("search.py", ck, f"paths.output_root={tmp_path / 'full'}", *SEARCH)
    full = next((tmp_path / "full" / "search").iterdir())

    proc = subprocess.Popen([sys.executable, str(REPO / "search.py"), ck, f"paths.output_root={tmp_path / 'cut'}", *SEARCH],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        states = list((tmp_path / "cut").rglob("state.json"))
        if states:
            try:
                generation = json.loads(states[0].read_text())["generation"]
            except (json.JSONDecodeError, OSError):
                generation = -1  # never happens with atomic writes; tolerate a racing read on exotic fs
            if generation >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = generation
                break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "search finished before it could be killed"
    cut = states[0].parent
    assert json.loads((cut / "state.json").read_text())["generation"] < 12
    assert not (cut / "search_summary.json").exists()

    run_cli("search.py", ck, f"paths.output_root={tmp_path / 'cut'}", f"resume={cut}", *SEARCH)
    for name in ("evaluations.json", "pareto.json", "picks.json"):
        assert json.loads((cut / name).read_text()) == json.loads((full / name).read_text()), name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(json.loads((cut / "generations.json").read_text())) == strip(json.loads((full / "generations.json").read_text()))


def test_finetune_interrupted_resumes_from_its_last_epoch(trained, tmp_path):
    """An interrupted fine-tune continues from the saved epoch and ends with the same weights."""
    from gaprune.data.datasets import load_dataset
    from gaprune.data.loaders import make_loader
    from gaprune.engine.checkpoint import example_input, load_model
    from gaprune.engine.training import TrainConfig, train_with_state
    from gaprune.pruning.importance import compute_importance
    from gaprune.pruning.physical import prune_model
    from gaprune.pruning.units import discover_units
    from gaprune.search.encodings import build_encoding
    import random

    teacher, meta, _ = load_model(baseline_of(trained))
    units = discover_units(teacher, example_input(meta), include_linear=True)
    importance = compute_importance("l1", teacher, units, lambda: [], 0)
    encoding = build_encoding("ratio", units, importance, r_min=0.2)
    plan = encoding.decode(encoding.random_genome(random.Random(1)))
    bundle = load_dataset("digits")
    config = TrainConfig(epochs=4, lr=0.01)

    class Log:
        def __init__(self, stop_after=None):
            self.calls, self.stop_after = 0, stop_after

        def __call__(self, row):
            self.calls += 1
            if self.stop_after is not None and self.calls > self.stop_after:
                raise KeyboardInterrupt  # crash after the state of epoch `stop_after` was saved

    def run(state_path, logger):
        torch.manual_seed(0)
        student = prune_model(teacher, units, plan, example_input(meta))
        batches = make_loader(bundle, "train", 64, shuffle=True, augment=True, seed=0)
        history = train_with_state(student, batches, make_loader(bundle, "val", 256), config, state_path, teacher=teacher,
                                   on_epoch=logger)
        return student, history

    reference, ref_history = run(tmp_path / "a.pt", Log())
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt", Log(stop_after=2))
    assert len(torch.load(tmp_path / "b.pt", weights_only=True)["history"]) == 3  # saved before the crash
    resumed, history = run(tmp_path / "b.pt", Log())
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in ref_history]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class Malicious:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _bad_inputs(root: Path, trained_root: Path) -> dict[str, tuple[str, list[str], str]]:
    lenet = baseline_of(trained_root)
    corrupt = root / "corrupt.pt"
    corrupt.write_bytes(lenet.read_bytes()[: lenet.stat().st_size // 2])  # a write cut short
    evil = root / "evil.pt"
    torch.save({"format": "gaprune-baseline", "state_dict": {}, "meta": Malicious()}, evil)
    return {
        "unknown group option": ("search.py", ["model=resnet1000"], "Could not find 'model/resnet1000'"),
        "ratio bounds": ("search.py", ["encoding.params.r_min=1.5"], "encoding.params.r_min=1.5 is out of range"),
        "nsga2 population": ("search.py", ["optimizer.params.population=6"], "optimizer.params.population=6 does not work for NSGA-II"),
        "missing checkpoint": ("search.py", [f"baseline={root / 'nope.pt'}", "train_if_missing=false"], "not found; train it with"),
        "corrupt checkpoint": ("search.py", [f"baseline={corrupt}"], "is corrupt or not a torch file"),
        "pickle with code": ("search.py", [f"baseline={evil}"], "refusing to load"),
        "other model's checkpoint": ("search.py", [f"baseline={lenet}", "model=vgg16"], "holds a lenet5 but model=vgg16"),
        "dataset missing": ("train.py", ["dataset=cifar10", f"dataset.params.data_dir={root / 'empty'}"], "prepare.py cifar10"),
        "nan loss": ("train.py", ["trainer.lr=1e30", "trainer.epochs=2"], "lower the learning rate"),
    }


CASES = ["unknown group option", "ratio bounds", "nsga2 population", "missing checkpoint", "corrupt checkpoint",
         "pickle with code", "other model's checkpoint", "dataset missing", "nan loss"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(case, tmp_path, trained):
    script, overrides, expected = _bad_inputs(tmp_path, trained)[case]
    out = tmp_path / "out"
    proc = run_cli(script, *overrides, f"paths.checkpoints={tmp_path / 'ck'}", f"paths.output_root={out}",
                   "logger.mode=disabled", check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gaprune: error:")]
    assert len(errors) == 1
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").rglob("*.pt"))  # no checkpoint written
    leftovers = [p for p in out.rglob("*") if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"]
    assert not leftovers, leftovers
    assert "pwned" not in proc.stdout


def test_plan_removing_every_channel_is_refused(trained, tmp_path):
    out = [f"paths.checkpoints={trained / 'ck'}", f"paths.output_root={tmp_path}"]
    run_cli("search.py", *out, "optimizer=ga", "optimizer.params.population=8", "optimizer.params.generations=1",
            "fitness=taylor_proxy", "then_finetune=false", "logger.mode=disabled")
    run = next((tmp_path / "search").iterdir())
    front = json.loads((run / "pareto.json").read_text())
    front[0]["plan"]["units"][0]["keep"] = []
    (run / "pareto.json").write_text(json.dumps(front))
    proc = run_cli("finetune.py", *out, f"search_dir={run}", "pick=all", "logger.mode=disabled", check=False)
    assert proc.returncode == 2
    assert "removes every channel of unit 'conv1'" in proc.stderr, proc.stderr[-2000:]
