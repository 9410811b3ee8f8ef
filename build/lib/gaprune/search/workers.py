"""Where a search's fitness runs: in this process (`fitness.workers=1`, the default) or on N Ray
actors (`fitness.workers=N`, the optional `gaprune[ray]` extra).

Invariants:
- A `FitnessRecipe` holds everything a fitness is built from as plain, picklable values (reference
  model on CPU or on the run's device, units, importance, data bundle, options); calling it on a
  device builds the fitness there. The serial path and every worker build from the same recipe.
- Ray is imported only when a `WorkerPool` starts (its first `evaluate`); a serial search never
  imports it. Starting it leaves the driver's global random streams (the optimizer's) as they were. The recipe is shipped once (`ray.put`) and each actor builds its fitness once, so the
  reference model and the data reach every worker once, never per plan.
- `WorkerPool.evaluate` splits the plans into contiguous pieces, one per worker, whose sizes are
  multiples of the fitness's `group_size` (plans share forward passes exactly as in one process),
  and returns the results in plan order. Every fitness scores a plan independently of the other
  plans and of what ran before in its process (seeded per plan, fresh seeded loaders), so the
  records are identical bit for bit to a serial run whose process has each worker's torch thread
  count (the driver's threads // N; with OMP_NUM_THREADS=1 everywhere, any N gives the same bytes).
- One GPU per worker when the run's device is CUDA (each actor sees its own GPU as cuda:0).
"""
from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.data.datasets import DataBundle
from gaprune.data.loaders import make_loader
from gaprune.pruning.units import PrunableUnit
from gaprune.search.fitness import AnyPlan, Fitness, FitnessContext, build_fitness
from gaprune.utils.errors import GapruneError

RAY_FIX = "pip install 'gaprune[ray]'"


@dataclass
class FitnessRecipe:
    """How to build the configured fitness on a device (see the module docstring)."""

    name: str
    params: dict[str, Any]
    model: nn.Module
    units: Sequence[PrunableUnit]
    importance: dict[str, np.ndarray]
    bundle: DataBundle
    calib_samples: int | None  # first N validation images (None: all)
    calib_batch_size: int | None  # None: no calibration data (taylor_proxy)
    seed: int
    augment: bool  # dataset.augment: training batches may be augmented

    def __call__(self, device: torch.device) -> Fitness:
        bundle = self.bundle
        calib = [] if self.calib_batch_size is None else list(
            make_loader(bundle, "val", int(self.calib_batch_size), device=device, limit=self.calib_samples))

        def train_batches(batch_size: int, augment: bool = True):  # a fresh seeded loader per call
            return make_loader(bundle, "train", int(batch_size), shuffle=True, augment=augment and self.augment,
                               device=device, seed=self.seed)

        context = FitnessContext(model=self.model.to(device), units=self.units, importance=self.importance, calib=calib,
                                 device=device, train_batches=train_batches, seed=self.seed)
        return build_fitness(self.name, context, **self.params)


def check_workers(workers: Any) -> int:
    """fitness.workers as an int, or one line: an integer >= 1, and Ray installed when > 1."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise GapruneError(f"fitness.workers={workers!r} must be an integer >= 1 (1: evaluate in this process)")
    if workers > 1 and importlib.util.find_spec("ray") is None:
        raise GapruneError(f"fitness.workers={workers} needs Ray: {RAY_FIX} (or fitness.workers=1)")
    return workers


def pieces(count: int, workers: int, unit: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges over `count` plans, at most one per worker, as even as
    possible in whole `unit`s (the last range takes the remainder)."""
    units = -(-count // unit)
    bounds = [min(count, unit * (units * k // workers)) for k in range(workers + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


class _Worker:
    """One Ray actor: its torch thread count, then its own fitness built once from the recipe."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.fitness: Fitness | None = None

    def setup(self, recipe: FitnessRecipe, gpu: bool) -> int:
        self.fitness = recipe(torch.device("cuda" if gpu else "cpu"))
        return self.fitness.group_size

    def evaluate(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        return self.fitness.evaluate(plans)


class WorkerPool:
    """`fitness.workers=N`: the recipe's fitness on N Ray actors, started on the first `evaluate`
    (one CPU share each: the driver's torch threads // N; one GPU each when `gpu`)."""

    def __init__(self, recipe: FitnessRecipe, workers: int, gpu: bool = False) -> None:
        check_workers(workers)
        if gpu and torch.cuda.device_count() < workers:
            raise GapruneError(f"fitness.workers={workers} needs one GPU each but {torch.cuda.device_count()} are "
                               f"visible; set fitness.workers={torch.cuda.device_count()} or less")
        self.recipe, self.workers, self.gpu = recipe, workers, gpu
        self.threads = max(1, torch.get_num_threads() // workers)
        self._actors: list[Any] = []
        self._group = 1

    def _start(self) -> None:
        import ray

        state = random.getstate()  # ray.init draws from Python's global stream, which the optimizer owns
        ray.init(num_cpus=self.threads * self.workers, num_gpus=self.workers if self.gpu else 0,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
        random.setstate(state)
        actor = ray.remote(num_cpus=self.threads, num_gpus=1 if self.gpu else 0)(_Worker)
        self._actors = [actor.remote(self.threads) for _ in range(self.workers)]
        recipe = ray.put(self.recipe)
        self._group = self._get([a.setup.remote(recipe, self.gpu) for a in self._actors])[0]

    @staticmethod
    def _get(refs: list[Any]) -> list[Any]:
        """ray.get, re-raising a worker's GapruneError as the one-line error it is."""
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, GapruneError):
                raise err.cause from None
            raise

    def evaluate(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        if not self._actors:
            self._start()
        ranges = pieces(len(plans), self.workers, self._group)
        parts = self._get([actor.evaluate.remote(list(plans[a:b])) for actor, (a, b) in zip(self._actors, ranges)])
        return [result for part in parts for result in part]

    def close(self) -> None:
        """Stop the workers and Ray (a no-op when they never started)."""
        if self._actors:
            import ray

            self._actors = []
            ray.shutdown()
