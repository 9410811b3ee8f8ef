"""search.py's job. `searcher` picks what is searched:

- `network` (default): baseline -> units -> importance (cached) -> optimizer over the encoding
  with the fitness -> records, Pareto set, picks, plots; checkpointed every generation.
- `layerwise_weight_mask`: unstructured, one layer at a time (`gaprune.pipeline.layerwise`).
"""
from __future__ import annotations

import copy
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from gaprune.data.loaders import capped
from gaprune.engine.compute import Compute, format_macs
from gaprune.engine.training import seed_everything
from gaprune.oneshot.base import check_int
from gaprune.pipeline.finetune import finetune_recipe, run_finetune
from gaprune.pipeline.latency import latency_picks, search_latency_cost, validate_latency
from gaprune.pipeline.setup import Run, loader, make_logger, open_run, plain
from gaprune.pruning.cost import CostModel
from gaprune.pruning.importance import IMAGE_PASSES, IMPORTANCES, cache_file, compute_importance
from gaprune.search.encodings import Encoding, KeepRatioEncoding, build_encoding, validate_encoding
from gaprune.search.finalists import METRICS as FINALIST_METRICS, rerank, select_finalists
from gaprune.search.fitness import FITNESSES, Fitness
from gaprune.search.layerwise import WeightMaskConfig
from gaprune.search.optimizers import build_optimizer, optimizer_config
from gaprune.search.picks import PICKS, knee, pareto_front, pick_plans
from gaprune.search.problem import Objective, Problem, check_objectives
from gaprune.search.target import TargetRepair, target_seeds
from gaprune.search.workers import FitnessRecipe, WorkerPool, check_workers
from gaprune.utils.errors import GapruneError, Interrupted
from gaprune.utils.io import read_json, write_csv, write_json
from gaprune.utils.plots import plot_fitness, plot_keep_ratios, plot_pareto
from gaprune.utils.registry import Registry

STATE = "state.json"
RECORDS = "evaluations.json"


def generation_row(generation: int, population, problem: Problem, started: float) -> dict[str, Any]:
    records = [problem.record_of(genome) for genome in population]
    scores = [r["score"] for r in records]
    proxies = [r["proxy"] for r in records]
    return {
        "generation": generation,
        "evaluations": len(problem.records),
        "cache_hits": problem.cache_hits,
        "best_score": max(scores),
        "mean_score": float(np.mean(scores)),
        "best_proxy": max(proxies),
        "mean_proxy": float(np.mean(proxies)),
        "mean_macs_reduction": float(np.mean([r["macs_reduction"] for r in records])),
        "max_macs_reduction": max(r["macs_reduction"] for r in records),
        "seconds": time.perf_counter() - started,
    }


def validate_search_config(cfg: DictConfig) -> None:
    """Fail on bad options in one line, before a baseline is trained or a file is written."""
    validate_encoding(cfg.encoding.name, **plain(cfg.encoding.params))
    optimizer_config(cfg.optimizer.name, **plain(cfg.optimizer.params))
    Objective(**plain(cfg.objective))
    check_objectives(list(cfg.optimizer.objectives))
    if cfg.optimizer.get("target_objectives") is not None:
        check_objectives(list(cfg.optimizer.target_objectives), "optimizer.target_objectives")
    FITNESSES.get(cfg.fitness.name)
    check_workers(cfg.fitness.workers)
    IMPORTANCES.get(cfg.importance.name)
    if cfg.pick not in PICKS:
        raise GapruneError(f"unknown pick '{cfg.pick}'; choose one of: {', '.join(PICKS)}")
    if cfg.pick == "target_macs" and cfg.objective.target_macs_reduction is None:
        raise GapruneError("pick=target_macs needs objective.target_macs_reduction=<fraction>, e.g. 0.7")
    check_int("finalists.count", cfg.finalists.count, 0)
    check_int("finalists.steps", cfg.finalists.steps, 1)
    if cfg.finalists.metric not in FINALIST_METRICS:
        raise GapruneError(f"finalists.metric={cfg.finalists.metric!r} is unknown; choose one of: "
                           f"{', '.join(FINALIST_METRICS)}")
    validate_latency(cfg)


