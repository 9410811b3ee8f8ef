"""Latency LUT benchmark: how well the lookup table predicts the measured latency of physically
pruned models, and what a latency-aware pick buys over a MACs-only pick at equal MACs.

Per model (LeNet-5 1x32x32, ResNet-20 and VGG-16 width 0.5 on 3x32x32, 10 classes):
1. build the LUT (`gaprune.deploy.lut`) on this CPU at `--batch`;
2. Pearson r between predicted and measured latency over `--plans` random plans (the `ratio`
   encoding's random genomes), each physically pruned; the unpruned model and all plans are timed
   in `--rounds` interleaved rounds (`time_interleaved`, `--stat` per model), so slow spells of a
   shared machine hit every plan alike; r on absolute times (`--stat` over rounds) and on plan /
   baseline ratios (per round, median over rounds: cancels how loaded the machine was in that
   round). Also reported: the split-half retest r of each (even vs odd rounds: the ceiling the
   noise leaves for any predictor), the measured spread (slowest / fastest plan), Pearson r of MACs
   vs measured latency, and the mean absolute error of the predicted microseconds;
3. at `--target` MACs reduction: `--pool` random genomes repaired onto [target, target + 0.01]
   (equal MACs); the MACs-only pick is the plan with the best proxy (share of L1 filter importance
   kept, training-free); the latency-aware pick is the knee of the (proxy, predicted latency) front
   of the same pool. Both and the baseline are timed interleaved on the `--clock` clock and on the
   wall clock with torch's threads; speedups from the `--stat` times and as the median over rounds
   of the within-round ratio (latency-aware / MACs-only likewise).

Latency does not depend on weight values, so the models are untrained (seed 0). `--clock cpu`
(default) times the thread's CPU time on one thread: on a machine shared with other jobs wall time
mostly measures the scheduler. Prints one table and writes JSON (`--out`) with the exact command
and wall time.

python -m benchmarks.latency                        # all three models at batch 1
python -m benchmarks.latency --models lenet5 --batch 64
"""
from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gaprune.deploy.latency import inference_call, time_interleaved
from gaprune.deploy.lut import LatencyCost, LatencyLUT, pearson
from gaprune.models import build_model
from gaprune.pruning.cost import CostModel
from gaprune.pruning.importance import compute_importance
from gaprune.pruning.physical import prune_model
from gaprune.pruning.units import discover_units
from gaprune.search.encodings import build_encoding
from gaprune.search.picks import knee, pareto_front
from gaprune.search.target import TargetRepair
from gaprune.utils.io import atomic_write_text, write_json

MODELS = {  # name: (in_channels, include_linear, kwargs)
    "lenet5": (1, True, {}),
    "resnet20": (3, False, {}),
    "vgg16": (3, False, {"width": 0.5}),
}


def timed(models, x, clock: str, args) -> np.ndarray:
    """Microseconds per forward, shape (rounds, models): every round times each model once."""
    return 1e6 * time_interleaved([inference_call(m, x) for m in models], repeats=args.rounds,
                                  min_block_s=args.block_ms / 1e3, clock=clock, seed=args.seed)


def reduce(samples: np.ndarray, stat: str) -> np.ndarray:
    return samples.min(axis=0) if stat == "min" else np.median(samples, axis=0)


def proxy(plan, units, importance) -> float:
    return float(np.mean([importance[u.name][np.asarray(list(plan.keep[u.name]), dtype=np.int64)].sum() for u in units]))


