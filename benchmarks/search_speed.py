"""Search-speed benchmark on VGG-16 / CIFAR-10 shapes.

Prints proxy evaluations per second for `taylor_proxy` and `calib` (channel masks, population
stacked on one shared model) against the naive loop (deep-copy, physically prune with
torch-pruning, count MACs, evaluate each candidate), their ratio, and the wall time of a whole
NSGA-II `taylor_proxy` search. Uses real CIFAR-10 when --data-dir holds it, else random images
of the same shape (speed does not depend on pixel values).

    python -m benchmarks.search_speed [--samples 256] [--population 48] [--generations 30]
"""
from __future__ import annotations

import argparse
import copy
import random
import time

import torch

from gaprune.engine.training import evaluate, seed_everything
from gaprune.models import build_model
from gaprune.pruning.cost import CostModel
from gaprune.pruning.importance import compute_importance
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.units import discover_units
from gaprune.search.encodings import build_encoding
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.search.optimizers import build_optimizer
from gaprune.search.problem import Problem, Score


def calibration_batches(args) -> list[tuple[torch.Tensor, torch.Tensor]]:
    try:
        from gaprune.data.datasets import load_dataset
        from gaprune.data.loaders import make_loader

        bundle = load_dataset("cifar10", data_dir=args.data_dir, train_limit=2000, test_limit=100)
        return list(make_loader(bundle, "val", args.batch_size, limit=args.samples))
    except Exception:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.samples, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (args.samples,), generator=gen)
        return [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, args.samples, args.batch_size)]


def per_second(fn, plans) -> float:
    start = time.perf_counter()
    fn(plans)
    return len(plans) / (time.perf_counter() - start)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256, help="calibration images per candidate")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--candidates", type=int, default=8, help="candidates timed per method")
    parser.add_argument("--chunk", type=int, default=8, help="plans stacked per forward pass (calib)")
    parser.add_argument("--population", type=int, default=48)
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--data-dir", default="data")
    return parser.parse_args(argv)


def evaluation_rates(model, units, x0, context, proxy_fit, cost, plans, calib, args) -> dict[str, float]:
    """Plans per second of each way to score a plan (each with the plan's analytic cost)."""
    def naive(batch):
        for plan in batch:
            pruned = prune_model(copy.deepcopy(model), units, plan, x0)
            count_macs_params(pruned, x0)
            evaluate(pruned, calib)

    def scored(fitness):
        def score(batch):
            fitness.evaluate(batch)
            [cost.cost(p) for p in batch]
        return score

    masked = scored(build_fitness("calib", context, chunk=args.chunk, execution="masked"))
    sliced = scored(build_fitness("calib", context, execution="sliced"))
    proxy = scored(proxy_fit)
    naive(plans[:1])  # warm-up
    return {"naive (copy + prune + count + eval)": per_second(naive, plans),
            f"calib masked ({args.chunk} plans per pass)": per_second(masked, plans),
            "calib sliced (pruned net, no copy)": per_second(sliced, plans),
            "taylor_proxy (+ analytic cost)": per_second(proxy, plans * 50)}


def main(argv=None) -> None:
    args = parse_args(argv)
    seed_everything(0)
    torch.set_grad_enabled(False)

    model = build_model("vgg16", 10, 3, 32).eval()
    x0 = torch.zeros(1, 3, 32, 32)
    units = discover_units(model, x0)
    importance = compute_importance("l1", model, units, lambda: [], 0)
    encoding = build_encoding("ratio_strategy", units, importance, r_min=0.1)
    rng = random.Random(0)
    plans = [encoding.decode(encoding.random_genome(rng)) for _ in range(args.candidates)]
    calib = calibration_batches(args)
    context = FitnessContext(model=model, units=units, importance=importance, calib=calib)
    cost = CostModel(model, units, x0)
    proxy_fit = build_fitness("taylor_proxy", context)  # timed alone, then the search's fitness
    rates = evaluation_rates(model, units, x0, context, proxy_fit, cost, plans, calib, args)

    seed_everything(0)
    problem = Problem(encoding, proxy_fit, cost, Score())
    optimizer = build_optimizer("nsga2", problem, population=args.population, generations=args.generations)
    start = time.perf_counter()
    optimizer.run(lambda *_: None)
    search_seconds = time.perf_counter() - start

    base = rates["naive (copy + prune + count + eval)"]
    print(f"VGG-16 / CIFAR-10 shapes, {args.samples} calibration images per candidate, "
          f"{torch.get_num_threads()} threads, {len(units)} units")
    print(f"{'method':45s} {'evals/s':>10s} {'vs naive':>9s}")
    for name, rate in rates.items():
        print(f"{name:45s} {rate:10.2f} {rate / base:8.1f}x")
    print(f"NSGA-II taylor_proxy search {args.generations} generations x {args.population}: "
          f"{search_seconds:.2f} s ({len(problem.records)} plans, {problem.cache_hits} cache hits)")


if __name__ == "__main__":
    main()
