"""searcher=layerwise_weight_mask: unstructured pruning, one layer at a time.

For each chosen conv / linear layer in forward order, the shared DEAP GA (optimizer "ga" of
`gaprune.search.optimizers`, through `Optimizer.run`) evolves a binary mask over that one layer's
weights (one bit per weight, `gaprune.search.layerwise.problem`): tournament selection, uniform
crossover, bit-flip mutation, hall-of-fame elites. The initial population holds the all-ones mask,
the magnitude mask at `keep_prob` (the optimizer's seeds) and random masks at `keep_prob`.
Fitness = w_acc * accuracy of the masked model on a calibration subset of validation + w_sparsity *
the layer's sparsity. The winning mask is applied for good (later layers are searched on the
already pruned model), optionally followed by a short retrain that re-applies every mask after
each optimizer step. Sparsity, not MACs, is the cost objective; sparse MACs / params are reported
with `SparseCostModel`.

Invariants: `evolve_layer` leaves the model unchanged; layer i's GA draws only from `random`
seeded with `layer_seed(seed, i)` (and the retrain after it from torch seeded the same way), so a
run is deterministic given its seed and a run resumed after its k-th layer (`search_layers(done=...)`
on that run's weights) repeats the uninterrupted one. Masks are scored a chunk per forward pass
(`gaprune.search.layerwise.evaluate`); `gaprune.pipeline.layerwise` is the search.py job (run dir,
resume, tables, plot, checkpoint).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from deap import tools
from tqdm.auto import tqdm

from gaprune.engine.training import evaluate
from gaprune.models.tracing import trace_layers
from gaprune.pruning.masking import apply_masks_permanently, magnitude_masks, sparse_layers
from gaprune.pruning.plan import SparsePlan
from gaprune.search.layerwise.evaluate import LayerEvaluator
from gaprune.search.layerwise.problem import LayerProblem
from gaprune.search.optimizers import Optimizer, build_optimizer
from gaprune.utils.errors import GapruneError


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class WeightMaskConfig:
    layers: Any = "all"  # "all", one layer name, or a list of names
    population: int = 24
    generations: int = 20
    keep_prob: float = 0.7  # keep probability of the random initial masks (and the magnitude seed)
    w_acc: float = 1.0
    w_sparsity: float = 0.3
    cxpb: float = 0.9  # probability that a pair of parents is crossed (uniform crossover)
    mutpb: float = 0.01  # per-bit flip probability of every offspring
    tournament: int = 3
    elite: int = 2
    calib_samples: int | None = 512
    batch_size: int = 256
    chunk: int = 8  # individuals per forward pass
    retrain_epochs: int = 0
    retrain_steps: int | None = None  # cap on optimizer steps per retrain epoch
    retrain_lr: float = 0.01
    final_eval: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "WeightMaskConfig":
        try:
            config = cls(**dict(params or {}))
        except TypeError as err:
            raise GapruneError(f"bad option for searcher=layerwise_weight_mask: {err}; "
                               f"valid options: {', '.join(cls.__dataclass_fields__)}") from None
        config.validate()
        return config

    def validate(self) -> None:
        def bad(key: str, rule: str) -> GapruneError:
            return GapruneError(f"searcher.params.{key}={getattr(self, key)!r} {rule}")

        if isinstance(self.layers, (list, tuple)):
            if not self.layers or not all(isinstance(n, str) and n for n in self.layers):
                raise bad("layers", "must be 'all', a layer name or a non-empty list of layer names")
        elif not isinstance(self.layers, str) or not self.layers:
            raise bad("layers", "must be 'all', a layer name or a non-empty list of layer names")
        for key, low in (("population", 3), ("tournament", 1), ("batch_size", 1), ("chunk", 1)):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < low:
                raise bad(key, f"must be an integer >= {low}")
        for key in ("generations", "retrain_epochs"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise bad(key, "must be an integer >= 0")
        if not isinstance(self.elite, int) or not 0 <= self.elite < self.population:
            raise bad("elite", f"must be an integer in [0, population={self.population})")
        if not 0.0 < self.keep_prob <= 1.0:
            raise bad("keep_prob", "must be in (0, 1]")
        for key in ("cxpb", "mutpb"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "must be a probability in [0, 1]")
        if self.w_acc < 0 or self.w_sparsity < 0 or self.w_acc + self.w_sparsity == 0:
            raise bad("w_acc", f"and w_sparsity={self.w_sparsity} must be >= 0 and not both 0")
        for key in ("calib_samples", "retrain_steps"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(key, "must be a positive integer or null")
        if not self.retrain_lr > 0:
            raise bad("retrain_lr", "must be > 0")

    def layer_list(self) -> list[str] | None:
        """None for 'all', else the requested names."""
        if isinstance(self.layers, str):
            return None if self.layers == "all" else [self.layers]
        return list(self.layers)


def forward_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Conv / linear layers in the order a forward pass first calls them."""
    candidates = sparse_layers(model)
    order: list[str] = []
    trace_layers(model, example, candidates, lambda name, *_: order.append(name) if name not in order else None)
    return order


