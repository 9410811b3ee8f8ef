"""benchmarks/ (run as `python -m benchmarks.<name>`) uses the library as a user would: no private
gaprune name, only the modules docs/api.md lists, no sys.path tricks; the library and the user
tools never import it; its modules stay small enough to read."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys

import pytest

from helpers import REPO

BENCHMARKS = sorted((REPO / "benchmarks").rglob("*.py"))
ENTRY_POINTS = ["benchmarks.latency", "benchmarks.search_speed", "benchmarks.workers", "benchmarks.quality"]


def gaprune_imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """(gaprune module, names imported from it, line) of every gaprune import, in-function ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "gaprune":
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.split(".")[0] == "gaprune"]
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_benchmarks_import_no_private_gaprune_name():
    bad = []
    for path in BENCHMARKS:
        tree = ast.parse(path.read_text())
        bound = set()  # names the gaprune imports bind here: gaprune.<x>._y on them is private too
        for module, names, line in gaprune_imports(tree):
            if any(private(part) for part in module.split(".") + names):
                bad.append(f"{path.relative_to(REPO)}:{line}: {module} {names}")
            bound.update(names or [module.split(".")[0]])
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and private(node.attr):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in bound:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: .{node.attr}")
    assert bad == []


def test_every_gaprune_module_the_benchmarks_import_is_listed_in_docs_api():
    text = (REPO / "docs" / "api.md").read_text()
    section = text[text.index("## Building blocks the benchmarks use"):]
    listed = set(re.findall(r"`(gaprune(?:\.\w+)+)`", section))
    used = {module for path in BENCHMARKS for module, _, _ in gaprune_imports(ast.parse(path.read_text()))}
    assert sorted(used - listed - {"gaprune"}) == []


def test_benchmarks_need_no_sys_path_tricks():
    bad = [str(path.relative_to(REPO)) for path in BENCHMARKS
           if re.search(r"sys\.path|spec_from_file_location", path.read_text())]
    assert bad == []


def test_nothing_in_the_library_or_the_user_tools_imports_benchmarks():
    paths = [*(REPO / "gaprune").rglob("*.py"), *(REPO / "scripts").rglob("*.py"), *REPO.glob("*.py")]
    bad = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                       else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{path.relative_to(REPO)}:{node.lineno}" for m in modules if m.split(".")[0] == "benchmarks"]
    assert bad == []


def test_benchmark_modules_and_functions_stay_readable():
    too_long = []
    for path in BENCHMARKS:
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: "
                                f"{node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_each_benchmark_has_its_command_line(module, capsys):
    main = importlib.import_module(module + (".cli" if module == "benchmarks.quality" else "")).main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module}")


def test_a_benchmark_runs_as_a_module_from_the_repository_root():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: python -m benchmarks.quality")
