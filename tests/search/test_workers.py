"""fitness.workers: a search whose generations are evaluated on 2 Ray workers writes the same bytes
as a serial one; a serial search never imports Ray; bad values are one line naming the key and fix."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from gaprune.search.workers import check_workers, pieces
from gaprune.utils.errors import GapruneError
from helpers import REPO, run_cli

SEARCH = ["then_finetune=false", "logger.mode=disabled", "optimizer.params.population=8",
          "optimizer.params.generations=1", "fitness=finetune", "fitness.params.steps=5"]
# search.py in a fresh interpreter that reports afterwards whether anything imported Ray
SERIAL = ("import runpy, sys\n"
          "sys.argv = ['search.py', *sys.argv[1:]]\n"
          "runpy.run_path('search.py', run_name='__main__')\n"
          "print('ray imported:', 'ray' in sys.modules)\n")


@pytest.mark.parametrize("count,workers,unit", [(8, 2, 1), (7, 2, 1), (3, 4, 1), (20, 2, 8), (1, 3, 8)])
def test_pieces_are_contiguous_ordered_and_whole_groups(count, workers, unit):
    ranges = pieces(count, workers, unit)
    assert len(ranges) <= workers and ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a < b for a, b in ranges) and all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    assert all((b - a) % unit == 0 for a, b in ranges[:-1])
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= unit


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_bad_worker_counts_are_one_line(value):
    with pytest.raises(GapruneError, match=r"fitness\.workers=.* must be an integer >= 1"):
        check_workers(value)


def test_workers_without_ray_name_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert check_workers(1) == 1  # serial needs nothing
    with pytest.raises(GapruneError, match=r"fitness\.workers=2 needs Ray: pip install 'gaprune\[ray\]'"):
        check_workers(2)


def test_workers_zero_on_the_command_line_is_one_line_before_any_work(tmp_path):
    proc = run_cli("search.py", f"paths.checkpoints={tmp_path / 'ck'}", f"paths.output_root={tmp_path / 'out'}",
                   "fitness.workers=0", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("gaprune: error: fitness.workers=0 must be an integer >= 1")
    assert not (tmp_path / "ck").exists()


@pytest.mark.slow  # Ray's start-up and two worker processes: minutes on a small CPU
def test_two_workers_write_the_serial_records_byte_for_byte(trained, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'gaprune[ray]'")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the serial process and each worker: one torch thread
    ck = f"paths.checkpoints={trained / 'ck'}"
    serial = subprocess.run([sys.executable, "-c", SERIAL, ck, f"hydra.run.dir={tmp_path / 'serial'}", *SEARCH],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert serial.returncode == 0, serial.stderr[-3000:]
    assert "ray imported: False" in serial.stdout
    run_cli("search.py", ck, f"hydra.run.dir={tmp_path / 'workers'}", "fitness.workers=2", *SEARCH)
    records = (tmp_path / "serial" / "evaluations.json").read_bytes()
    assert len(records) > 1000 and b'"generation": 1' in records  # both generations evaluated
    for name in ("evaluations.json", "evaluations.csv", "pareto.json", "picks.json"):
        assert (tmp_path / "workers" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes(), name
