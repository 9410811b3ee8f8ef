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
from quality.compute import item_compute, matched_steps  # noqa: E402
from quality.protocol import (ARMS, LONGER_FINETUNE_ARMS, MATCHED_ARMS, MATCHED_TO, ONESHOT_ARMS,  # noqa: E402
                              PROTOCOLS, SEARCH_ARMS, baseline_path, cell_name, common, compose, hydra_job,
                              search_budget)
from quality.report import report  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


# --- items -----------------------------------------------------------------------------------
def write_item(path: Path, item: dict[str, Any]) -> None:
    from gaprune.utils.io import write_json

    write_json(path, item)


def ensure_baseline(args, model: str) -> dict[str, Any]:
    from gaprune.engine.checkpoint import read_checkpoint
    from gaprune.pipeline.train import ensure_baseline as ensure

    path = baseline_path(args, model)
    if not path.is_file():
        cfg = compose("train", common(args, model, 0))
        with hydra_job(cfg, args.out / "runs" / model / "train") as job:
            started = time.perf_counter()
            ensure(job, args.out / "runs" / model / "train")
            print(f"[bench] {model}: baseline trained in {time.perf_counter() - started:.0f}s", flush=True)
    meta = read_checkpoint(path)["meta"]
    return {k: meta[k] for k in ("val_acc", "test_acc", "macs", "params")} | {"sizes": data_sizes(args, model)}


def data_sizes(args, model: str) -> dict[str, int]:
    """Train / val images of the protocol's split for `model` (what a fine-tune epoch and its
    validation pass run over)."""
    from omegaconf import open_dict

    from gaprune.pipeline.setup import load_bundle

    cfg = compose("search", common(args, model, 0))
    with open_dict(cfg):
        del cfg["hydra"]
    bundle = load_bundle(cfg)
    return {"train": len(bundle.train), "val": len(bundle.val)}


def run_arm(args, model: str, target: float, seed: int, arm: str, epochs: int | None = None) -> dict[str, Any] | None:
    """One arm / seed / target (/ longer fine-tune `epochs`): search (+ pick) or one-shot plan,
    then the shared KD fine-tune. A matched arm whose reference item is not finished yet is
    skipped (None)."""
    from gaprune.utils.io import read_json

    cell = cell_name(model, target, epochs)
    item = args.out / "items" / cell / f"{arm}-s{seed}.json"
    if item.is_file():
        return read_json(item)
    directory = args.out / "runs" / cell / f"{arm}-s{seed}"
    base = common(args, model, seed, epochs) + [f"objective.target_macs_reduction={target}"]
    if arm in MATCHED_ARMS:
        extra = matched_finetune(args, cell, seed, arm)
        if extra is None:
            print(f"[bench] {cell} {arm} s{seed}: skipped until {MATCHED_TO}-s{seed} is finished", flush=True)
            return None
        base += extra
    started = time.perf_counter()
    if arm in SEARCH_ARMS:
        from gaprune.pipeline.search import run_search

        if epochs and not directory.exists():
            reuse_search(args.out / "runs" / cell_name(model, target) / f"{arm}-s{seed}", directory)
        resume = ["resume=" + str(directory.resolve())] if (directory / "state.json").is_file() else []
        cfg = compose("search", base + search_budget(args, SEARCH_ARMS[arm]) + SEARCH_ARMS[arm] +
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
        cfg = compose("oneshot", base + ONESHOT_ARMS[MATCHED_ARMS.get(arm, arm)] + [f"target_macs_reduction={target}"]
                      + resume)
        with hydra_job(cfg, directory) as job:
            result = run_oneshot(job)
        row = dict(result["rows"][0])
        row["keep_counts"] = plan_from_json(read_json(directory / "plan.json")).keep_counts()
    row.update(arm=arm, seed=seed, target=target, model=model, cell=cell, compute_source="counted",
               seconds=time.perf_counter() - started)
    write_item(item, row)
    print(f"[bench] {cell} {arm:>13} s{seed}: test {100 * row['test_acc']:.2f}%  MACs -"
          f"{100 * row['macs_reduction']:.1f}%  compute {row['compute_macs'] / 1e12:.3f} TMACs  "
          f"({row['seconds']:.0f}s)", flush=True)
    return row


def matched_finetune(args, cell: str, seed: int, arm: str) -> list[str] | None:
    """finetune.epochs / finetune.steps that bring `arm`'s one-shot plan to MATCHED_TO's compute of
    the same cell and seed (None until that item and the one-shot arm's own item exist)."""
    from gaprune.engine.checkpoint import read_checkpoint
    from gaprune.utils.io import read_json

    reference = args.out / "items" / cell / f"{MATCHED_TO}-s{seed}.json"
    oneshot = args.out / "items" / cell / f"{MATCHED_ARMS[arm]}-s{seed}.json"
    if not (reference.is_file() and oneshot.is_file()):
        return None
    ref, own = read_json(reference), read_json(oneshot)
    base_macs = read_checkpoint(baseline_path(args, ref["model"]))["meta"]["macs"]
    sizes = data_sizes(args, ref["model"])
    budget = item_compute(ref, args.spec, sizes, base_macs)["compute_macs"]
    before = item_compute(own, args.spec, sizes, base_macs)["compute_macs_by_phase"]["importance"]
    epochs, steps = matched_steps(args.spec, sizes, budget, before, own["macs"], base_macs)
    return [f"finetune.epochs={epochs}", f"finetune.steps={steps}"]


def reuse_search(source: Path, directory: Path) -> None:
    """A longer-fine-tune cell's search is its regular cell's (same config but the fine-tune's
    epochs): copy that finished run dir, less its fine-tune, and resume it (its compute is
    still counted in full)."""
    import shutil

    if (source / "search_summary.json").is_file():
        shutil.copytree(source, directory, ignore=shutil.ignore_patterns("finetune"))
        print(f"[bench] {directory.parent.name} {directory.name}: search reused from {source}", flush=True)


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
        sys.exit(f"bench_quality: error: {err}")
    return report(args, baselines, time.perf_counter() - wall)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
