"""gaprune works pip-installed, away from a checkout: the configs ship inside the package
(`gaprune/conf`, a link to the top-level conf/ in a checkout), the Hydra plugin beside it, and the
four jobs are console scripts (`gaprune.cli`)."""
from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import venv

import pytest

from gaprune import cli
from gaprune.utils.conf import CONF_DIR
from helpers import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (pyproject allows 3.10)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_package_carries_every_config():
    assert CONF_DIR == REPO / "gaprune" / "conf" and CONF_DIR.resolve() == (REPO / "conf").resolve()
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["gaprune"]
    files = [p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*") if p.is_file()]
    shipped = [f for f in files if any(fnmatch.fnmatch(f"conf/{f}", pattern) and
                                       f"conf/{f}".count("/") == pattern.count("/") for pattern in patterns)]
    assert sorted(shipped) == sorted(files) and len(files) > 50  # nothing of conf/ is left out of the wheel
    assert "hydra_plugins*" in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]


def test_each_console_script_runs_a_job_with_its_config():
    scripts = PYPROJECT["project"]["scripts"]
    assert {name: target for name, target in scripts.items()} == {
        f"gaprune-{task}": f"gaprune.cli:{task}" for task in cli.JOBS}
    for task, runner in cli.JOBS.items():
        module, function = runner.split(":")
        assert (CONF_DIR / f"{task}.yaml").is_file() and callable(getattr(cli, task))
        assert callable(getattr(__import__(module, fromlist=[function]), function))


@pytest.mark.slow
def test_a_built_wheel_runs_from_any_directory(tmp_path):
    """Build the wheel, install it (its dependencies are this environment's) into a fresh venv, and
    run a console script from an empty folder: configs, the torchvision model plugin, one-line errors."""
    had_build = (REPO / "build").exists()
    try:
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                                str(REPO)], capture_output=True, text=True, timeout=600)
    finally:
        if not had_build:  # setuptools builds in the checkout's build/: leave the checkout as it was
            shutil.rmtree(REPO / "build", ignore_errors=True)
    assert built.returncode == 0, built.stderr[-2000:]
    venv.create(tmp_path / "env", with_pip=True)
    site = next((tmp_path / "env" / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(next(p for p in sys.path if p.endswith("site-packages")) + "\n")
    bin_dir = tmp_path / "env" / "bin"
    wheel = next((tmp_path / "dist").glob("gaprune-*.whl"))
    installed = subprocess.run([str(bin_dir / "pip"), "install", "-q", "--no-deps", str(wheel)], capture_output=True,
                               text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    work = tmp_path / "work"
    work.mkdir()
    shown = subprocess.run([str(bin_dir / "gaprune-search"), "model=torchvision.resnet18", "--cfg", "job"], cwd=work,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "name: torchvision.resnet18" in shown.stdout, shown.stderr[-2000:]
    bad = subprocess.run([str(bin_dir / "gaprune-train"), "seed=-3"], cwd=work, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("gaprune: error: seed=-3")
    assert str(site) in subprocess.run([str(bin_dir / "python"), "-c", "from gaprune.utils.conf import CONF_DIR; print(CONF_DIR)"],
                                       cwd=work, capture_output=True, text=True, timeout=120).stdout