def run_network_search(cfg: DictConfig) -> dict[str, Any]:
    """searcher=network: one genome per whole-network plan, evolved by `optimizer` over `encoding`."""
    validate_search_config(cfg)
    run = open_run(cfg, (STATE,), "search")
    directory = run.directory
    run.reference()
    baseline_path, meta, units = run.baseline_path, run.meta, run.units
    importance, encoding, cost = search_space(run)
    spent = Compute()
    spent.add("importance", importance_compute(run, cfg.importance))
    fitness = fitness_from_config(cfg.fitness, run, importance)
    objective = Objective(**plain(cfg.objective))
    repair, seeds = at_target(cfg, objective, encoding, cost, importance)
    objectives = search_objectives(cfg, repair)
    problem = Problem(encoding, fitness, cost, objective, objectives=objectives, repair=repair,
                      latency=search_latency_cost(cfg, run, objectives))  # None unless latency is asked for
    optimizer = build_optimizer(cfg.optimizer.name, problem, seeds=list(seeds.values()), **plain(cfg.optimizer.params))

    state = None
    generations: list[dict[str, Any]] = []
    if run.resuming:
        state = read_json(directory / STATE)
        problem.restore(read_json(directory / RECORDS)[: state["records"]], state["cache_hits"])
        generations = read_json(directory / "generations.json")[: state["generation"] + 1]
        print(f"resuming search in {directory} after generation {state['generation']}")
    seed_everything(cfg.seed)

    logger = make_logger(cfg, directory, "search")
    started = time.perf_counter() - (generations[-1]["seconds"] if generations else 0.0)
    bar = tqdm(total=optimizer.config.generations + 1, initial=len(generations), desc=f"search {cfg.optimizer.name}",
               unit="gen", leave=False, dynamic_ncols=True)

    def on_generation(generation: int, population, _offspring) -> None:
        row = generation_row(generation, population, problem, started)
        generations.append(row)
        write_json(directory / RECORDS, problem.records)
        write_json(directory / "generations.json", generations)
        write_csv(directory / "generations.csv", generations)
        write_json(directory / STATE, {**optimizer.to_state(generation, population), "records": len(problem.records),
                                              "cache_hits": problem.cache_hits})
        logger.log({k: v for k, v in row.items() if k != "generation"}, step=generation)
        bar.update(1)
        bar.set_postfix(best=f"{row['best_score']:.4f}", evals=row["evaluations"])

    if optimizer.config.generations == 0:
        print("optimizer.params.generations=0: only the initial population is evaluated")
    if state is None or state["generation"] < optimizer.config.generations:
        try:
            optimizer.run(on_generation, state)
        except KeyboardInterrupt:
            bar.close()
            logger.finish()
            if not generations:
                raise Interrupted("interrupted before the first generation finished; nothing to resume, "
                                  "start the search again") from None
            raise Interrupted(f"interrupted after generation {generations[-1]['generation']}; resume with "
                              f"resume={directory}") from None
        finally:
            fitness.close()  # stops the workers of fitness.workers > 1 before the fine-tune
    bar.close()

    target_pick = finalist_pick(cfg, run, importance, problem, encoding, seeds, directory)
    spent.add("proxy", problem.compute_macs)
    if target_pick is not None:
        spent.add("finalists", sum(row.get("compute_macs", 0) for row in read_json(directory / "finalists.json")["rows"]))
    summary = finish_search(cfg, directory, problem, encoding, units, generations, baseline_path, meta, target_pick,
                            spent)
    logger.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    logger.finish()
    if cfg.then_finetune:
        summary["finetune"] = run_finetune(cfg, directory, directory / "finetune")
    return summary


