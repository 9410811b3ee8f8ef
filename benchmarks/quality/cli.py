"""Quality benchmark: does the searched layer-wise plan beat the hand-set ones at EQUAL MACs and
EQUAL fine-tune budget, and do the search proxies rank plans the way fine-tuning does?

A protocol (PROTOCOLS in benchmarks/quality/protocol.py; `cifar10` is the documented one, `digits` a 1-minute smoke) fixes the
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

Proxy fidelity (--fidelity, benchmarks/quality/fidelity.py), one study per model in the protocol's
`fidelity`: random ratio_strategy plans within its target +- window, every proxy scored (the
fitnesses, variants of the default one, and the finalists' short fine-tune), each plan fine-tuned
with one equal budget (ResNet-20: 1 epoch; VGG-16: the arms' 2 epochs); Kendall tau and Spearman
rho of every proxy against post-fine-tune test accuracy.

Finalists table (benchmarks/quality/finalists.py): per cell and seed, the default's pick and its
one-shot seeds after the finalists' short fine-tune next to their arms' full fine-tune.

    python -m benchmarks.quality --protocol cifar10 --out benchmarks/quality-cifar10
    python -m benchmarks.quality --protocol cifar10 --models resnet20 --seeds 1 2   # a share of it
    python -m benchmarks.quality --protocol cifar10 --report      # tables from what is finished
    python -m benchmarks.quality --protocol digits --out /tmp/q    # ~1-2 min smoke
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

from benchmarks.quality.fidelity import fidelity
from benchmarks.quality.finalists import attach_finalists
from benchmarks.quality.items import ensure_baseline, run_arm
from benchmarks.quality.protocol import (ARMS, LONGER_FINETUNE_ARMS, MATCHED_ARMS, ONESHOT_ARMS, PROTOCOLS, SEARCH_ARMS,
                                         baseline_path)
from benchmarks.quality.report import report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cifar10")
    parser.add_argument("--out", type=Path, help="work dir (default benchmarks/quality-<protocol>)")
    parser.add_argument("--data-dir", default=os.environ.get("GAPRUNE_DATA_DIR", "data"))
    parser.add_argument("--models", nargs="+", help="subset of the protocol's models")
    parser.add_argument("--targets", type=float, nargs="+", help="subset of the targets")
    parser.add_argument("--seeds", type=int, nargs="+", help="subset of the seeds")
    parser.add_argument("--arms", nargs="+", choices=sorted(set(SEARCH_ARMS) | set(ONESHOT_ARMS) | set(MATCHED_ARMS)),
                        help="default: the protocol's arms (a -ft<epochs> cell: " + ", ".join(LONGER_FINETUNE_ARMS) + ")")
    parser.add_argument("--finetune-epochs", type=int, nargs="+", metavar="EPOCHS",
                        help="run the protocol's longer-fine-tune cells with these epochs (<model>@<target>-ft<epochs>) "
                             "instead of its regular cells")
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
    check_subset(parser, args)
    return args


def check_subset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--targets / --seeds / --finetune-epochs must name values of the protocol's (chosen) models."""
    spec, models = args.spec, args.models or list(args.spec["models"])
    longer = spec.get("longer_finetunes", {})
    if args.finetune_epochs:
        offered = sorted({e for m in models for e in longer.get(m, {}).get("epochs", [])})
        bad = sorted(set(args.finetune_epochs) - set(offered))
        if bad:
            parser.error(f"--finetune-epochs {bad} not in protocol {args.protocol} for {', '.join(models)}: "
                         f"{offered or 'none'}")
    targets = sorted({t for m in models for t in (longer.get(m, {}).get("targets", []) if args.finetune_epochs
                                                  else spec["models"][m]["targets"])})
    seeds = sorted({s for m in models for s in spec["models"][m]["seeds"]})
    for flag, given, offered in (("--targets", args.targets, targets), ("--seeds", args.seeds, seeds)):
        bad = sorted(set(given or []) - set(offered))
        if bad:
            parser.error(f"{flag} {bad} not in protocol {args.protocol} for {', '.join(models)}: {offered}")
    if args.arms is None:
        args.arms = list(LONGER_FINETUNE_ARMS if args.finetune_epochs else ARMS)


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


def cells(args, models: Sequence[str]) -> list[tuple[str, float, int, int | None]]:
    """(model, target, seed, longer fine-tune epochs or None) to run, seed by seed within a cell."""
    spec, out = args.spec, []
    for model in models:
        entry, longer = spec["models"][model], spec.get("longer_finetunes", {}).get(model, {})
        targets = longer.get("targets", []) if args.finetune_epochs else entry["targets"]
        for epochs in (args.finetune_epochs or [None]):
            if epochs is not None and epochs not in longer.get("epochs", []):
                continue
            for target in [t for t in targets if args.targets is None or t in args.targets]:
                for seed in [s for s in entry["seeds"] if args.seeds is None or s in args.seeds]:
                    out.append((model, target, seed, epochs))
    return out


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
            for model, target, seed, epochs in cells(args, models):
                for arm in args.arms:
                    run_arm(args, model, target, seed, arm, epochs)
        if not args.report and args.fidelity != "no":
            for model in [m for m in models if m in spec["fidelity"]]:
                fidelity(args, model)
        attach_finalists(args.out)  # items finished before they carried their finalists
    except GapruneError as err:
        sys.exit(f"benchmarks.quality: error: {err}")
    return report(args, baselines, time.perf_counter() - wall)
