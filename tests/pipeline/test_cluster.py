"""Hydra's submitit launcher (the `cluster` extra): a local multirun runs every job to completion, and
a job signalled as preempted is requeued by submitit and resumes its own run dir to the result of an
uninterrupted job. The launcher presets compose with every key overridable."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gaprune.pipeline.setup import resolve_resume
from gaprune.utils.errors import GapruneError
from helpers import REPO, run_cli

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the cluster extra: pip install 'gaprune[cluster]'")

SEARCH = ["then_finetune=false", "logger.mode=disabled", "optimizer.params.population=4",
          "optimizer.params.generations=2", "fitness=finetune", "fitness.params.steps=5"]
COMPARED = ("evaluations.json", "pareto.json", "picks.json")


@pytest.fixture(scope="module")
def sweep(trained, tmp_path_factory) -> Path:
    """The sweep dir of `search.py -m hydra/launcher=submitit_local seed=0,1` (both jobs at once)."""
    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # two jobs on a small CPU; the resumed job below runs the same
        run_cli("search.py", "-m", "hydra/launcher=submitit_local", "seed=0,1", f"paths.checkpoints={trained / 'ck'}",
                f"paths.output_root={out}", *SEARCH)
    (directory,) = (out / "search" / "multirun").iterdir()
    return directory


@pytest.mark.slow  # the sweep: two searches under submitit
def test_submitit_local_multirun_runs_every_job_to_completion(sweep):
    for job, seed in ((0, 0), (1, 1)):
        summary = json.loads((sweep / str(job) / "search_summary.json").read_text())
        assert summary["evaluations"] >= 4
        overrides = OmegaConf.load(sweep / str(job) / ".hydra" / "overrides.yaml")
        assert f"seed={seed}" in overrides
    assert (sweep / "0" / "evaluations.json").read_text() != (sweep / "1" / "evaluations.json").read_text()


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: no psutil needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the job's process through /proc")
def test_preempted_local_job_requeues_and_resumes_to_the_uninterrupted_result(sweep, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen([sys.executable, str(REPO / "search.py"), "-m", "hydra/launcher=local", "seed=0",
                             f"paths.checkpoints={trained / 'ck'}", f"paths.output_root={tmp_path}", *SEARCH],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signalled, deadline = [], time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if not signalled and list(tmp_path.rglob("0/state.json")):  # generation 0 saved
            (controller,) = [int(p.name) for p in tmp_path.rglob(".submitit/*") if p.name.isdigit()]
            signalled = children(controller)  # the job's task process: submitit's preemption signal
            for pid in signalled:
                os.kill(pid, signal.SIGUSR2)
        time.sleep(0.05)
    assert proc.wait(timeout=max(1.0, deadline - time.time())) == 0
    assert signalled, "the job finished before it could be signalled"
    (job,) = tmp_path.rglob("0/search_summary.json")
    job = job.parent
    log = "".join(p.read_text() for p in tmp_path.rglob(".submitit/*/*_log.out"))
    assert "Requeued job" in log
    resumed = re.search(r"resuming search in \S+ after generation (\d+)", log)
    assert resumed and int(resumed.group(1)) < 2, log[-2000:]
    for name in COMPARED:
        assert (job / name).read_bytes() == (sweep / "0" / name).read_bytes(), name


def test_a_saved_run_dir_resumes_implicitly_only_under_submitit(tmp_path, monkeypatch):
    (tmp_path / "state.json").write_text("{}")
    cfg = OmegaConf.create({"resume": False})
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    with pytest.raises(GapruneError, match="already holds a search run"):  # never started over either
        resolve_resume(cfg, tmp_path, ("state.json",), "search")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert resolve_resume(cfg, tmp_path, ("state.json",), "search") == (tmp_path, True)
    assert resolve_resume(cfg, tmp_path / "fresh", ("state.json",), "search") == (tmp_path / "fresh", False)


@pytest.mark.parametrize("preset,target", [("slurm", "SlurmLauncher"), ("local", "LocalLauncher")])
def test_launcher_presets_compose_and_every_key_overrides(preset, target):
    overrides = [f"hydra/launcher={preset}", "hydra.launcher.timeout_min=30", "hydra.launcher.gpus_per_node=2"]
    if preset == "slurm":
        overrides += ["hydra.launcher.partition=gpu", "hydra.launcher.cpus_per_task=4", "hydra.launcher.mem_gb=16",
                      "hydra.launcher.max_num_timeout=5"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        launcher = compose("search", overrides=overrides, return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith(target)
    assert (launcher.timeout_min, launcher.gpus_per_node) == (30, 2)
    if preset == "slurm":
        assert (launcher.partition, launcher.cpus_per_task, launcher.mem_gb, launcher.max_num_timeout) == ("gpu", 4, 16, 5)
