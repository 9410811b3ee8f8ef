"""Quality benchmark: does the searched layer-wise plan beat the hand-set ones at EQUAL MACs and
EQUAL fine-tune budget, and do the search proxies rank plans the way fine-tuning does?

A protocol (PROTOCOLS in scripts/quality/protocol.py; `cifar10` is the documented one, `digits` a 1-minute smoke) fixes the
data, one cached baseline per model, the MACs targets, the seeds and the budgets. Work is split
into items, each written to its own file under --out the moment it finishes, so a rerun of the
same command skips everything done (and a half-done search or fine-tune resumes from its last
generation / epoch). Two processes may share the work with disjoint --models / --targets / --seeds.

Arms (each fine-tuned by the library's shared KD routine with the same recipe and seeded batches):
  default        what a user gets with pick=target_macs: NSGA-II, fitness=calib (adaptive BN on for
                 BN models), channels by L1 norm, genomes repaired onto the target and optimised for
                 the proxy alone there (optimizer.target_objectives), first population seeded with
                 the one-shot plans, the best plans at the target re-ranked by a short fine-tune
                 (finalists)
  ga             single-objective GA at the target (same defaults)
  random         random search, same evaluation budget, same repair onto the target and the same
                 finalist re-ranking (no seeds)
  taylor_nsga2   NSGA-II with the paper's data-free taylor_proxy fitness and Taylor importance (no
                 finalists: data-free, as published)
  global_taylor  one-shot global Taylor (rule min) at the target
  global_l1      one-shot global threshold on L1 norms (rule min) at the target (the search's
                 `global` seed)
  uniform_l1     one-shot uniform keep ratio, L1 filters, at the target
Opt-in ablations (--arms):
  front_at_target  the default, but NSGA-II keeps its (proxy, MACs, params) front at the target
                 (the default before optimizer.target_objectives)
  no_finalists   front_at_target picking the highest proxy at the target
  taylor         front_at_target choosing channels by Taylor importance (8 val batches)
  previous_default, previous_ga, previous_random
                 the three searches as they were before finalists and L1: Taylor importance,
                 highest proxy at the target (NSGA-II keeping its front)
  plain_nsga2    the default before repair / seeds / adaptive BN (and before finalists and L1)

Proxy fidelity (--fidelity, scripts/quality/fidelity.py), one study per model in the protocol's
`fidelity`: random ratio_strategy plans within its target +- window, every proxy scored (the
fitnesses, variants of the default one, and the finalists' short fine-tune), each plan fine-tuned
with one equal budget (ResNet-20: 1 epoch; VGG-16: the arms' 2 epochs); Kendall tau and Spearman
rho of every proxy against post-fine-tune test accuracy.

Finalists table (scripts/quality/finalists.py): per cell and seed, the default's pick and its
one-shot seeds after the finalists' short fine-tune next to their arms' full fine-tune.

    python scripts/bench_quality.py --protocol cifar10 --out benchmarks/quality-cifar10
    python scripts/bench_quality.py --protocol cifar10 --models resnet20 --seeds 1 2   # a share of it
    python scripts/bench_quality.py --protocol cifar10 --report      # tables from what is finished
    python scripts/bench_quality.py --protocol digits --out /tmp/q    # ~1-2 min smoke
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):  # gaprune, and this script's parts (scripts/quality) when imported by path
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from quality.fidelity import fidelity  # noqa: E402
from quality.finalists import attach_finalists, finalist_rows  # noqa: E402
from quality.protocol import (ARMS, ONESHOT_ARMS, PROTOCOLS, SEARCH_ARMS, baseline_path, common,  # noqa: E402
                              compose, hydra_job, search_budget)
from quality.report import report  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cifar10")
    parser.add_argument("--out", type=Path, help="work dir (default benchmarks/quality-<protocol>)")
    parser.add_argument("--data-dir", default=os.environ.get("GAPRUNE_DATA_DIR", "data"))
    parser.add_argument("--models", nargs="+", help="subset of the protocol's models")
    parser.add_argument("--targets", type=float, nargs="+", help="subset of the targets")
    parser.add_argument("--seeds", type=int, nargs="+", help="subset of the seeds")
    parser.add_argument("--arms", nargs="+", choices=sorted(set(SEARCH_ARMS) | set(ONESHOT_ARMS)), default=list(ARMS))
    parser.add_argument("--fidelity", choices=("yes", "no", "only"), default="yes")
    parser.add_argument("--report", action="store_true", help="only assemble the tables from finished items")
    parser.add_argument("--results", type=Path, help="results stem (default: the protocol's, next to --out, "
                                                     "else <out>/results)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=JSON",
                        help="change a protocol entry, e.g. --set population=4 --set fidelity.resnet20.plans=4 (results "
                             "then go under --out, never over the protocol's committed results)")
    args = parser.parse_args(argv)
    args.spec = copy.deepcopy(PROTOCOLS[args.protocol])
    for change in args.changes:
        key, _, value = change.partition("=")
        *path, last = key.split(".")
        node = args.spec
        try:
            for part in path:
                node = node[part]
            if last not in node:
                raise KeyError(last)
            node[last] = json.loads(value)
        except (KeyError, TypeError, json.JSONDecodeError):
            parser.error(f"--set {change}: give KEY=JSON with KEY one of the protocol's entries, e.g. population=4")
    if args.changes:
        args.spec["results"] = None
    args.out = args.out or Path("benchmarks") / f"quality-{args.protocol}"
    stem = args.results or (args.out / args.spec["results"] if args.spec["results"] else None)
    args.results = Path(stem) if stem else args.out / "results"
    unknown = set(args.models or []) - set(args.spec["models"])
    if unknown:
        parser.error(f"--models {sorted(unknown)} not in protocol {args.protocol}: {sorted(args.spec['models'])}")
    return args


# --- items -----------------------------------------------------------------------------------
def write_item(path: Path, item: dict[str, Any]) -> None:
    from gaprune.utils.io import write_json

    write_json(path, item)


def ensure_baseline(args, model: str) -> dict[str, Any]:
    from gaprune.engine.checkpoint import read_checkpoint
    from gaprune.pipeline.setup import ensure_baseline as ensure

    path = baseline_path(args, model)
    if not path.is_file():
        cfg = compose("train", common(args, model, 0))
        with hydra_job(cfg, args.out / "runs" / model / "train") as job:
            started = time.perf_counter()
            ensure(job, args.out / "runs" / model / "train")
            print(f"[bench] {model}: baseline trained in {time.perf_counter() - started:.0f}s", flush=True)
    meta = read_checkpoint(path)["meta"]
    return {k: meta[k] for k in ("val_acc", "test_acc", "macs", "params")}


def run_arm(args, model: str, target: float, seed: int, arm: str) -> dict[str, Any]:
    """One arm / seed / target: search (+ pick) or one-shot plan, then the shared KD fine-tune."""
    from gaprune.utils.io import read_json

    item = args.out / "items" / f"{model}@{target:g}" / f"{arm}-s{seed}.json"
    if item.is_file():
        return read_json(item)
    directory = args.out / "runs" / f"{model}@{target:g}" / f"{arm}-s{seed}"
    started = time.perf_counter()
    base = common(args, model, seed) + [f"objective.target_macs_reduction={target}"]
    if arm in SEARCH_ARMS:
        from gaprune.pipeline.search import run_search

        resume = ["resume=" + str(directory.resolve())] if (directory / "state.json").is_file() else []
        cfg = compose("search", base + SEARCH_ARMS[arm] + search_budget(args, SEARCH_ARMS[arm]) +
                      ["encoding=ratio_strategy", "pick=target_macs", "then_finetune=true"] + resume)
        with hydra_job(cfg, directory) as job:
            summary = run_search(job)
        row = dict(summary["finetune"][0])
        pick = read_json(directory / "picks.json")["target_macs"]
        row.update(evaluations=summary["evaluations"], cache_hits=summary["cache_hits"],
                   search_seconds=summary["seconds"], keep_counts=pick["keep_counts"], strategies=pick["strategies"],
                   pick_proxy=pick["proxy"], finalists=finalist_rows(directory))
    else:
        from gaprune.pipeline.oneshot import run_oneshot
        from gaprune.pruning.plan import plan_from_json

        resume = ["resume=" + str(directory.resolve())] if (directory / "plan.json").is_file() else []
        cfg = compose("oneshot", base + ONESHOT_ARMS[arm] + [f"target_macs_reduction={target}"] + resume)
        with hydra_job(cfg, directory) as job:
            result = run_oneshot(job)
        row = dict(result["rows"][0])
        row["keep_counts"] = plan_from_json(read_json(directory / "plan.json")).keep_counts()
    row.update(arm=arm, seed=seed, target=target, model=model, seconds=time.perf_counter() - started)
    write_item(item, row)
    print(f"[bench] {model}@{target:g} {arm:>13} s{seed}: test {100 * row['test_acc']:.2f}%  MACs -"
          f"{100 * row['macs_reduction']:.1f}%  ({row['seconds']:.0f}s)", flush=True)
    return row


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests) keep their own setting


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gaprune.utils.errors import GapruneError

    wall = time.perf_counter()
    spec = args.spec
    models = args.models or list(spec["models"])
    baselines = {}
    try:
        for model in models:
            if args.report and not baseline_path(args, model).is_file():
                continue  # reporting never trains
            baselines[model] = ensure_baseline(args, model)
        if not args.report and args.fidelity != "only":
            for model in models:
                entry = spec["models"][model]
                for target in [t for t in entry["targets"] if args.targets is None or t in args.targets]:
                    for seed in [s for s in entry["seeds"] if args.seeds is None or s in args.seeds]:
                        for arm in args.arms:
                            run_arm(args, model, target, seed, arm)
        if not args.report and args.fidelity != "no":
            for model in [m for m in models if m in spec["fidelity"]]:
                fidelity(args, model)
        attach_finalists(args.out)  # items finished before they carried their finalists
    except GapruneError as err:
        sys.exit(f"bench_quality: error: {err}")
    return report(args, baselines, time.perf_counter() - wall)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
