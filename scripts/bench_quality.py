"""Quality benchmark: does the searched layer-wise plan beat the hand-set ones at EQUAL MACs and
EQUAL fine-tune budget, and do the search proxies rank plans the way fine-tuning does?

A protocol (PROTOCOLS below; `cifar10` is the documented one, `digits` a 1-minute smoke) fixes the
data, one cached baseline per model, the MACs targets, the seeds and the budgets. Work is split
into items, each written to its own file under --out the moment it finishes, so a rerun of the
same command skips everything done (and a half-done search or fine-tune resumes from its last
generation / epoch). Two processes may share the work with disjoint --models / --targets / --seeds.

Arms (each fine-tuned by the library's shared KD routine with the same recipe and seeded batches):
  default        what a user gets with pick=target_macs: NSGA-II, fitness=calib (adaptive BN on for
                 BN models), channels by L1 norm, genomes repaired onto the target, first population
                 seeded with the one-shot plans, the best plans at the target re-ranked by a short
                 fine-tune (finalists)
  ga             single-objective GA at the target (same defaults)
  random         random search, same evaluation budget, same repair onto the target and the same
                 finalist re-ranking (no seeds)
  taylor_nsga2   NSGA-II with the paper's data-free taylor_proxy fitness and Taylor importance (no
                 finalists: data-free, as published)
  global_taylor  one-shot global Taylor (rule min) at the target
  uniform_l1     one-shot uniform keep ratio, L1 filters, at the target
Opt-in ablations (--arms):
  no_finalists   the default search picking the highest proxy at the target
  taylor         the default search choosing channels by Taylor importance (8 val batches)
  previous_default, previous_ga, previous_random
                 the three searches as they were before finalists and L1: Taylor importance,
                 highest proxy at the target
  plain_nsga2    the default before repair / seeds / adaptive BN (and before finalists and L1)

Proxy fidelity (--fidelity): random ratio_strategy plans within target +- window of the fidelity
model's baseline, every fitness scored, each plan fine-tuned with one equal short budget; Kendall
tau and Spearman rho of every proxy against post-fine-tune test accuracy.

    python scripts/bench_quality.py --protocol cifar10 --out benchmarks/quality-cifar10
    python scripts/bench_quality.py --protocol cifar10 --models resnet20 --seeds 1 2   # a share of it
    python scripts/bench_quality.py --protocol cifar10 --report      # tables from what is finished
    python scripts/bench_quality.py --protocol digits --out /tmp/q    # ~1-2 min smoke
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROTOCOLS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "dataset": "cifar10", "train_limit": 20000, "test_limit": None, "trainer": "cifar", "baseline_epochs": 20,
        "finetune_epochs": 2, "finetune_batch_size": 128, "population": 16, "generations": 10, "calib_samples": 512,
        "finalist_steps": 100,
        "models": {"resnet20": {"overrides": [], "targets": [0.5, 0.7], "seeds": [0, 1, 2]},
                   "vgg16": {"overrides": ["model.params.width=0.25", "trainer.lr=0.05"], "targets": [0.73], "seeds": [0]}},
        "fidelity": {"model": "resnet20", "target": 0.7, "window": 0.05, "plans": 30, "epochs": 1},
        "results": "../results/quality-cifar10",  # relative to --out: benchmarks/results/quality-cifar10
    },
    "digits": {
        "dataset": "digits", "train_limit": None, "test_limit": None, "trainer": "default", "baseline_epochs": 4,
        "finetune_epochs": 1, "finetune_batch_size": 64, "population": 8, "generations": 2, "calib_samples": 256,
        "finalist_steps": 20,
        "models": {"resnet20": {"overrides": ["model.params.width=8"], "targets": [0.5], "seeds": [0]}},
        "fidelity": {"model": "resnet20", "target": 0.5, "window": 0.1, "plans": 6, "epochs": 1},
        "results": None,
    },
}
SEARCH_ARMS = {
    "default": ["optimizer=nsga2", "fitness=calib"],
    "ga": ["optimizer=ga", "fitness=calib"],
    "random": ["optimizer=random", "fitness=calib"],
    "taylor_nsga2": ["optimizer=nsga2", "fitness=taylor_proxy", "importance=taylor", "finalists.count=0"],
    "no_finalists": ["optimizer=nsga2", "fitness=calib", "finalists.count=0"],
    "taylor": ["optimizer=nsga2", "fitness=calib", "importance=taylor"],
    "previous_default": ["optimizer=nsga2", "fitness=calib", "importance=taylor", "finalists.count=0"],
    "previous_ga": ["optimizer=ga", "fitness=calib", "importance=taylor", "finalists.count=0"],
    "previous_random": ["optimizer=random", "fitness=calib", "importance=taylor", "finalists.count=0"],
    "plain_nsga2": ["optimizer=nsga2", "fitness=calib", "importance=taylor", "finalists.count=0",
                    "fitness.params.adaptive_bn=false", "objective.repair_to_target=false",
                    "optimizer.seed_with_oneshot=false"],
}
ONESHOT_ARMS = {"global_taylor": ["oneshot=global_taylor", "oneshot.params.rule=min"],
                "uniform_l1": ["oneshot=uniform_l1"]}
ARMS = ("default", "ga", "random", "taylor_nsga2", "global_taylor", "uniform_l1")
LABELS = {"default": "search: NSGA-II + calib (default)", "ga": "search: single-objective GA + calib",
          "random": "random search, same budget", "taylor_nsga2": "search: NSGA-II + taylor_proxy (data-free)",
          "no_finalists": "ablation: default without finalists (highest proxy)",
          "taylor": "ablation: default with channels by Taylor importance",
          "previous_default": "ablation: NSGA-II, Taylor channels, highest proxy (previous default)",
          "previous_ga": "ablation: GA, Taylor channels, highest proxy (previous default)",
          "previous_random": "ablation: random search, Taylor channels, highest proxy (previous default)",
          "plain_nsga2": "ablation: NSGA-II + calib before repair, seeds, adaptive BN",
          "global_taylor": "global Taylor (min)", "uniform_l1": "uniform L1"}
FITNESSES = {  # proxy name -> overrides; every calib proxy is also reported as <name>_neg_loss (-calib loss)
    "taylor_proxy": ["fitness=taylor_proxy", "importance=taylor"],  # the paper's data-free proxy
    "calib": ["fitness=calib", "fitness.params.adaptive_bn=false"],
    "calib_adaptive_bn": ["fitness=calib", "fitness.params.adaptive_bn=true"],
    "distortion": ["fitness=distortion"],
}


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
                        help="change a protocol entry, e.g. --set population=4 --set fidelity.plans=4 (results "
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


# --- configs ---------------------------------------------------------------------------------
def compose(config_name: str, overrides: Sequence[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)


@contextlib.contextmanager
def hydra_job(cfg, directory: Path) -> Iterator[Any]:
    """Run library code as if Hydra had launched it in `directory`; yields the job config."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    directory.mkdir(parents=True, exist_ok=True)
    job = copy.deepcopy(cfg)
    with open_dict(job):
        del job["hydra"]
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(directory.resolve())
    HydraConfig.instance().set_config(cfg)
    try:
        yield job
    finally:
        HydraConfig.instance().cfg = None


