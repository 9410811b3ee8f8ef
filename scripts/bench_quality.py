"""Quality benchmark at CPU size: does the GA-found plan beat random search and one-shot pruners
at EQUAL MACs and EQUAL fine-tune budget, and do the search proxies rank plans the way
fine-tuning does?

Default setting: LeNet-5 on MNIST (torchvision format under --data-dir; when it is missing the
script falls back to scikit-learn's `digits` and says so), a stratified `--train-limit` subset.

Part 1, comparison (per seed: its own baseline, search seed and fine-tune seed):
  ga            NSGA-II, encoding=ratio_strategy, fitness=calib, pick=target_macs at --target
  random        optimizer=random, the same evaluation budget (population x generations), same pick
  global_taylor method=global_taylor rule=min at the same MACs target
  uniform_l1    method=uniform_l1 at the same MACs target
  ga_target     (opt-in, --arms) optimizer=ga on "calib - penalty x shortfall below the target", same budget
Every arm is fine-tuned by the library's shared routine (`gaprune.engine.finetune.FinetuneJob`) with
the same `finetune` recipe (KD from the unpruned baseline, same epochs, same seeded batches).
Everything runs in-process from the real Hydra configs (`conf/`, composed with
`hydra.compose`): `run_search` (search + its own fine-tune of the pick) and `run_baseline`.

Part 2, proxy fidelity (first seed's baseline): --fidelity-plans random ratio_strategy plans
with a MACs reduction within +-`--fidelity-window` of the target are scored by each fitness
(taylor_proxy, calib, calib + adaptive BN when the model has BatchNorm, distortion), each
fine-tuned with a short equal budget (--fidelity-epochs), and Kendall's tau between every
fitness and the post-fine-tune accuracy is reported (plus -MACs reduction as a reference
predictor: inside the window, how much does "fewer MACs removed" alone explain?).

Prints Markdown tables and timings; writes results.json and results.md (and every run dir)
under --out.

    python scripts/bench_quality.py --data-dir data                      # ~5-10 min on 2 CPU cores
    python scripts/bench_quality.py --data-dir data --quick              # ~1-2 min
    python scripts/bench_quality.py --target 0.8 --seeds 0 1 2 3 --finetune-epochs 8
    python scripts/bench_quality.py --arms ga ga_target random --fidelity-plans 0
    python scripts/bench_quality.py --set finetune.kd=false --set fitness.params.metric=neg_loss
    python scripts/bench_quality.py --model vgg11 --dataset cifar10 --quick   # any model/dataset (slow on CPU)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import random
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Settings: --quick takes the second column for every option not given on the command line.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {"train_limit": 20000, "test_limit": None, "baseline_epochs": 10, "finetune_epochs": 5,
                "population": 24, "generations": 15, "seeds": [0, 1, 2], "calib_samples": 512,
                "fidelity_plans": 30, "fidelity_epochs": 2},
    "quick": {"train_limit": 8000, "test_limit": 2000, "baseline_epochs": 6, "finetune_epochs": 3,
              "population": 16, "generations": 8, "seeds": [0], "calib_samples": 256,
              "fidelity_plans": 20, "fidelity_epochs": 1},
}
ARMS = ("ga", "random", "global_taylor", "uniform_l1")
EXTRA_ARMS = ("ga_target",)  # opt-in (--arms): single-objective GA, proxy minus penalty below the target
SEARCH_ARMS = {"ga": "nsga2", "random": "random", "ga_target": "ga"}
ARM_LABELS = {"ga": "GA (NSGA-II, calib)", "random": "random search (same budget)",
              "global_taylor": "global Taylor (min)", "uniform_l1": "uniform L1",
              "ga_target": "GA (single-objective, target penalty, calib)"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet5", help="model config group (conf/model)")
    parser.add_argument("--dataset", default="mnist", help="dataset config group (conf/dataset); digits if missing")
    parser.add_argument("--data-dir", default=os.environ.get("GAPRUNE_DATA_DIR", "data"),
                        help="dataset.data_dir (torchvision formats)")
    parser.add_argument("--target", type=float, default=0.7, help="MACs reduction every arm must reach")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (baseline, search, fine-tune); default 0 1 2")
    parser.add_argument("--arms", nargs="+", choices=ARMS + EXTRA_ARMS, default=list(ARMS),
                        help="compared methods (default: the four above; ga_target adds optimizer=ga with the "
                             "objective 'calib proxy - penalty x shortfall below the target', same budget)")
    parser.add_argument("--train-limit", type=int, help="train+val pool size (stratified subset)")
    parser.add_argument("--test-limit", type=int, help="test subset size (default: the whole test set)")
    parser.add_argument("--baseline-epochs", type=int, help="trainer.epochs of each seed's baseline")
    parser.add_argument("--finetune-epochs", type=int, help="finetune.epochs of every compared arm")
    parser.add_argument("--population", type=int, help="optimizer.params.population (NSGA-II: multiple of 4)")
    parser.add_argument("--generations", type=int, help="optimizer.params.generations")
    parser.add_argument("--calib-samples", type=int, help="fitness.samples (calib / distortion)")
    parser.add_argument("--fidelity-plans", type=int, help="random plans for the proxy-fidelity study (0: skip)")
    parser.add_argument("--fidelity-epochs", type=int, help="fine-tune epochs per fidelity plan")
    parser.add_argument("--fidelity-window", type=float, default=0.05,
                        help="fidelity plans have MACs reduction in target +- window")
    parser.add_argument("--quick", action="store_true", help="~1-2 minute version (smaller everything, 1 seed)")
    parser.add_argument("--device", default="cpu", help="device=auto|cpu|cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default). 1 by default: on a shared 2-core machine, "
                             "2 OpenMP threads competing with other jobs made LeNet-5 training ~20x slower")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every composed config (repeatable)")
    parser.add_argument("--out", type=Path, help="output dir (default outputs/bench_quality/<time>)")
    parser.add_argument("--progress", action="store_true", help="show tqdm progress bars")
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "default"]
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = Path("outputs") / "bench_quality" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if not 0.0 < args.target < 1.0:
        parser.error(f"--target={args.target} must be a fraction in (0, 1), e.g. 0.7")
    return args


# --- Hydra ------------------------------------------------------------------------------------
def compose(config_name: str, overrides: Sequence[str]):
    """The real config from conf/ (with its hydra node, for `hydra_job`)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)


