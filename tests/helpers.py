"""Helpers shared by several test modules: running the entry points, small trained models."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gaprune.data.datasets import DataBundle
from gaprune.data.loaders import make_loader
from gaprune.engine.training import TrainConfig, seed_everything, train
from gaprune.models import build_model
from gaprune.pruning.importance import compute_importance
from gaprune.pruning.units import discover_units

X0 = torch.zeros(1, 1, 32, 32)
REPO = Path(__file__).resolve().parents[1]


_last_start: dict[str, float] = {}  # output root -> when an in-process job last started there


def run_cli(script: str, *overrides: str, check: bool = True, process: bool = False) -> subprocess.CompletedProcess:
    """Run an entry point (train.py, search.py, ...) as `python <script> <overrides>` would, from
    the repo root. In this process by default (the job's whole path: Hydra, the job wrapper, exit
    codes, stdout / stderr), without paying a fresh interpreter's torch import; `process=True`
    starts a real one (signals, locks held by another process, a fresh process's reload)."""
    proc = _run_process(script, overrides) if process else _run_here(script, overrides)
    if check and proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _run_process(script: str, overrides: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def _run_here(script: str, overrides: tuple[str, ...]) -> subprocess.CompletedProcess:
    """`runpy` runs the script as __main__ (so Hydra finds conf/ beside it, as from the shell);
    what a job changes in this process (argv, cwd, env, the SIGTERM handler, torch's threads, Hydra's
    global state) is put back after."""
    import contextlib
    import io
    import os
    import runpy
    import traceback

    from hydra.core.global_hydra import GlobalHydra

    root = next((o.split("=", 1)[1] for o in overrides if o.startswith("paths.output_root=")), "")
    while int(time.time()) == int(_last_start.get(root, 0.0)):  # run dirs are named to the second
        time.sleep(0.05)
    _last_start[root] = time.time()
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, cwd, env = sys.argv, os.getcwd(), dict(os.environ)
    sigterm, threads = signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    sys.argv = [str(REPO / script), *overrides]
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(REPO / script), run_name="__main__")
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            except BaseException:  # what a real process would die of: exit 1 with its traceback
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        signal.signal(signal.SIGTERM, sigterm)
        torch.set_num_threads(threads)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(sys.argv[:1] + [script, *overrides], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def hydra_job(primary: str, *overrides: str, run: Path | None = None):
    """The job config of `primary` (conf/<primary>.yaml) with these command-line overrides, as inside
    a Hydra job (HydraConfig set); with `run`, that is the job's run dir (created, as Hydra does)."""
    import copy

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(primary, overrides=list(overrides), return_hydra_config=True)
    if run is not None:
        run.mkdir(parents=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir, cfg.hydra.job.name = str(run), primary
    job = copy.deepcopy(cfg)
    with open_dict(job):
        del job["hydra"]
    HydraConfig.instance().set_config(cfg)
    try:
        yield job
    finally:
        HydraConfig.instance().cfg = None


def script_module(name: str):
    """A user tool of scripts/ (`scripts/<name>.py`) imported as a module, to call its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_error(proc: subprocess.CompletedProcess, *named: str) -> str:
    """Exit 2, no traceback, exactly one `gaprune: error:` line naming everything in `named`; returns it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gaprune: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for text in named:
        assert text in errors[0], errors[0]
    return errors[0]


def interrupted(script: str, overrides: list[str], saved, sig: int = signal.SIGINT) -> tuple[list[str], str]:
    """Start `script`, send `sig` (Ctrl-C's SIGINT, or SIGTERM) once `saved()` finds its first
    resumable state, and check it ends with exit 130 and no traceback; returns (its `gaprune:`
    lines, stderr)."""
    # default SIGINT in the child even when pytest itself runs in the background (`cmd &` ignores SIGINT,
    # and an ignored signal stays ignored across exec)
    proc = subprocess.Popen([sys.executable, str(REPO / script), *overrides], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(saved()):
        time.sleep(0.05)
    assert proc.poll() is None, f"{script} ended before its first state was saved"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr + stdout
    return [line for line in stderr.splitlines() if line.startswith("gaprune:")], stderr


def baseline_of(root: Path, model: str = "lenet5", dataset: str = "digits") -> Path:
    """The one default baseline under <root>/ck (its name carries a key of the training config)."""
    (path,) = (root / "ck").glob(f"{model}-{dataset}-*.pt")
    return path


def paths(root: Path) -> list[str]:
    """Overrides that keep checkpoints and outputs under `root`."""
    return [f"paths.checkpoints={root / 'ck'}", f"paths.output_root={root / 'out'}"]


def trained_on_digits(digits: DataBundle, name: str, epochs: int, include_linear: bool, **kwargs):
    """(model trained `epochs` on digits, its units, taylor importance, val batches of 64)."""
    seed_everything(0)
    model = build_model(name, digits.num_classes, digits.in_channels, digits.image_size, **kwargs)
    train(model, make_loader(digits, "train", 64, shuffle=True, seed=0), make_loader(digits, "val", 256),
          TrainConfig(epochs=epochs, lr=0.05))
    model.eval()
    units = discover_units(model, X0, include_linear=include_linear)
    calib = list(make_loader(digits, "val", 64))
    importance = compute_importance("taylor", model, units, lambda: iter(calib), seed=0)
    return model, units, importance, calib


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