def finish_search(cfg: DictConfig, directory: Path, problem: Problem, encoding, units, generations,
                  baseline_path: Path, meta: dict[str, Any], target_pick: dict[str, Any] | None = None,
                  spent: Compute | None = None) -> dict[str, Any]:
    """Pareto set, picks, plots and summary from the records; `target_pick` (the finalists'
    winner) replaces the highest-proxy plan at the MACs target; `spent`: the search's compute
    by phase (summary `compute_macs`, `compute_macs_by_phase`)."""
    spent = spent or Compute()
    records = problem.records
    front = pareto_front(records)

    def with_plan(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "plan": encoding.decode(record["genome"]).to_json()}

    picks = {"knee": knee(front), "best": pick_plans(records, "best")[0]}
    target = cfg.objective.target_macs_reduction
    if target is not None and any(r["macs_reduction"] >= target for r in records):
        picks["target_macs"] = target_pick or pick_plans(records, "target_macs", target)[0]
    picks.update(latency_picks(cfg, records))
    write_json(directory / "pareto.json", [with_plan(r) for r in front])
    write_json(directory / "picks.json", {name: with_plan(r) for name, r in picks.items()})
    write_json(directory / "best_plan.json", with_plan(picks["best"]))
    write_csv(directory / "evaluations.csv", [{k: (" ".join(map(str, v)) if isinstance(v, list) else v)
                                               for k, v in r.items() if k != "genome"} for r in records])
    plot_fitness(generations, directory / "fitness.png")
    plot_pareto(records, front, picks, directory / "pareto.png")
    plot_keep_ratios(encoding.layer_names(), {name: r["keep_ratios"] for name, r in picks.items()},
                     directory / "keep_ratios.png")
    summary = {
        "run_dir": str(directory.resolve()),
        "baseline": str(baseline_path.resolve()),
        "model": meta["model"],
        "data": meta["data"],
        "baseline_val_acc": meta["val_acc"],
        "baseline_test_acc": meta["test_acc"],
        "baseline_macs": problem.cost.base_macs,
        "baseline_params": problem.cost.base_params,
        "units": [{"name": u.name, "channels": u.channels} for u in units],
        "optimizer": cfg.optimizer.name,
        "fitness": cfg.fitness.name,
        "encoding": cfg.encoding.name,
        "searcher": "network",
        "evaluations": len(records),
        "cache_hits": problem.cache_hits,
        "pareto_size": len(front),
        "seconds": generations[-1]["seconds"] if generations else 0.0,
        "compute_macs": spent.total,
        "compute_macs_by_phase": spent.to_json(),
        "picks": {name: {k: r[k] for k in ("id", "proxy", "score", "macs_reduction", "params_reduction")}
                  for name, r in picks.items()},
    }
    write_json(directory / "search_summary.json", summary)
    knee_pick = picks["knee"]
    print(f"search done: {len(records)} plans evaluated ({problem.cache_hits} cache hits) in {summary['seconds']:.1f}s, "
          f"{format_macs(spent.total)} MACs of compute; "
          f"knee proxy {knee_pick['proxy']:.4f} at {100 * knee_pick['macs_reduction']:.1f}% fewer MACs -> {directory}")
    return summary


@dataclass(frozen=True)
class Searcher:
    """A `searcher` option: the job that runs it and the constructor of its `searcher.params`."""

    run: Callable[[DictConfig], dict[str, Any]]
    options: Callable[..., Any]


def _no_options(**params: Any) -> None:
    if params:
        raise GapruneError(f"searcher=network has no option(s) {', '.join(sorted(params))}; its options are "
                           "the encoding / fitness / optimizer groups")


def _run_layerwise(cfg: DictConfig) -> dict[str, Any]:
    from gaprune.pipeline.layerwise import run_layerwise_search

    return run_layerwise_search(cfg)


SEARCHERS: Registry[Searcher] = Registry("searcher")
SEARCHERS.register("network")(Searcher(run_network_search, _no_options))
SEARCHERS.register("layerwise_weight_mask")(Searcher(_run_layerwise, lambda **params: WeightMaskConfig.from_params(params)))


