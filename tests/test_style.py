"""The code passes the repository's ruff config (pyproject.toml [tool.ruff]), and no function or
module is longer than the project's limits (a long function is split into named steps, a long
module into modules of one concern each)."""
from __future__ import annotations

import ast
import shutil
import subprocess

import pytest

from helpers import REPO

MAX_FUNCTION_LINES = 60  # from `def` to its last line, docstring included (decorators not)
MAX_MODULE_LINES = 400
ENTRY_SCRIPTS = ("train.py", "search.py", "finetune.py")


def test_ruff_passes():
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def checked_files() -> list:
    """The package, the entry scripts, scripts/ and benchmarks/ (where they exist)."""
    files = sorted((REPO / "gaprune").rglob("*.py")) + [REPO / name for name in ENTRY_SCRIPTS]
    for folder in ("scripts", "benchmarks"):
        files += sorted((REPO / folder).rglob("*.py"))
    return [path for path in files if path.is_file()]


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in checked_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): " + "; ".join(long)


def test_no_module_is_longer_than_the_limit():
    long = [f"{path.relative_to(REPO)} ({n} lines)" for path in checked_files()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: " + "; ".join(long)