def baseline_path(args, model: str) -> Path:
    return (args.out / "checkpoints" / f"{model}-{args.spec['dataset']}.pt").resolve()


def common(args, model: str, seed: int) -> list[str]:
    """Everything that fixes the data, the baseline and the fine-tune recipe of one model."""
    spec = args.spec
    limit = lambda v: "null" if v is None else str(v)  # noqa: E731
    return [f"model={model}", *spec["models"][model]["overrides"], f"dataset={spec['dataset']}",
            f"dataset.params.data_dir={args.data_dir}", f"dataset.params.train_limit={limit(spec['train_limit'])}",
            f"dataset.params.test_limit={limit(spec['test_limit'])}", f"trainer={spec['trainer']}",
            f"trainer.epochs={spec['baseline_epochs']}", f"seed={seed}", f"baseline={baseline_path(args, model)}",
            f"paths.checkpoints={(args.out / 'checkpoints').resolve()}", f"paths.output_root={(args.out / 'runs').resolve()}",
            "logger.mode=disabled", f"device={args.device}", "train_if_missing=true",
            f"finetune.epochs={spec['finetune_epochs']}", f"finetune.batch_size={spec['finetune_batch_size']}"]


def search_budget(args, fitness_overrides: Sequence[str]) -> list[str]:
    spec = args.spec
    samples = [] if "fitness=taylor_proxy" in fitness_overrides else [f"fitness.calib_samples={spec['calib_samples']}"]
    return [f"optimizer.params.population={spec['population']}", f"optimizer.params.generations={spec['generations']}",
            f"finalists.steps={spec['finalist_steps']}"] + samples


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
                   pick_proxy=pick["proxy"])
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