def translate_deprecated(cfg: DictConfig) -> DictConfig:
    """encoding=weight_mask (deprecated for one release) means searcher=layerwise_weight_mask
    with the same options."""
    if cfg.encoding.name != "weight_mask":
        return cfg
    print("encoding=weight_mask is deprecated; use searcher=layerwise_weight_mask "
          "(options under searcher.params, same names)", file=sys.stderr)
    with open_dict(cfg):
        cfg.searcher = OmegaConf.create({"name": "layerwise_weight_mask", "params": plain(cfg.encoding.params)})
    return cfg


def search_space(run: Run) -> tuple[dict[str, np.ndarray], Encoding, CostModel]:
    """(importance, encoding, cost model) of a run whose reference model is loaded: importance
    computed once on validation batches (cached by checkpoint), the configured encoding, and the
    encoding's cost model checked against physical pruning. Moves the model to the run's device."""
    cfg, model = run.cfg, run.model
    importance = run_importance(run, cfg.importance)
    encoding = build_encoding(cfg.encoding.name, run.units, importance, model=model, **plain(cfg.encoding.params))
    return importance, encoding, encoding.cost_model(model, run.x0, random.Random(cfg.seed))


def run_importance(run: Run, imp: DictConfig) -> dict[str, np.ndarray]:
    """Channel importance of the run's reference model by an `importance` group config, on
    validation batches (cached by checkpoint). Moves the model to the run's device."""
    cfg, device = run.cfg, run.device
    run.model.to(device)
    cache = cache_file(Path(cfg.paths.checkpoints) / "cache", run.baseline_path, imp.name, imp.calib_batches, cfg.seed)
    val_batches = lambda: capped(loader(run.bundle, "val", imp.calib_batch_size, device), imp.calib_batches)  # noqa: E731
    return compute_importance(imp.name, run.model, run.units, val_batches, cfg.seed, cache)


def importance_compute(run: Run, imp: DictConfig) -> int:
    """MACs the `importance` option costs on the run's baseline (`gaprune.engine.compute`):
    Taylor's forward + backward over its validation batches; L1, BN-scale and random cost none.
    Counted whether or not the scores came from the cache."""
    passes = IMAGE_PASSES.get(imp.name, 0)
    if not passes:
        return 0
    available = len(run.bundle.val)
    images = available if imp.calib_batches is None else min(available, int(imp.calib_batches) * int(imp.calib_batch_size))
    return int(images * passes * run.meta["macs"])


def fitness_from_config(fit: DictConfig, run: Run, importance: dict[str, np.ndarray]) -> Fitness | WorkerPool:
    """The `fitness` group's fitness over the run's reference model: calibration batches from
    validation, fresh seeded training loaders for adaptive BN / fine-tuning fitnesses. With
    fitness.workers=N > 1, a pool of N Ray workers each building that fitness (`gaprune.search.workers`)."""
    cfg, device = run.cfg, torch.device(run.device)
    workers = check_workers(fit.workers)
    shipped = workers > 1 and device.type != "cpu"  # workers unpickle the model on CPU, then move it to their GPU
    calib = (None, None) if fit.name == "taylor_proxy" else (fit.calib_samples, fit.calib_batch_size)
    recipe = FitnessRecipe(fit.name, plain(fit.params), copy.deepcopy(run.model).cpu() if shipped else run.model,
                           run.units, importance, run.bundle, *calib, int(cfg.seed), bool(cfg.dataset.augment))
    return recipe(device) if workers == 1 else WorkerPool(recipe, workers, gpu=device.type == "cuda")


