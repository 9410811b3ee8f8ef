"""The code passes the repository's ruff config (pyproject.toml [tool.ruff])."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import REPO


def test_ruff_passes():
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
