"""Shared fixtures: the bundled digits; real CIFAR-10 / MNIST prepared once from the offline archives.

The shared data folder is `<root>/shared/data` beside the repository (`<root>/main`), or
`$GAPRUNE_SHARED_DATA`. Prepared files are cached in `~/.cache/gaprune-test-data/`, keyed by
the archive's size, so only the first run pays for decoding (CIFAR-10 ~10 s, MNIST ~5 s).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    env = os.environ.get("GAPRUNE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gaprune-test-data"


def _prepared(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run prepare.py once per archive version; later runs reuse the cached output."""
    shared = shared_data_dir()
    script, archive = shared / "prepare.py", shared / f"{name}-images.zip"
    if not script.is_file() or not archive.is_file():
        pytest.skip(f"{name}: no {archive} or {script} (set GAPRUNE_SHARED_DATA)")
    root = _cache_root() / f"{name}-{archive.stat().st_size}"
    done = root / ".complete"
    if done.is_file():
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = tmp_path_factory.mktemp(name)
        done = root / ".complete"
    proc = subprocess.run(
        [sys.executable, str(script), name, "--root", str(root), "--archive", str(archive)],
        capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"prepare.py {name} failed:\n{proc.stdout}\n{proc.stderr}")
    done.write_text("ok\n")
    return root


@pytest.fixture(scope="module")
def digits():
    """The bundled digits dataset (seed 0)."""
    from gaprune.data.datasets import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding cifar-10-batches-py/ rebuilt from the shared archive."""
    return _prepared("cifar10", tmp_path_factory)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding MNIST/raw/ rebuilt (byte-identical) from the shared archive."""
    return _prepared("mnist", tmp_path_factory)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose ck/ holds a LeNet-5 digits baseline trained by train.py with the default
    recipe (once per session), so it is the default baseline of every default-recipe run there."""
    from helpers import paths, run_cli

    root = tmp_path_factory.mktemp("workspace")
    run_cli("train.py", *paths(root), "logger.mode=disabled")
    return root