@contextlib.contextmanager
def hydra_job(cfg, directory: Path) -> Iterator[Any]:
    """Run library code as if Hydra had launched it with `directory` as its run dir (what
    `hydra.main` does: set hydra.runtime.output_dir, register the HydraConfig); yields the job
    config without the hydra node."""
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


def job_config(cfg):
    from omegaconf import open_dict

    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.pop("hydra", None)
    return job


def common_overrides(args: argparse.Namespace, seed: int, finetune_epochs: int) -> list[str]:
    root = Path(args.out).resolve()
    limit = lambda v: "null" if v is None else str(v)  # noqa: E731
    return [
        f"model={args.model}", f"dataset={args.dataset}", f"dataset.params.data_dir={args.data_dir}",
        f"dataset.params.train_limit={limit(args.train_limit)}", f"dataset.params.test_limit={limit(args.test_limit)}",
        f"trainer.epochs={args.baseline_epochs}", f"finetune.epochs={finetune_epochs}", f"seed={seed}",
        f"paths.checkpoints={root / 'checkpoints'}", f"paths.output_root={root / 'runs'}",
        f"baseline={root / 'checkpoints'}/{args.model}-{args.dataset}-s{seed}.pt",
        "logger.mode=disabled", f"device={args.device}", "train_if_missing=true",
        f"objective.target_macs_reduction={args.target}",
    ]


def search_overrides(args: argparse.Namespace, optimizer: str) -> list[str]:
    """optimizer: nsga2 | ga | random (conf/optimizer groups; the same population x generations budget)."""
    return ["encoding=ratio_strategy", "fitness=calib", f"fitness.calib_samples={args.calib_samples}", f"optimizer={optimizer}",
            f"optimizer.params.population={args.population}", f"optimizer.params.generations={args.generations}",
            "pick=target_macs", "then_finetune=true"]


