"""Parallel population evaluation benchmark: the `finetune` fitness search on digits (LeNet-5) with
fitness.workers=1 and fitness.workers=N side by side, in one run.

Each arm is `search.py` in a fresh process (as a user runs it), same seed and settings, so the
workers arm pays Ray's start-up and the shipping of the model and data to its workers. A warm-up
search first (not timed) trains the baseline when missing and caches its importance. Reported
per arm: the command's wall time, the search's own time (first generation included, where Ray
starts) and the steady-state time of the later generations (no start-up), each with the serial /
workers ratio; and whether both arms wrote byte-identical records. Both arms run with the same
torch thread count per evaluating process (`--threads`, default cores // N) so that the records
can be compared byte for byte. Writes <out>.json and <out>.md with the exact command, the machine's
load and the wall time.

    python -m benchmarks.workers                      # 8 plans x 3 generations, 1 vs 2 workers
    python -m benchmarks.workers --workers 4 --population 16
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gaprune.utils.io import atomic_write_text, read_json, write_json

REPO = Path(__file__).resolve().parents[1]  # search.py runs from here

RECORDS = ("evaluations.json", "pareto.json", "picks.json")


def run(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def arm(workers: int, common: list[str], runs: Path, env: dict[str, str]) -> dict:
    directory = runs / f"workers-{workers}"
    wall = run(["search.py", *common, f"fitness.workers={workers}", f"hydra.run.dir={directory}"], env)
    generations = read_json(directory / "generations.json")
    search = generations[-1]["seconds"]
    later = search - generations[0]["seconds"]
    return {"workers": workers, "wall_seconds": wall, "search_seconds": search, "later_generations_seconds": later,
            "evaluations": generations[-1]["evaluations"], "directory": str(directory)}


def render(result: dict) -> str:
    serial, parallel = result["arms"]
    lines = [f"# Parallel population evaluation: `finetune` fitness on digits, 1 vs {parallel['workers']} workers", "",
             f"Machine: {result['machine']}", "",
             f"Search: LeNet-5 / digits, NSGA-II population {result['args']['population']} x "
             f"(1 + {result['args']['generations']}) generations, fitness=finetune ({result['args']['finetune']}), "
             f"{result['threads']} torch thread(s) per evaluating process.", "",
             "| | 1 worker (serial) | " + f"{parallel['workers']} workers (Ray) | ratio |", "|---|---|---|---|"]
    for key, label in (("wall_seconds", "command wall time (s)"), ("search_seconds", "search time (s), Ray start included"),
                       ("later_generations_seconds", "generations after the first (s), no start-up")):
        lines.append(f"| {label} | {serial[key]:.1f} | {parallel[key]:.1f} | {serial[key] / parallel[key]:.2f}x |")
    lines.append(f"| plans evaluated | {serial['evaluations']} | {parallel['evaluations']} | |")
    lines += ["", f"Records byte-identical ({', '.join(RECORDS)}): {'yes' if result['identical'] else 'NO'}.", "",
              f"Command: `{result['command']}` (wall time {result['wall_seconds']:.0f} s after the untimed warm-up)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=2, help="after the initial population")
    parser.add_argument("--finetune", default="fitness.params.epochs=1", help="override(s) of the fitness recipe")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per evaluating process "
                        "(default: cores // workers, at least 1)")
    parser.add_argument("--checkpoints", default="checkpoints", help="where the digits baseline is (trained if missing)")
    parser.add_argument("--out", default="benchmarks/results/workers-digits", help="<out>.json and <out>.md")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m benchmarks.workers", *(shlex.quote(a) for a in given)])
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load = os.getloadavg()
    machine = (f"{os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) "
               "when the benchmark started")
    common = [f"paths.checkpoints={args.checkpoints}", "logger.mode=disabled", "then_finetune=false", "fitness=finetune",
              f"optimizer.params.population={args.population}", f"optimizer.params.generations={args.generations}",
              *args.finetune.split()]
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        runs = Path(tmp)
        # warm-up, not timed: trains the baseline when missing and caches its importance for both arms
        run(["search.py", *common[:3], "fitness=taylor_proxy", "optimizer.params.population=4",
             "optimizer.params.generations=0", f"hydra.run.dir={runs / 'warm-up'}"], env)
        started = time.perf_counter()
        arms = [arm(1, common, runs, env), arm(args.workers, common, runs, env)]
        wall = time.perf_counter() - started
        identical = all((Path(arms[0]["directory"]) / name).read_bytes() == (Path(arms[1]["directory"]) / name).read_bytes()
                        for name in RECORDS)
    for a in arms:
        a.pop("directory")
    result = {"command": command, "wall_seconds": wall, "machine": machine, "threads": threads, "args": vars(args),
              "arms": arms, "identical": identical,
              "ratios": {key: arms[0][key] / arms[1][key]
                         for key in ("wall_seconds", "search_seconds", "later_generations_seconds")}}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), render(result))
    print(render(result), end="")
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