def bench_model(name: str, args) -> dict:
    channels, include_linear, kwargs = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, 10, channels, 32, **kwargs).eval()
    x0 = torch.zeros(1, channels, 32, 32)
    x = torch.randn((args.batch, channels, 32, 32), generator=torch.Generator().manual_seed(0))
    units = discover_units(model, x0, include_linear=include_linear)
    importance = compute_importance("l1", model, units, lambda: [], 0)  # L1 norms, normalised per unit
    encoding = build_encoding("ratio", units, importance, model=model)
    started = time.perf_counter()
    lut = LatencyLUT.measure(model, units, x0, "cpu", batch=args.batch, repeats=args.lut_repeats, clock=args.clock,
                             stat=args.stat)
    lut_seconds = time.perf_counter() - started
    latency = LatencyCost(lut, units)
    rng = random.Random(args.seed)
    cost = CostModel(model, units, x0)
    fit = fit_metrics(model, units, x0, x, encoding, cost, latency, rng, args)
    picks = compare_picks(model, units, x0, x, encoding, cost, latency, importance, rng, args)
    return {"model": name, "kwargs": kwargs, "units": len(units), "lut_tables": len(lut.tables),
            "lut_seconds": lut_seconds, "lut_base_us": lut.base_us, "lut_slope": lut.slope,
            "lut_calibration": lut.meta["calibration"], "plans": args.plans, "batch": args.batch,
            "threads": torch.get_num_threads(), **fit, "picks": picks}


def fit_metrics(model, units, x0, x, encoding, cost, latency, rng, args) -> dict:
    """Step 2: predicted vs measured latency of `--plans` random plans, each physically pruned."""
    plans = [encoding.decode(encoding.random_genome(rng)) for _ in range(args.plans)]
    pruned_models = [prune_model(model, units, plan, x0) for plan in plans]
    predicted = np.array([latency.cost(plan) for plan in plans])
    samples = timed([model] + pruned_models, x, args.clock, args)
    measured = reduce(samples, args.stat)
    halves = [reduce(samples[start::2], args.stat)[1:] for start in (0, 1)]
    ratios = np.median(samples[:, 1:] / samples[:, :1], axis=0)  # plan / baseline within a round, median of rounds
    ratio_halves = [np.median(samples[start::2, 1:] / samples[start::2, :1], axis=0) for start in (0, 1)]
    return {"base_us": float(measured[0]), "measured_us": measured[1:].tolist(), "predicted_us": predicted.tolist(),
            "measured_ratio": ratios.tolist(), "pearson_ratio": pearson(predicted, ratios),
            "retest_ratio_r": pearson(*ratio_halves),
            "pearson": pearson(predicted, measured[1:]), "retest_r": pearson(*halves),
            "macs_r": pearson([cost.cost(plan)[0] for plan in plans], measured[1:]),
            "spread": float(measured[1:].max() / measured[1:].min()),
            "mape": float(100 * np.mean(np.abs(predicted / measured[1:] - 1)))}


def compare_picks(model, units, x0, x, encoding, cost, latency, importance, rng, args) -> dict:
    """Step 3: the MACs-only and the latency-aware pick of one pool at `--target` MACs, timed
    against the baseline on `--clock` and on the wall clock."""
    repair = TargetRepair(encoding, cost, args.target, 0.01)
    pool = []
    for index in range(args.pool):
        genome = repair(encoding.random_genome(rng))
        plan = encoding.decode(genome)
        macs, _ = cost.cost(plan)
        pool.append({"id": index, "plan": plan, "proxy": proxy(plan, units, importance),
                     "macs_reduction": 1 - macs / cost.base_macs, "latency_us": latency.cost(plan)})
    at_target = [r for r in pool if r["macs_reduction"] >= args.target] or pool
    macs_only = max(at_target, key=lambda r: (r["proxy"], -r["id"]))
    # knee of (max proxy, min latency): the proxy/MACs front and knee with latency reduction as the second axis
    front = pareto_front([{**r, "macs_reduction": 1 - r["latency_us"] / latency.base_us} for r in at_target])
    aware = next(r for r in at_target if r["id"] == knee(front)["id"])

    records = {"macs_only": macs_only, "latency_aware": aware}
    picks = {label: {"proxy": r["proxy"], "macs_reduction": r["macs_reduction"], "predicted_us": r["latency_us"],
                     "keep": [len(r["plan"].keep[u.name]) for u in units]} for label, r in records.items()}
    contenders = [model] + [prune_model(model, units, r["plan"], x0) for r in records.values()]
    for clock in dict.fromkeys([args.clock, "wall"]):
        samples = timed(contenders, x, clock, args)
        base, *ours = reduce(samples, args.stat)
        for column, (label, us) in enumerate(zip(records, ours), start=1):
            picks[label].update({f"{clock}_base_us": base, f"{clock}_us": us, f"{clock}_speedup": base / us,
                                 f"{clock}_round_speedup": float(np.median(samples[:, 0] / samples[:, column]))})
        picks["latency_aware"][f"{clock}_round_vs_macs_only"] = float(np.median(samples[:, 2] / samples[:, 1]))
    return picks