def resolve_layers(model: nn.Module, spec: Any, example: torch.Tensor) -> list[str]:
    """The layers to search, in forward order, from `all` / a name / a list of names."""
    order = forward_order(model, example)
    wanted = WeightMaskConfig(layers=spec).layer_list()
    if wanted is None:
        return order
    unknown = [name for name in wanted if name not in order]
    if unknown:
        raise GapruneError(f"searcher.params.layers: no conv/linear layer named {', '.join(map(repr, unknown))} "
                           f"in this model; choose from: {', '.join(order)} (or 'all')")
    return [name for name in order if name in set(wanted)]


# --------------------------------------------------------------------------------------------
# the per-layer GA: the shared optimizer "ga" on the layer's problem
# --------------------------------------------------------------------------------------------
def layer_seed(seed: int, index: int) -> int:
    """Each layer's GA is seeded on its own, so a resumed run repeats the uninterrupted one."""
    return (int(seed) * 1_000_003 + 7919 * (index + 1)) % (2**31)


def layer_optimizer(problem: LayerProblem, config: WeightMaskConfig, seeds: Sequence[np.ndarray] = ()) -> Optimizer:
    """The registry's GA over the layer's bit genomes: `elite` best of parents + offspring survive,
    `population - elite` offspring per generation (tournament parents, uniform crossover with
    probability `cxpb`), every offspring mutated with per-bit flip probability `mutpb`."""
    return build_optimizer("ga", problem, seeds=seeds, population=config.population, generations=config.generations,
                           offspring=config.population - config.elite, cxpb=config.cxpb, mutpb=1.0,
                           indpb=config.mutpb, tournament=config.tournament, elite=config.elite)


