"""search.py's job. `searcher` picks what is searched:

- `network` (default): baseline -> units -> importance (cached) -> optimizer over the encoding
  with the fitness -> records, Pareto set, picks, plots; checkpointed every generation. The
  search itself (problem, optimizer, finalists, picks, compute) is `gaprune.pipeline.network`,
  shared with the Python API (`gaprune.api`); this module adds the run dir, resume and files.
- `layerwise_weight_mask`: unstructured, one layer at a time (`gaprune.pipeline.layerwise`).
"""
from __future__ import annotations

import copy
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
from gaprune.pipeline.finetune import run_finetune
from gaprune.pipeline.latency import search_latency_cost, validate_latency
from gaprune.pipeline.lifecycle import JobRun, job_run
from gaprune.pipeline.network import (  # noqa: F401
    NetworkSearch,
    at_target,
    build_search,
    finalist_fitness_params,
    search_objectives,
    search_picks,
    search_space_of,
)
from gaprune.pipeline.records import FINALISTS, RECORDS, STATE, check_states, read_finalists, read_search
from gaprune.pipeline.setup import Run, loader, plain
from gaprune.pipeline.train import ensure_baseline
from gaprune.pruning.cost import CostModel
from gaprune.pruning.importance import IMPORTANCES, cache_file, compute_importance, importance_macs
from gaprune.search.encodings import Encoding, validate_encoding
from gaprune.search.finalists import METRICS as FINALIST_METRICS
from gaprune.search.fitness import FITNESSES, Fitness
from gaprune.search.layerwise import WeightMaskConfig
from gaprune.search.optimizers import optimizer_config
from gaprune.search.picks import PICKS
from gaprune.search.problem import Problem, Score, check_objectives
from gaprune.search.workers import FitnessRecipe, WorkerPool, check_workers
from gaprune.utils.checks import check_int
from gaprune.utils.errors import GapruneError, Interrupted
from gaprune.utils.io import write_csv, write_json
from gaprune.utils.lock import releasing
from gaprune.utils.plots import plot_fitness, plot_keep_ratios, plot_pareto
from gaprune.utils.registry import Registry


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
    Score(**plain(cfg.score))
    check_objectives(list(cfg.optimizer.objectives))
    if cfg.optimizer.get("target_objectives") is not None:
        check_objectives(list(cfg.optimizer.target_objectives), "optimizer.target_objectives")
    FITNESSES.get(cfg.fitness.name)
    check_workers(cfg.fitness.workers)
    IMPORTANCES.get(cfg.importance.name)
    if cfg.pick not in PICKS:
        raise GapruneError(f"unknown pick '{cfg.pick}'; choose one of: {', '.join(PICKS)}")
    if cfg.pick == "target_macs" and cfg.score.target_macs_reduction is None:
        raise GapruneError("pick=target_macs needs score.target_macs_reduction=<fraction>, e.g. 0.7")
    check_int("finalists.count", cfg.finalists.count, 0)
    check_int("finalists.steps", cfg.finalists.steps, 1)
    if cfg.finalists.metric not in FINALIST_METRICS:
        raise GapruneError(f"finalists.metric={cfg.finalists.metric!r} is unknown; choose one of: "
                           f"{', '.join(FINALIST_METRICS)}")
    validate_latency(cfg)


def run_network_search(cfg: DictConfig) -> dict[str, Any]:
    """searcher=network: one genome per whole-network plan, evolved by `optimizer` over `encoding`;
    records checkpointed every generation (resume=), then finalists, picks and plots, then the
    fine-tune of `pick` when `then_finetune`.

    Args:
        cfg: the search.py config.

    Returns:
        The summary written to search_summary.json (with the fine-tune's rows under "finetune").
    """
    validate_search_config(cfg)
    with job_run(cfg, "search", (STATE,), "search") as job:
        run, directory = job.run, job.directory
        state, saved, generations = None, [], []
        if run.resuming:  # damaged or inconsistent records are named before any work
            state, saved, generations = read_search(directory)
            read_finalists(directory / FINALISTS)
            check_states(directory / "finetune")
        ensure_baseline(cfg, directory)
        run.reference()
        importance, encoding, cost = search_space(run)
        fitness = fitness_from_config(cfg.fitness, run, importance)
        search = build_search(cfg, encoding, cost, importance, fitness, importance_compute(run, cfg.importance),
                              latency=lambda objectives: search_latency_cost(cfg, run, objectives))  # None unless asked for
        if state is not None:
            search.problem.restore(saved, state["cache_hits"])
            print(f"resuming search in {directory} after generation {state['generation']}")
        seed_everything(cfg.seed)
        evolve(job, search, state, generations)
        job.report("during the finalists' fine-tunes")
        try:
            target_pick = search.conclude(directory, lambda: finalist_fitness(cfg, run, importance))
        except Interrupted:  # the finalists' own line names resume=<dir>; the job's names the whole command
            raise job.interrupted() from None
        job.report(f"after generation {generations[-1]['generation']}")
        summary = finish_search(cfg, directory, search.problem, encoding, run.units, generations, run.baseline_path,
                                run.meta, target_pick, search.spent)
        job.logger.table("evaluations", [{k: v for k, v in r.items() if k != "genome"} for r in search.problem.records])
        job.logger.images({name: directory / f"{name}.png" for name in ("fitness", "pareto", "keep_ratios")})
        job.finish(summary, "search_summary.json",
                   {**{k: v for k, v in summary.items() if isinstance(v, (int, float))}, "picks": summary["picks"],
                    "compute_macs_by_phase": summary["compute_macs_by_phase"]})
    if cfg.then_finetune:
        summary["finetune"] = run_finetune(cfg, directory, directory / "finetune")
    return summary