def method_overrides(args: argparse.Namespace, method: str) -> list[str]:
    extra = ["oneshot.params.rule=min"] if method == "global_taylor" else []
    return [f"oneshot={method}", *extra, f"target_macs_reduction={args.target}"]


# --- data -------------------------------------------------------------------------------------
def resolve_dataset(args: argparse.Namespace) -> dict[str, Any]:
    """Check the dataset loads; fall back to digits (with a printed note) when it is missing."""
    from gaprune.data.datasets import load_dataset
    from gaprune.utils.errors import GapruneError

    try:
        bundle = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seeds[0], train_limit=args.train_limit,
                              test_limit=args.test_limit)
        note = None
    except GapruneError as err:
        if args.dataset == "digits":
            raise
        note = (f"NOTE: dataset '{args.dataset}' not found under --data-dir={args.data_dir} ({err}); "
                "falling back to scikit-learn's digits (1797 8x8 images upsampled to 32x32).")
        print(note)
        args.dataset = "digits"
        bundle = load_dataset("digits", seed=args.seeds[0], train_limit=args.train_limit, test_limit=args.test_limit)
    return {"name": bundle.name, "train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test),
            "note": note}


# --- part 1: comparison -----------------------------------------------------------------------
def keep_counts_of_plan(path: Path) -> list[int]:
    from gaprune.pruning.plan import plan_from_json
    from gaprune.utils.io import read_json

    return plan_from_json(read_json(path)).keep_counts()


def run_arm(args: argparse.Namespace, arm: str, seed: int, directory: Path) -> dict[str, Any]:
    from gaprune.utils.io import read_json

    common = common_overrides(args, seed, args.finetune_epochs) + list(args.overrides)
    started = time.perf_counter()
    if arm in SEARCH_ARMS:
        from gaprune.pipeline.search import run_search

        cfg = compose("search", common + search_overrides(args, SEARCH_ARMS[arm]))
        with hydra_job(cfg, directory) as job:
            summary = run_search(job)
        row = dict(summary["finetune"][0])
        pick = read_json(Path(summary["run_dir"]) / "picks.json")["target_macs"]
        row.update(evaluations=summary["evaluations"], cache_hits=summary["cache_hits"],
                   search_seconds=summary["seconds"], keep_counts=pick["keep_counts"],
                   strategies=pick["strategies"], pick_proxy=pick["proxy"], run_dir=summary["run_dir"])
    else:
        from gaprune.pipeline.oneshot import run_oneshot

        cfg = compose("oneshot", common + method_overrides(args, arm))
        with hydra_job(cfg, directory) as job:
            result = run_oneshot(job)
        row = dict(result["rows"][0])
        info = read_json(Path(result["run_dir"]) / "oneshot.json").get("info", {})
        row.update(keep_counts=keep_counts_of_plan(Path(result["run_dir"]) / "plan.json"), run_dir=result["run_dir"],
                   one_fewer_removal_reduction=info.get("one_fewer_removal_reduction"))
    row.update(arm=arm, seed=seed, seconds=time.perf_counter() - started)
    return row