@dataclass
class LayerOutcome:
    mask: torch.Tensor  # bool, layer weight shape
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def evolve_layer(model: nn.Module, layer: str, calib: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 config: WeightMaskConfig, seed: int, index: int = 0,
                 on_generation: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
                 mode: str | None = None) -> LayerOutcome:
    """GA over one layer's weight mask; the model is left unchanged."""
    started = time.perf_counter()
    random.seed(layer_seed(seed, index))  # the optimizer draws everything from `random`
    problem = LayerProblem(LayerEvaluator(model, layer, calib, config.chunk, mode), config.keep_prob,
                           config.w_acc, config.w_sparsity)
    n = problem.encoding.size
    magnitude = magnitude_masks(model, {layer: 1.0 - config.keep_prob})[layer].numpy().ravel()
    optimizer = layer_optimizer(problem, config, seeds=[problem.encoding.full_genome(), magnitude])
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=config.generations + 1, desc=f"weight_mask {layer} ({n} w)", unit="gen", leave=False,
               dynamic_ncols=True, disable=not progress)

    def log(generation: int, population: Sequence[Any], _offspring: Sequence[Any]) -> None:
        records = [problem.record_of(ind) for ind in population]
        best = records[int(np.argmax([ind.fitness.values[0] for ind in population]))]
        row = {"layer": layer, "layer_index": index, "generation": generation,
               "best_fitness": best["score"], "mean_fitness": float(np.mean([r["score"] for r in records])),
               "best_accuracy": best["accuracy"], "best_sparsity": best["sparsity"],
               "mean_accuracy": float(np.mean([r["accuracy"] for r in records])),
               "mean_sparsity": float(np.mean([r["sparsity"] for r in records])),
               "evaluations": len(problem.records), "cache_hits": problem.cache_hits,
               "seconds": time.perf_counter() - started}
        rows.append(row)
        if on_generation is not None:
            on_generation(row)
        bar.update(1)
        bar.set_postfix(fit=f"{row['best_fitness']:.4f}", acc=f"{row['best_accuracy']:.3f}",
                        sparsity=f"{row['best_sparsity']:.3f}")

    try:
        population = optimizer.run(log)
    finally:
        bar.close()
    winner = tools.selBest(population, 1)[0]
    best = problem.record_of(winner)
    summary = {"layer": layer, "index": index, "weights": n, "kept": best["kept"], "sparsity": best["sparsity"],
               "fitness": best["score"], "acc_ga": best["accuracy"], "initial_best_fitness": rows[0]["best_fitness"],
               "generations": config.generations, "evaluations": len(problem.records),
               "cache_hits": problem.cache_hits, "mode": problem.evaluator.mode, "seconds": time.perf_counter() - started}
    return LayerOutcome(torch.from_numpy(np.array(winner, dtype=bool)).reshape(problem.evaluator.shape), summary, rows)


# --------------------------------------------------------------------------------------------
# all layers, in order, with optional retrain and per-layer checkpoints
# --------------------------------------------------------------------------------------------
@dataclass
class LayerwiseResult:
    masks: dict[str, torch.Tensor]
    layers: list[dict[str, Any]]
    rows: list[dict[str, Any]]

    def plan(self) -> SparsePlan:
        return SparsePlan(dict(self.masks))


Retrain = Callable[[nn.Module, dict[str, torch.Tensor], int], dict[str, Any] | None]


def search_layers(model: nn.Module, layers: Sequence[str], calib: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  config: WeightMaskConfig, seed: int, retrain: Retrain | None = None,
                  done: LayerwiseResult | None = None,
                  on_generation: Callable[[dict[str, Any]], None] | None = None,
                  on_layer: Callable[[LayerwiseResult], None] | None = None, progress: bool = True) -> LayerwiseResult:
    """Search `layers` one after the other on `model` (modified in place: winning masks are
    applied for good, weights retrained when `retrain` is given). `done` continues a run whose
    first layers are finished (the model must already hold that run's weights)."""
    result = LayerwiseResult(dict(done.masks), list(done.layers), list(done.rows)) if done else LayerwiseResult({}, [], [])
    apply_masks_permanently(model, result.masks)
    for index, layer in enumerate(layers):
        if layer in result.masks:
            continue
        outcome = evolve_layer(model, layer, calib, config, seed, index, on_generation, progress)
        result.masks[layer] = outcome.mask
        apply_masks_permanently(model, result.masks)
        summary = dict(outcome.summary)
        summary["acc_after_layer"] = evaluate(model, calib)["acc"]
        summary["retrain_seconds"] = 0.0
        if retrain is not None and config.retrain_epochs > 0:
            start = time.perf_counter()
            torch.manual_seed(layer_seed(seed, index))
            info = retrain(model, result.masks, index) or {}
            apply_masks_permanently(model, result.masks)
            summary["retrain_seconds"] = time.perf_counter() - start
            summary["acc_after_layer"] = evaluate(model, calib)["acc"]
            summary.update({f"retrain_{k}": v for k, v in info.items()})
        summary["sparsity_so_far"] = SparsePlan(dict(result.masks)).sparsity()
        result.layers.append(summary)
        result.rows.extend(outcome.rows)
        if on_layer is not None:
            on_layer(result)
    return result