def fidelity(args) -> dict[str, Any] | None:
    """Random plans near the target, every proxy, one equal short fine-tune each (resumable per plan)."""
    from gaprune.utils.io import read_json, write_json

    fid = args.spec["fidelity"]
    root = args.out / "items" / "fidelity"
    scores_path = root / "scores.json"
    model = fid["model"]
    seed = 0
    base = common(args, model, seed) + [f"finetune.epochs={fid['epochs']}", "importance=taylor"]  # plans as first drawn
    if not scores_path.is_file():
        write_json(scores_path, score_fidelity_plans(args, base, fid))
    scored = read_json(scores_path)
    rows = finetune_fidelity_plans(args, base, scored, root / "finetune")
    return {"scored": scored, "rows": rows}


def score_fidelity_plans(args, base: list[str], fid: dict[str, Any]) -> dict[str, Any]:
    from omegaconf import open_dict

    from gaprune.pipeline.search import fitness_from_config, search_space
    from gaprune.pipeline.setup import open_run

    def job_cfg(extra):
        samples = [] if "fitness=taylor_proxy" in extra else [f"fitness.calib_samples={args.spec['calib_samples']}"]
        cfg = compose("search", base + ["encoding=ratio_strategy"] + extra + samples)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    run = open_run(job_cfg([]), directory=args.out / "runs" / "fidelity")
    run.reference()
    importance, encoding, cost = search_space(run)
    rng = random.Random(10_000)
    lo, hi = fid["target"] - fid["window"], fid["target"] + fid["window"]
    plans, seen, draws = [], set(), 0
    while len(plans) < fid["plans"]:
        draws += 1
        if draws > 500_000:
            raise RuntimeError(f"only {len(plans)} random plans in MACs reduction [{lo:.2f}, {hi:.2f}]")
        genome = encoding.random_genome(rng)
        plan = encoding.decode(genome)
        macs, params = cost.cost(plan)
        reduction = 1.0 - macs / cost.base_macs
        if lo <= reduction <= hi and plan.signature() not in seen:
            seen.add(plan.signature())
            plans.append({"genome": genome, "plan": plan.to_json(), "macs": macs, "macs_reduction": reduction,
                          "params_reduction": 1.0 - params / cost.base_params})
    decoded = [encoding.decode(p["genome"]) for p in plans]
    scores, seconds = {}, {}
    for name, overrides in FITNESSES.items():
        t0 = time.perf_counter()
        fitness = fitness_from_config(job_cfg(overrides).fitness, run, importance)
        results = fitness.evaluate(decoded)
        if hasattr(fitness, "close"):
            fitness.close()
        scores[name] = [float(r["proxy"]) for r in results]
        if "calib_loss" in results[0]:
            scores[f"{name}_neg_loss"] = [-float(r["calib_loss"]) for r in results]
        seconds[name] = time.perf_counter() - t0
        print(f"[bench] fidelity: {name} scored {len(plans)} plans in {seconds[name]:.1f}s", flush=True)
    return {"window": [lo, hi], "draws": draws, "plans": plans, "scores": scores, "seconds": seconds}