def report(results: list[dict], args) -> str:
    clock = args.clock
    lines = [f"| model | batch | LUT build s | plans | Pearson r ({args.stat} us) | retest r | Pearson r (ratio to base) | "
             "retest r | MACs r | spread (max/min) | MAPE | LUT slope |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        lines.append(f"| {res['model']} | {res['batch']} | {res['lut_seconds']:.0f} | {res['plans']} | {res['pearson']:.3f} | "
                     f"{res['retest_r']:.3f} | {res['pearson_ratio']:.3f} | {res['retest_ratio_r']:.3f} | "
                     f"{res['macs_r']:.3f} | {res['spread']:.2f}x | {res['mape']:.1f}% | {res['lut_slope']:.2f} |")
    lines += ["", f"| model | pick @{args.target:.0%} MACs | proxy | MACs red. | predicted us | {clock} us ({args.stat}) | "
              f"{clock} speedup | {clock} speedup (per-round median) | wall us | wall speedup |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for label, p in res["picks"].items():
            lines.append(f"| {res['model']} | {label} | {p['proxy']:.4f} | {100 * p['macs_reduction']:.1f}% | "
                         f"{p['predicted_us']:.0f} | {p[f'{clock}_us']:.0f} | {p[f'{clock}_speedup']:.2f}x | "
                         f"{p[f'{clock}_round_speedup']:.2f}x | {p['wall_us']:.0f} | {p['wall_speedup']:.2f}x |")
        aware, macs = res["picks"]["latency_aware"], res["picks"]["macs_only"]
        lines.append(f"| {res['model']} | latency-aware / MACs-only | | | {aware['predicted_us'] / macs['predicted_us']:.3f} | "
                     f"{aware[f'{clock}_us'] / macs[f'{clock}_us']:.3f} | | {aware[f'{clock}_round_vs_macs_only']:.3f} | "
                     f"{aware['wall_us'] / macs['wall_us']:.3f} | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,resnet20,vgg16")
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"))
    parser.add_argument("--stat", default="min", choices=("min", "median"),
                        help="per model / LUT point over rounds: fastest block (robust on a shared machine) or median")
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds over the baseline and all plans")
    parser.add_argument("--block-ms", type=float, default=2.0, help="one timed block of a model lasts about this long")
    parser.add_argument("--lut-repeats", type=int, default=15, help="interleaved rounds over all LUT grid points")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the wall-clock columns; the cpu clock uses 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench_latency.json", help="JSON; the table also goes to <stem>.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else list(argv)
    command = "python -m benchmarks.latency " + " ".join(shlex.quote(a) for a in given)
    started = time.perf_counter()
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results.append(bench_model(name, args))
        print(f"{name}: r={results[-1]['pearson']:.3f} (retest r={results[-1]['retest_r']:.3f}), "
              f"ratio r={results[-1]['pearson_ratio']:.3f} (retest r={results[-1]['retest_ratio_r']:.3f}) "
              f"after {time.perf_counter() - started:.0f}s", flush=True)
    wall = time.perf_counter() - started
    footer = (f"command: `{command}`\n\nwall time: {wall:.0f} s; torch threads {args.threads}, clock {args.clock}, "
              f"batch {args.batch}, {args.stat} of {args.rounds} interleaved rounds per model, LUT {args.lut_repeats} rounds")
    table = report(results, args)
    print(f"{table}\n{footer}")
    out = Path(args.out)
    write_json(out, {"command": command, "wall_seconds": wall, "args": vars(args), "table": table, "results": results})
    atomic_write_text(out.with_suffix(".md"), f"{table}\n\n{footer}\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