def finalist_pick(cfg: DictConfig, run: Run, importance: dict[str, np.ndarray], problem: Problem, encoding,
                  seeds: dict[str, list[float]], directory: Path) -> dict[str, Any] | None:
    """pick=target_macs with finalists.count > 0: the highest-proxy plans at the target and the
    one-shot seeds, re-ranked by a short fine-tune with the `finetune` recipe
    (gaprune.search.finalists); None leaves the proxy's pick."""
    target, fin = cfg.objective.target_macs_reduction, cfg.finalists
    if cfg.pick != "target_macs" or target is None or not fin.count:
        return None
    seeded = [problem.record_of(problem.repair(list(genome)) if problem.repair else genome) for genome in seeds.values()]
    finalists = select_finalists(problem.records, target, int(fin.count), seeded)
    if len(finalists) < 2:
        return None
    fitness = finalist_fitness(cfg, run, importance)
    ids = ", ".join(f"#{r['id']}" for r in finalists)
    print(f"finalists: {len(finalists)} plans at the target ({ids}) re-ranked by a {fin.steps}-step fine-tune")
    try:
        winner = rerank(finalists, encoding.decode, fitness, directory / "finalists.json", target, fin.metric,
                        base_macs=problem.cost.base_macs, recipe=finetune_recipe(cfg),
                        states=directory / "finalists" if fin.continue_winner else None)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted during the finalists' fine-tunes; resume with resume={directory}") from None
    print(f"finalists: #{winner['id']} wins (proxy {winner['proxy']:.4f}; highest proxy was #{finalists[0]['id']})")
    return winner


def finalist_fitness(cfg: DictConfig, run: Run, importance: dict[str, np.ndarray]) -> Fitness:
    """The finalists' short fine-tune as a fitness: the `finetune` recipe capped at
    `finalists.steps` SGD steps (same seeded batches for every plan), scored on
    `finalists.calib_samples` validation images."""
    fin, ft = cfg.finalists, cfg.finetune
    params = {k: v for k, v in finetune_recipe(cfg).items() if k not in ("seed", "augment")}
    return FitnessRecipe("finetune", dict(params, steps=fin.steps), run.model, run.units, importance, run.bundle,
                         fin.calib_samples, ft.eval_batch_size, int(cfg.seed),
                         bool(cfg.dataset.augment))(torch.device(run.device))


def search_objectives(cfg: DictConfig, repair: TargetRepair | None) -> list[str]:
    """`optimizer.objectives`, or `optimizer.target_objectives` when genomes are repaired onto a
    MACs target (that target is then a constraint met by construction, not an objective)."""
    objectives = list(cfg.optimizer.objectives)
    at_target = cfg.optimizer.get("target_objectives")
    if repair is None or not at_target or list(at_target) == objectives:
        return objectives
    print(f"{cfg.optimizer.name} objectives at the target: {', '.join(at_target)} "
          f"(optimizer.target_objectives; not {', '.join(objectives)})")
    return list(at_target)


def at_target(cfg: DictConfig, objective: Objective, encoding, cost, importance) -> tuple[TargetRepair | None, dict]:
    """With objective.target_macs_reduction: the genome repair onto the target (keep-ratio
    encodings, objective.repair_to_target) and the one-shot seeds of the first population
    (optimizer.seed_with_oneshot)."""
    target = objective.target_macs_reduction
    if target is None or not objective.repair_to_target:
        return None, {}
    if not isinstance(encoding, KeepRatioEncoding):
        print(f"note: encoding={cfg.encoding.name} has no keep ratios to repair onto the MACs target; "
              "the target acts through objective.penalty only")
        return None, {}
    repair = TargetRepair(encoding, cost, target, objective.target_tolerance)
    seeds = target_seeds(encoding, cost, importance, target) if cfg.optimizer.get("seed_with_oneshot") else {}
    print(f"search at {target:.0%} fewer MACs: genomes repaired onto [{target:.3f}, "
          f"{target + objective.target_tolerance:.3f}]" + (f"; first population seeded with {', '.join(seeds)}"
                                                          if seeds else ""))
    return repair, seeds


def run_search(cfg: DictConfig) -> dict[str, Any]:
    cfg = translate_deprecated(cfg)
    return SEARCHERS.get(cfg.searcher.name).run(cfg)