def evolve(job: JobRun, search: NetworkSearch, state: dict[str, Any] | None, generations: list[dict[str, Any]]) -> None:
    """Run the optimizer's generations (those after `state`'s when resuming), recording each
    (`GenerationRecords`); a search that already ran them all is left as it is."""
    records = GenerationRecords(job, search, generations)
    total = search.optimizer.config.generations
    if total == 0:
        print("optimizer.params.generations=0: only the initial population is evaluated")
    try:
        if state is None or state["generation"] < total:
            search.run(records, state)  # closes the fitness (stops fitness.workers > 1) before the fine-tune
    finally:
        records.bar.close()


class GenerationRecords:
    """What the search leaves behind after every generation: its row (generations.json / .csv,
    the logger, the progress bar), every record so far (evaluations.json) and the optimizer's
    state (state.json, written last: a resume continues from it), then the job's interrupt line."""

    def __init__(self, job: JobRun, search: NetworkSearch, generations: list[dict[str, Any]]) -> None:
        self.job, self.problem, self.optimizer, self.generations = job, search.problem, search.optimizer, generations
        self.logger = job.logger
        self.started = time.perf_counter() - (generations[-1]["seconds"] if generations else 0.0)
        self.bar = tqdm(total=self.optimizer.config.generations + 1, initial=len(generations),
                        desc=f"search {job.cfg.optimizer.name}", unit="gen", leave=False, dynamic_ncols=True)
        if generations:
            job.report(f"after generation {generations[-1]['generation']}")
        else:
            job.report("before the first generation finished", "nothing to resume, start the search again")

    def __call__(self, generation: int, population, _offspring) -> None:
        directory, problem = self.job.directory, self.problem
        row = generation_row(generation, population, problem, self.started)
        self.generations.append(row)
        write_json(directory / RECORDS, problem.records)
        write_json(directory / "generations.json", self.generations)
        write_csv(directory / "generations.csv", self.generations)
        write_json(directory / STATE, {**self.optimizer.to_state(generation, population), "records": len(problem.records),
                                       "cache_hits": problem.cache_hits})
        self.job.report(f"after generation {generation}")
        self.logger.log({k: v for k, v in row.items() if k != "generation"}, step=generation)
        self.bar.update(1)
        self.bar.set_postfix(best=f"{row['best_score']:.4f}", evals=row["evaluations"])


def finish_search(cfg: DictConfig, directory: Path, problem: Problem, encoding, units, generations,
                  baseline_path: Path, meta: dict[str, Any], target_pick: dict[str, Any] | None = None,
                  spent: Compute | None = None) -> dict[str, Any]:
    """Pareto set, picks and plots from the records, and the summary (search_summary.json: the
    caller writes it); `target_pick` (the finalists' winner) replaces the highest-proxy plan at
    the MACs target; `spent`: the search's compute by phase (summary `compute_macs`,
    `compute_macs_by_phase`)."""
    spent = spent or Compute()
    records = problem.records
    front, picks = search_picks(cfg, records, target_pick)

    def with_plan(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "plan": encoding.decode(record["genome"]).to_json()}

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
    importance = run_importance(run, run.cfg.importance)
    return (importance, *search_space_of(run.cfg, run.model, run.units, run.x0, importance))


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
    return importance_macs(imp.name, len(run.bundle.val), imp.calib_batches, imp.calib_batch_size, run.meta["macs"])


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


def finalist_fitness(cfg: DictConfig, run: Run, importance: dict[str, np.ndarray]) -> Fitness:
    """The finalists' short fine-tune as a fitness: the `finetune` recipe capped at
    `finalists.steps` SGD steps (same seeded batches for every plan), scored on
    `finalists.val_samples` validation images."""
    fin, ft = cfg.finalists, cfg.finetune
    return FitnessRecipe("finetune", finalist_fitness_params(cfg), run.model, run.units, importance, run.bundle,
                         fin.val_samples, ft.eval_batch_size, int(cfg.seed),
                         bool(cfg.dataset.augment))(torch.device(run.device))


@releasing
def run_search(cfg: DictConfig) -> dict[str, Any]:
    cfg = translate_deprecated(cfg)
    return SEARCHERS.get(cfg.searcher.name).run(cfg)