def run_seed(args: argparse.Namespace, seed: int,
             timings: dict[str, float]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from gaprune.engine.checkpoint import read_checkpoint
    from gaprune.pipeline.setup import ensure_baseline

    root = Path(args.out) / "runs" / f"seed{seed}"
    cfg = job_config(compose("search", common_overrides(args, seed, args.finetune_epochs) + list(args.overrides)))
    started = time.perf_counter()
    path = ensure_baseline(cfg, root / "train")
    timings[f"seed {seed}: baseline training"] = time.perf_counter() - started
    meta = read_checkpoint(path)["meta"]
    baseline = {"seed": seed, "val_acc": meta["val_acc"], "test_acc": meta["test_acc"], "macs": meta["macs"],
                "params": meta["params"], "checkpoint": str(Path(path).resolve())}
    rows = []
    for arm in args.arms:
        row = run_arm(args, arm, seed, root / arm)
        what = "search + fine-tune" if arm in SEARCH_ARMS else "plan + fine-tune"
        timings[f"seed {seed}: {arm} ({what})"] = row["seconds"]
        print(f"[bench] seed {seed} {arm:>13}: test acc {100 * row['test_acc']:.2f}%  MACs red. "
              f"{100 * row['macs_reduction']:.1f}%  params red. {100 * row['params_reduction']:.1f}%  "
              f"({row['seconds']:.1f}s)", flush=True)
        rows.append(row)
    return baseline, rows


# --- part 2: proxy fidelity -------------------------------------------------------------------
def fidelity_study(args: argparse.Namespace, seed: int, timings: dict[str, float]) -> dict[str, Any]:
    """Random plans near the target: every fitness vs accuracy after a short equal fine-tune."""
    import numpy as np
    import torch
    from scipy.stats import kendalltau

    from gaprune.engine.checkpoint import example_input, load_model
    from gaprune.engine.training import resolve_device, seed_everything
    from gaprune.pipeline.finetune import open_job
    from gaprune.pipeline.setup import ensure_baseline, load_bundle, loader, plain
    from gaprune.pruning.importance import compute_importance, file_digest
    from gaprune.pruning.units import discover_units
    from gaprune.search.encodings import build_encoding
    from gaprune.search.fitness import FitnessContext, batch_norms, build_fitness

    root = Path(args.out) / "runs" / "fidelity"
    common = common_overrides(args, seed, args.fidelity_epochs) + list(args.overrides)
    cfg = job_config(compose("search", common + search_overrides(args, "nsga2")))
    started = time.perf_counter()
    seed_everything(seed)
    device = resolve_device(cfg.device)
    bundle = load_bundle(cfg)
    baseline_path = ensure_baseline(cfg, root / "train")
    model, meta, _ = load_model(baseline_path)
    model = model.to(device).eval()
    x0 = example_input(meta)
    units = discover_units(model.cpu(), x0, include_linear=bool(cfg.model.include_linear))
    model.to(device)
    # the importance search.py computes (same cache file)
    imp = cfg.importance
    key = f"{baseline_path.stem}-{file_digest(baseline_path)}-{imp.name}-{imp.calib_batches}-s{seed}.pt"
    cache = Path(cfg.paths.checkpoints) / "cache" / key
    val_batches = lambda: islice(iter(loader(bundle, "val", imp.calib_batch_size, device)), int(imp.calib_batches))  # noqa: E731
    importance = compute_importance(imp.name, model, units, val_batches, seed, cache)
    encoding = build_encoding(cfg.encoding.name, units, importance, model=model, **plain(cfg.encoding.params))
    cost = encoding.cost_model(model, x0, random.Random(seed))

    # plans: random genomes whose MACs reduction is within the window around the target
    rng = random.Random(10_000 + seed)
    lo, hi = args.target - args.fidelity_window, args.target + args.fidelity_window
    plans, seen, draws = [], set(), 0
    while len(plans) < args.fidelity_plans:
        draws += 1
        if draws > 200_000:
            raise RuntimeError(f"only {len(plans)} random plans fall in MACs reduction [{lo:.2f}, {hi:.2f}]; "
                               "widen --fidelity-window")
        plan = encoding.decode(encoding.random_genome(rng))
        macs, params = cost.cost(plan)
        reduction = 1.0 - macs / cost.base_macs
        if lo <= reduction <= hi and plan.signature() not in seen:
            seen.add(plan.signature())
            plans.append({"plan": plan, "macs": macs, "macs_reduction": reduction,
                          "params_reduction": 1.0 - params / cost.base_params})
    timings["fidelity: setup + plan sampling"] = time.perf_counter() - started

    # fitnesses, each from its own composed config (the fitness group's real defaults)
    specs = [("taylor_proxy", ["fitness=taylor_proxy"]),
             ("calib", ["fitness=calib", f"fitness.calib_samples={args.calib_samples}"]),
             ("calib+adaptive_bn", ["fitness=calib", f"fitness.calib_samples={args.calib_samples}",
                                    "fitness.params.adaptive_bn=true"]),
             ("distortion", ["fitness=distortion", f"fitness.calib_samples={args.calib_samples}"])]
    has_bn = bool(batch_norms(model))
    notes, scores = [], {}
    for name, overrides in specs:
        if name.endswith("adaptive_bn") and not has_bn:
            notes.append(f"calib+adaptive_bn skipped: {type(model).__name__} has no BatchNorm layers "
                         "(adaptive BN would be a no-op)")
            continue
        t0 = time.perf_counter()
        fcfg = job_config(compose("search", common + search_overrides(args, "nsga2")[:1] + overrides))
        fit = fcfg.fitness
        calib = (list(loader(bundle, "val", fit.get("calib_batch_size", 256), device, limit=fit.get("calib_samples")))
                 if fit.name != "taylor_proxy" else [])
        train_batches = lambda batch_size, augment=True: loader(  # noqa: E731
            bundle, "train", batch_size, device, seed, train=True, augment=augment and bool(fcfg.dataset.augment))
        context = FitnessContext(model=model, units=units, importance=importance, calib=calib, device=device,
                                 train_batches=train_batches, seed=seed)
        fitness = build_fitness(fit.name, context, **plain(fit.params))
        results = fitness.evaluate([p["plan"] for p in plans])
        if hasattr(fitness, "close"):
            fitness.close()  # remove the masking hooks from the shared model
        scores[name] = [float(r["proxy"]) for r in results]
        timings[f"fidelity: fitness {name} ({len(plans)} plans)"] = time.perf_counter() - t0

    # short, equal fine-tune of every plan through the shared routine
    t0 = time.perf_counter()
    teacher, meta, _ = load_model(baseline_path)  # a fresh, hook-free teacher
    fjob_dir = root / "finetune"
    job = open_job(cfg, fjob_dir, teacher, meta, bundle, device, "fidelity", "fidelity", units=units,
                           header={"note": "bench_quality proxy-fidelity plans"})
    rows = []
    for index, item in enumerate(plans):
        seed_everything(seed)
        rows.append(job.run(item["plan"], index, search_proxy=scores.get("calib", [None] * len(plans))[index],
                            predicted_macs=item["macs"],
                            extra={f"fitness_{k}": v[index] for k, v in scores.items()}))
    with contextlib.redirect_stdout(io.StringIO()):
        job.close()
    timings[f"fidelity: fine-tune {len(plans)} plans x {args.fidelity_epochs} epoch(s)"] = time.perf_counter() - t0

    test_acc = [r["test_acc"] for r in rows]
    val_acc = [r["val_acc"] for r in rows]
    predictors = dict(scores)
    predictors["-MACs reduction (reference)"] = [-p["macs_reduction"] for p in plans]

    def tau(x, y) -> tuple[float | None, float | None]:
        if len(set(x)) < 2 or len(set(y)) < 2:
            return None, None
        result = kendalltau(x, y)
        return float(result.statistic), float(result.pvalue)

    taus = []
    for name, values in predictors.items():
        t_test, p_test = tau(values, test_acc)
        t_val, p_val = tau(values, val_acc)
        taus.append({"fitness": name, "tau_test": t_test, "p_test": p_test, "tau_val": t_val, "p_val": p_val,
                     "n": len(values)})
    return {
        "seed": seed, "plans": len(plans), "draws": draws, "window": [lo, hi], "epochs": args.fidelity_epochs,
        "notes": notes, "kendall": taus,
        "test_acc": {"min": min(test_acc), "max": max(test_acc), "mean": float(np.mean(test_acc))},
        "macs_reduction": {"min": min(p["macs_reduction"] for p in plans),
                           "max": max(p["macs_reduction"] for p in plans)},
        "per_plan": [{"id": i, "keep_counts": p["plan"].keep_counts(),
                      "strategies": list(p["plan"].strategies.values()),
                      "macs_reduction": p["macs_reduction"], "params_reduction": p["params_reduction"],
                      **{k: v[i] for k, v in scores.items()}, "val_acc_before_finetune": r["val_acc_before_finetune"],
                      "val_acc": r["val_acc"], "test_acc": r["test_acc"]}
                     for i, (p, r) in enumerate(zip(plans, rows))],
        "finetune_dir": str(fjob_dir.resolve()),
        "torch_threads": torch.get_num_threads(),
    }


# --- summary / rendering ----------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return float(statistics.fmean(values)), (float(statistics.stdev(values)) if len(values) > 1 else None)


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    mean, std = mean_std(values)
    return f"{scale * mean:.{digits}f}" + ("" if std is None else f" ± {scale * std:.{digits}f}")


def summarise(baselines: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for arm in ARMS + EXTRA_ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        entry = {"arm": arm, "label": ARM_LABELS[arm], "seeds": [r["seed"] for r in mine],
                 "test_acc": [r["test_acc"] for r in mine], "val_acc": [r["val_acc"] for r in mine],
                 "val_acc_before_finetune": [r["val_acc_before_finetune"] for r in mine],
                 "macs_reduction": [r["macs_reduction"] for r in mine],
                 "params_reduction": [r["params_reduction"] for r in mine],
                 "finetune_epochs": sorted({int(r["epochs"]) for r in mine}),
                 "kd": sorted({bool(r["kd"]) for r in mine}),
                 "keep_counts": [r["keep_counts"] for r in mine],
                 "one_fewer": [r["one_fewer_removal_reduction"] for r in mine]
                 if mine[0].get("one_fewer_removal_reduction") is not None else None,
                 "evaluations": [r["evaluations"] for r in mine] if "evaluations" in mine[0] else None}
        entry["test_acc_mean"], entry["test_acc_std"] = mean_std(entry["test_acc"])
        table.append(entry)
    return table


def render(results: dict[str, Any]) -> str:
    s = results["setting"]
    base = results["baselines"]
    lines = [f"## Quality at equal MACs: {s['model']} on {s['dataset']['name']}", ""]
    if s["dataset"].get("note"):
        lines += [f"> {s['dataset']['note']}", ""]
    lines += [
        f"Data: {s['dataset']['train']} train / {s['dataset']['val']} val / {s['dataset']['test']} test images. "
        f"Seeds {s['seeds']} (each: own baseline, search seed, fine-tune seed). "
        f"Baseline ({s['baseline_epochs']} epochs): test acc {pm([b['test_acc'] for b in base])}%, "
        f"MACs {base[0]['macs'] / 1e6:.3f}M, params {base[0]['params'] / 1e6:.4f}M.",
        f"Target: {100 * s['target']:.0f}% fewer MACs. Search budget: population {s['population']} x "
        f"{s['generations']} generations (+ initial) = {s['population'] * (s['generations'] + 1)} proposed plans, "
        f"fitness calib on {s['calib_samples']} val images. Fine-tune (all arms): {s['finetune_epochs']} epochs, "
        f"KD={s['kd']}.", "",
        "| method | test acc % (mean ± std) | test acc per seed | val acc before FT % | MACs red. | params red. "
        "| unique plans evaluated | keep counts (first seed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in results["comparison"]:
        evals = "-" if e["evaluations"] is None else "/".join(str(v) for v in e["evaluations"])
        lines.append(
            f"| {e['label']} | {pm(e['test_acc'])} | {', '.join(f'{100 * v:.2f}' for v in e['test_acc'])} | "
            f"{pm(e['val_acc_before_finetune'])} | {pm(e['macs_reduction'], digits=1)}% | "
            f"{pm(e['params_reduction'], digits=1)}% | {evals} | {e['keep_counts'][0]} |")
    for e in results["comparison"]:
        over = max(e["macs_reduction"]) - s["target"]
        if over > 0.02:
            why = ("its pick is the highest-proxy plan at or above the target" if e["arm"] in SEARCH_ARMS
                   else "channel granularity of its global threshold" + (
                       f"; one removal fewer gives {', '.join(f'{100 * v:.1f}%' for v in e['one_fewer'])}"
                       if e.get("one_fewer") else ""))
            lines += ["", f"Note: {e['label']} overshoots the {100 * s['target']:.0f}% target by up to "
                          f"{100 * over:.1f} points ({why}): compare accuracy with its MACs reduction in mind."]
    fid = results.get("fidelity")
    if fid:
        lines += ["", f"## Proxy fidelity: {fid['plans']} random ratio_strategy plans, MACs reduction in "
                      f"[{100 * fid['macs_reduction']['min']:.1f}%, {100 * fid['macs_reduction']['max']:.1f}%], "
                      f"each fine-tuned {fid['epochs']} epoch(s) (KD), seed {fid['seed']}", "",
                  f"Post-fine-tune test acc over the plans: {100 * fid['test_acc']['min']:.2f}% .. "
                  f"{100 * fid['test_acc']['max']:.2f}% (mean {100 * fid['test_acc']['mean']:.2f}%).", "",
                  "| fitness | Kendall tau vs test acc | p | Kendall tau vs val acc | p | n |",
                  "|---|---|---|---|---|---|"]
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        for k in fid["kendall"]:
            lines.append(f"| {k['fitness']} | {fmt(k['tau_test'], '+.3f')} | {fmt(k['p_test'], '.3f')} | "
                         f"{fmt(k['tau_val'], '+.3f')} | {fmt(k['p_val'], '.3f')} | {k['n']} |")
        for note in fid["notes"]:
            lines += ["", f"Note: {note}"]
    lines += ["", "## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["timings"].items()]
    return "\n".join(lines) + "\n"


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns (and writes) the results dict."""
    import torch

    wall = time.perf_counter()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    dataset = resolve_dataset(args)
    timings["data check"] = time.perf_counter() - t0
    print(f"[bench] {args.model} on {dataset['name']}: {dataset['train']} train / {dataset['val']} val / "
          f"{dataset['test']} test; target {100 * args.target:.0f}% fewer MACs; seeds {args.seeds}; "
          f"torch threads {torch.get_num_threads()}; out {out}", flush=True)
    baselines, rows = [], []
    for seed in args.seeds:
        baseline, seed_rows = run_seed(args, seed, timings)
        baselines.append(baseline)
        rows.extend(seed_rows)
    fidelity = None
    if args.fidelity_plans > 0:
        fidelity = fidelity_study(args, args.seeds[0], timings)
    timings["total wall"] = time.perf_counter() - wall
    results = {
        "setting": {"model": args.model, "dataset": dataset, "data_dir": str(args.data_dir), "target": args.target,
                    "seeds": list(args.seeds), "train_limit": args.train_limit, "test_limit": args.test_limit,
                    "baseline_epochs": args.baseline_epochs, "finetune_epochs": args.finetune_epochs,
                    "population": args.population, "generations": args.generations,
                    "calib_samples": args.calib_samples, "fidelity_plans": args.fidelity_plans,
                    "fidelity_epochs": args.fidelity_epochs, "fidelity_window": args.fidelity_window,
                    "arms": list(args.arms), "overrides": list(args.overrides), "quick": bool(args.quick),
                    "device": args.device,
                    "threads": args.threads,
                    "kd": sorted({bool(r["kd"]) for r in rows}), "torch_threads": torch.get_num_threads(),
                    "command": " ".join(sys.argv)},
        "baselines": baselines,
        "comparison": summarise(baselines, rows),
        "rows": rows,
        "fidelity": fidelity,
        "timings": timings,
    }
    markdown = render(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown, encoding="utf-8")
    print()
    print(markdown)
    print(f"[bench] wrote {out / 'results.json'} and {out / 'results.md'}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from gaprune.utils.errors import GapruneError

    try:
        run_benchmark(args)
    except GapruneError as err:
        sys.exit(f"bench_quality: error: {err}")


if __name__ == "__main__":
    if "--progress" not in sys.argv:
        os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (gaprune is imported lazily)
    main()