def finetune_fidelity_plans(args, base: list[str], scored: dict[str, Any], directory: Path) -> list[dict[str, Any]]:
    from omegaconf import open_dict

    from gaprune.engine.checkpoint import load_model
    from gaprune.engine.training import resolve_device, seed_everything
    from gaprune.pipeline.finetune import open_job
    from gaprune.pipeline.setup import load_bundle
    from gaprune.pruning.plan import Plan

    cfg = compose("search", base)
    with open_dict(cfg):
        del cfg["hydra"]
    device = resolve_device(cfg.device)
    teacher, meta, _ = load_model(cfg.baseline)
    job = open_job(cfg, directory, teacher, meta, load_bundle(cfg), device, "fidelity", "fidelity",
                   header={"note": "bench_quality proxy-fidelity plans"})
    for index, item in enumerate(scored["plans"]):
        if job.done(index):
            continue
        started = time.perf_counter()
        seed_everything(int(cfg.seed))
        row = job.run(Plan.from_json(item["plan"]), index, predicted_macs=item["macs"])
        print(f"[bench] fidelity plan {index}: MACs -{100 * row['macs_reduction']:.1f}%, test "
              f"{100 * row['test_acc']:.2f}% ({time.perf_counter() - started:.0f}s)", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        job.close()
    return job.rows


# --- report ----------------------------------------------------------------------------------
def correlations(scored: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    from scipy.stats import kendalltau, spearmanr

    done = {r["plan_id"]: r for r in rows}
    ids = [i for i in range(len(scored["plans"])) if i in done]
    acc = [done[i]["test_acc"] for i in ids]
    predictors = dict(scored["scores"])
    predictors["-MACs reduction (reference)"] = [-p["macs_reduction"] for p in scored["plans"]]
    out = {}
    for name, values in predictors.items():
        x = [values[i] for i in ids]
        if len(ids) < 3 or len(set(x)) < 2 or len(set(acc)) < 2:
            continue
        tau, spear = kendalltau(x, acc), spearmanr(x, acc)
        out[name] = {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
                     "spearman": float(spear.statistic), "spearman_p": float(spear.pvalue), "n": len(ids)}
    return out


def report(args, baselines: dict[str, Any], wall: float) -> dict[str, Any]:
    from gaprune.utils.io import atomic_write_text, read_json, write_json

    arms: dict[str, dict[str, Any]] = {}
    for path in sorted((args.out / "items").glob("*@*/*.json")):
        row = read_json(path)
        cell = arms.setdefault(f"{row['model']}@{row['target']:g}", {}).setdefault(row["arm"], {
            "seeds": [], "test_acc": [], "macs_reduction": [], "params_reduction": [], "val_acc_before_finetune": [],
            "keep_counts": [], "seconds": []})
        for key in cell:
            cell[key].append(row["seed"] if key == "seeds" else row[key])
    fid = None
    scores_path = args.out / "items" / "fidelity" / "scores.json"
    ft_path = args.out / "items" / "fidelity" / "finetune" / "results.json"
    if scores_path.is_file() and ft_path.is_file():
        scored, rows = read_json(scores_path), read_json(ft_path)["results"]
        fid = {"correlations": correlations(scored, rows), "plans_finetuned": len(rows), "plans": len(scored["plans"]),
               "window": scored["window"], "test_acc_range": [min(r["test_acc"] for r in rows),
                                                             max(r["test_acc"] for r in rows)] if rows else None,
               "scoring_seconds": scored["seconds"]}
    spec = args.spec
    results = {
        "protocol": {"name": args.protocol, **{k: v for k, v in spec.items() if k != "results"},
                     "arms": {a: LABELS[a] for a in sorted({arm for cells in arms.values() for arm in cells})}, "threads": args.threads,
                     "command": "python scripts/bench_quality.py " + " ".join(sys.argv[1:]),
                     "wall_seconds_this_invocation": wall},
        "baselines": {m: b["test_acc"] for m, b in baselines.items()},
        "baseline_details": baselines,
        "arms": {key: {arm: {k: cell[k] for k in ("test_acc", "macs_reduction", "params_reduction",
                                                  "val_acc_before_finetune", "seeds", "keep_counts", "seconds")}
                       for arm, cell in sorted(cells.items())} for key, cells in sorted(arms.items())},
        "fidelity": {name: {"kendall_tau": c["kendall_tau"], "spearman": c["spearman"]}
                     for name, c in (fid or {}).get("correlations", {}).items()},
        "fidelity_details": fid,
    }
    write_json(args.results.with_suffix(".json"), results)
    atomic_write_text(args.results.with_suffix(".md"), render(results))
    print(render(results))
    return results


def render(results: dict[str, Any]) -> str:
    import statistics

    def pm(values: Sequence[float], digits: int = 2) -> str:
        mean = 100 * statistics.fmean(values)
        return f"{mean:.{digits}f}" + (f" ± {100 * statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")

    p = results["protocol"]
    lines = [f"# Quality at equal MACs ({p['name']})", "",
             f"Data: {p['dataset']}, train+val pool {p['train_limit'] or 'all'}, test {p['test_limit'] or 'all'}. "
             f"Baselines: {p['baseline_epochs']} epochs ({p['trainer']} recipe), one per model. Search budget: population "
             f"{p['population']} x {p['generations']} generations, calib on {p['calib_samples']} val images; finalists: "
             f"{p.get('finalist_steps', '-')}-step KD fine-tune each, scored on all val images. Every arm: "
             f"KD fine-tune {p['finetune_epochs']} epoch(s), batch {p['finetune_batch_size']}.", "",
             "| model @ target | method | test acc % (mean ± std) | per seed | MACs red. % | params red. % | "
             "val acc before FT % |", "|---|---|---|---|---|---|---|"]
    for key, cells in results["arms"].items():
        model = key.split("@")[0]
        lines.append(f"| {key} | baseline | {100 * results['baselines'].get(model, float('nan')):.2f} | | | | |")
        for arm, cell in cells.items():
            lines.append(f"| {key} | {LABELS.get(arm, arm)} | {pm(cell['test_acc'])} | "
                         f"{', '.join(f'{100 * v:.2f}' for v in cell['test_acc'])} | {pm(cell['macs_reduction'], 1)} | "
                         f"{pm(cell['params_reduction'], 1)} | {pm(cell['val_acc_before_finetune'])} |")
    fid = results.get("fidelity_details")
    if fid:
        lines += ["", f"## Proxy fidelity: {fid['plans_finetuned']}/{fid['plans']} random plans fine-tuned, MACs "
                      f"reduction in [{100 * fid['window'][0]:.0f}%, {100 * fid['window'][1]:.0f}%]", "",
                  "| proxy | Kendall tau | p | Spearman rho | p | n |", "|---|---|---|---|---|---|"]
        for name, c in fid["correlations"].items():
            lines.append(f"| {name} | {c['kendall_tau']:+.3f} | {c['kendall_p']:.3f} | {c['spearman']:+.3f} | "
                         f"{c['spearman_p']:.3f} | {c['n']} |")
    lines += ["", f"Command: `{p['command']}`"]
    return "\n".join(lines) + "\n"


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
        if not args.report and args.fidelity != "no" and spec["fidelity"]["model"] in models:
            fidelity(args)
    except GapruneError as err:
        sys.exit(f"bench_quality: error: {err}")
    return report(args, baselines, time.perf_counter() - wall)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
