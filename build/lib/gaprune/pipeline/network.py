"""The whole-network search (searcher=network) as one code path for search.py's job
(`gaprune.pipeline.search`) and the Python API (`gaprune.api`).

Both callers bring what only they know how to get: the reference model, its units, example input
and importance, the fitness (from the dataset's splits or from the user's batches), what the
importance cost, and a run dir for the finalists' file. Everything from there on is shared:
the encoding and its cost model, the MACs-target repair and one-shot seeds, the objectives, the
`Problem` and optimizer, the finalists' re-ranking at the target, the picks, and the compute
spent by phase (`gaprune.engine.compute`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.nn as nn
from omegaconf import DictConfig

from gaprune.engine.compute import Compute
from gaprune.pipeline.finetune import finetune_recipe
from gaprune.pipeline.latency import latency_picks
from gaprune.pipeline.setup import plain
from gaprune.pruning.cost import CostModel
from gaprune.search.encodings import Encoding, KeepRatioEncoding, build_encoding
from gaprune.search.finalists import rerank, select_finalists
from gaprune.search.fitness import Fitness
from gaprune.search.optimizers import Optimizer, build_optimizer
from gaprune.search.picks import knee, pareto_front, pick_plans
from gaprune.search.problem import Problem, Score
from gaprune.search.target import TargetRepair, target_seeds
from gaprune.utils.errors import Interrupted
from gaprune.utils.io import read_json

Record = dict[str, Any]


def search_space_of(cfg: DictConfig, model: nn.Module, units, x0, importance: dict[str, np.ndarray]
                    ) -> tuple[Encoding, CostModel]:
    """The configured encoding over `units` and its cost model, checked against physical pruning
    on two plans drawn with `random.Random(cfg.seed)`."""
    encoding = build_encoding(cfg.encoding.name, units, importance, model=model, **plain(cfg.encoding.params))
    return encoding, encoding.cost_model(model, x0, random.Random(cfg.seed))


def search_objectives(cfg: DictConfig, repair: TargetRepair | None) -> list[str]:
    """`optimizer.objectives`, or `optimizer.target_objectives` when genomes are repaired onto a
    MACs target (that target is then a constraint met by construction, not an objective)."""
    objectives = list(cfg.optimizer.objectives)
    at_target_objectives = cfg.optimizer.get("target_objectives")
    if repair is None or not at_target_objectives or list(at_target_objectives) == objectives:
        return objectives
    print(f"{cfg.optimizer.name} objectives at the target: {', '.join(at_target_objectives)} "
          f"(optimizer.target_objectives; not {', '.join(objectives)})")
    return list(at_target_objectives)


def at_target(cfg: DictConfig, score: Score, encoding, cost, importance) -> tuple[TargetRepair | None, dict]:
    """With score.target_macs_reduction: the genome repair onto the target (keep-ratio
    encodings, score.repair_to_target) and the one-shot seeds of the first population
    (optimizer.seed_with_oneshot)."""
    target = score.target_macs_reduction
    if target is None or not score.repair_to_target:
        return None, {}
    if not isinstance(encoding, KeepRatioEncoding):
        print(f"note: encoding={cfg.encoding.name} has no keep ratios to repair onto the MACs target; "
              "the target acts through score.penalty only")
        return None, {}
    repair = TargetRepair(encoding, cost, target, score.target_tolerance)
    seeds = target_seeds(encoding, cost, importance, target) if cfg.optimizer.get("seed_with_oneshot") else {}
    print(f"search at {target:.0%} fewer MACs: genomes repaired onto [{target:.3f}, "
          f"{target + score.target_tolerance:.3f}]" + (f"; first population seeded with {', '.join(seeds)}"
                                                          if seeds else ""))
    return repair, seeds


def finalist_fitness_params(cfg: DictConfig) -> dict[str, Any]:
    """The `finetune` fitness options of the finalists' short fine-tune: the `finetune` recipe
    capped at `finalists.steps` SGD steps."""
    params = {k: v for k, v in finetune_recipe(cfg).items() if k not in ("seed", "augment")}
    return dict(params, steps=cfg.finalists.steps)


def search_picks(cfg: DictConfig, records: list[Record], target_pick: Record | None = None
                 ) -> tuple[list[Record], dict[str, Record]]:
    """(Pareto front, picks): knee and best always; target_macs when a plan reaches the MACs
    target (`target_pick`, the finalists' winner, replaces the highest proxy there); target_latency
    likewise."""
    front = pareto_front(records)
    picks = {"knee": knee(front), "best": pick_plans(records, "best")[0]}
    target = cfg.score.target_macs_reduction
    if target is not None and any(r["macs_reduction"] >= target for r in records):
        picks["target_macs"] = target_pick or pick_plans(records, "target_macs", target)[0]
    picks.update(latency_picks(cfg, records))
    return front, picks


@dataclass
class NetworkSearch:
    """One configured search: `build_search` makes it, `run` evolves it, `conclude` re-ranks the
    finalists and totals the compute in `spent`."""

    cfg: DictConfig
    encoding: Encoding
    problem: Problem
    optimizer: Optimizer
    seeds: dict[str, list[float]]
    fitness: Any  # a Fitness, or a WorkerPool of them
    spent: Compute

    def run(self, on_generation: Callable[..., None], state: dict[str, Any] | None = None) -> None:
        """The optimizer's generations (from `state` when resuming); the fitness is closed after."""
        try:
            self.optimizer.run(on_generation, state)
        finally:
            self.fitness.close()  # stops the workers of fitness.workers > 1

    def conclude(self, directory: Path, finalist_fitness: Callable[[], Fitness]) -> Record | None:
        """The finalists' winner (None: the proxy's pick stands), with the proxy's and the
        finalists' compute added to `spent`."""
        target_pick = self.rerank(directory, finalist_fitness)
        self.spent.add("proxy", self.problem.compute_macs)
        if target_pick is not None:
            rows = read_json(directory / "finalists.json")["rows"]
            self.spent.add("finalists", sum(row.get("compute_macs", 0) for row in rows))
        return target_pick

    def rerank(self, directory: Path, finalist_fitness: Callable[[], Fitness]) -> Record | None:
        """pick=target_macs with finalists.count > 0: the highest-proxy plans at the target and the
        one-shot seeds, re-ranked by a short fine-tune (`finalist_fitness()` builds it;
        gaprune.search.finalists, resumable through <directory>/finalists.json); None leaves the
        proxy's pick."""
        cfg, problem = self.cfg, self.problem
        target, fin = cfg.score.target_macs_reduction, cfg.finalists
        if cfg.pick != "target_macs" or target is None or not fin.count:
            return None
        seeded = [problem.record_of(problem.repair(list(genome)) if problem.repair else genome)
                  for genome in self.seeds.values()]
        finalists = select_finalists(problem.records, target, int(fin.count), seeded)
        if len(finalists) < 2:
            return None
        fitness = finalist_fitness()
        ids = ", ".join(f"#{r['id']}" for r in finalists)
        print(f"finalists: {len(finalists)} plans at the target ({ids}) re-ranked by a {fin.steps}-step fine-tune")
        try:
            winner = rerank(finalists, self.encoding.decode, fitness, directory / "finalists.json", target, fin.metric,
                            base_macs=problem.cost.base_macs, recipe=finetune_recipe(cfg),
                            states=directory / "finalists" if fin.continue_winner else None)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted during the finalists' fine-tunes; resume with resume={directory}") from None
        print(f"finalists: #{winner['id']} wins (proxy {winner['proxy']:.4f}; highest proxy was #{finalists[0]['id']})")
        return winner


def build_search(cfg: DictConfig, encoding: Encoding, cost: CostModel, importance: dict[str, np.ndarray],
                 fitness: Any, importance_macs: int, latency: Callable[[list[str]], Any] | None = None) -> NetworkSearch:
    """The search of `cfg` over `encoding` scored by `fitness`: score, MACs-target repair and
    seeds, objectives, Problem and optimizer. `importance_macs`: what computing `importance`
    cost; `latency(objectives)`: the latency cost when the search asks for one (None: never)."""
    spent = Compute()
    spent.add("importance", importance_macs)
    score = Score(**plain(cfg.score))
    repair, seeds = at_target(cfg, score, encoding, cost, importance)
    objectives = search_objectives(cfg, repair)
    problem = Problem(encoding, fitness, cost, score, objectives=objectives, repair=repair,
                      latency=latency(objectives) if latency is not None else None)
    optimizer = build_optimizer(cfg.optimizer.name, problem, seeds=list(seeds.values()), **plain(cfg.optimizer.params))
    return NetworkSearch(cfg, encoding, problem, optimizer, seeds, fitness, spent)
