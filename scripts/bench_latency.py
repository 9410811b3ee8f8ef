"""Latency LUT benchmark: how well the per-layer lookup table predicts measured latency, and
what a latency-aware pick buys over a MACs-only pick at equal MACs.

Per model (LeNet-5 1x32x32, ResNet-20 and VGG-16 width 0.5 on 3x32x32, 10 classes):
1. build the LUT (`gaprune.deploy.lut`) on this CPU at batch 1;
2. Pearson r between predicted and measured latency over `--plans` random plans (the `ratio`
   encoding's random genomes), each physically pruned and timed; every plan is timed right after
   the unpruned model, so r is reported on absolute times and on plan/baseline ratios (the latter
   cancels slow drift of a machine shared with other jobs);
3. at `--target` MACs reduction: `--pool` random genomes repaired onto [target, target + 0.01]
   (equal MACs); the MACs-only pick is the plan with the best proxy (share of L1 filter importance
   kept, training-free); the latency-aware pick is the knee of the (proxy, predicted latency) front
   of the same pool. Both are timed (and the baseline) on the `--clock` clock and on the wall clock
   with torch's threads, with speedups as ratios.

Latency does not depend on weight values, so the models are untrained (seed 0). `--clock cpu`
(default) times the thread's CPU time on one thread: on a machine shared with other jobs wall time
mostly measures the scheduler. Prints one table and writes JSON (`--out`) with the exact command
and wall time.

python scripts/bench_latency.py                        # all three models
python scripts/bench_latency.py --models lenet5 --plans 20 --clock wall
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaprune.deploy.latency import measure_latency  # noqa: E402
from gaprune.deploy.lut import LatencyCost, LatencyLUT, pearson  # noqa: E402
from gaprune.models import build_model  # noqa: E402
from gaprune.pruning.cost import CostModel  # noqa: E402
from gaprune.pruning.importance import _normalise, l1_importance  # noqa: E402
from gaprune.pruning.physical import prune_model  # noqa: E402
from gaprune.pruning.units import discover_units  # noqa: E402
from gaprune.search.encodings import build_encoding  # noqa: E402
from gaprune.search.picks import knee  # noqa: E402
from gaprune.search.target import TargetRepair  # noqa: E402

MODELS = {  # name: (in_channels, include_linear, kwargs)
    "lenet5": (1, True, {}),
    "resnet20": (3, False, {}),
    "vgg16": (3, False, {"width": 0.5}),
}


def timed(model, x0, clock: str, repeats: int, stat: str = "median") -> float:
    return 1e6 * measure_latency(model, x0, 1, "cpu", repeats=repeats, clock=clock, stat=stat).seconds


def proxy(plan, units, importance) -> float:
    return float(np.mean([importance[u.name][np.asarray(list(plan.keep[u.name]), dtype=np.int64)].sum() for u in units]))


def bench_model(name: str, args) -> dict:
    channels, include_linear, kwargs = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, 10, channels, 32, **kwargs).eval()
    x0 = torch.zeros(1, channels, 32, 32)
    units = discover_units(model, x0, include_linear=include_linear)
    importance = _normalise(l1_importance(model, units))
    encoding = build_encoding("ratio", units, importance, model=model)
    started = time.perf_counter()
    lut = LatencyLUT.measure(model, units, x0, "cpu", repeats=args.lut_repeats, clock=args.clock, stat=args.stat,
                             rounds=args.rounds)
    lut_seconds = time.perf_counter() - started
    latency = LatencyCost(lut, units)
    rng = random.Random(args.seed)

    plans = [encoding.decode(encoding.random_genome(rng)) for _ in range(args.plans)]
    pruned_models = [prune_model(model, units, plan, x0) for plan in plans]
    predicted = [latency.cost(plan) for plan in plans]
    ratios_pred = [latency.ratio(plan) for plan in plans]
    rounds = []  # round-robin over all plans; per plan, the min (or median) over rounds
    for _ in range(args.rounds):
        rounds.append([(timed(model, x0, args.clock, args.repeats, args.stat),
                        timed(pruned, x0, args.clock, args.repeats, args.stat)) for pruned in pruned_models])
    combine = np.min if args.stat == "min" else np.median
    measured = [float(combine([r[i][1] for r in rounds])) for i in range(len(plans))]
    ratios_meas = [float(combine([r[i][1] / r[i][0] for r in rounds])) for i in range(len(plans))]

    cost = CostModel(model, units, x0)
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
    # knee of (max proxy, min latency): reuse the proxy/MACs knee with latency reduction as the second axis
    front_input = [{**r, "macs_reduction": 1 - r["latency_us"] / latency.base_us} for r in at_target]
    front, best = [], -np.inf
    for r in sorted(front_input, key=lambda r: (-r["macs_reduction"], -r["proxy"], r["id"])):
        if r["proxy"] > best:
            front.append(r)
            best = r["proxy"]
    aware = next(r for r in at_target if r["id"] == knee(front)["id"])

    picks = {}
    for label, record in (("macs_only", macs_only), ("latency_aware", aware)):
        pruned = prune_model(model, units, record["plan"], x0)
        row = {"proxy": record["proxy"], "macs_reduction": record["macs_reduction"],
               "predicted_us": record["latency_us"], "keep": [len(record["plan"].keep[u.name]) for u in units]}
        for clock in dict.fromkeys([args.clock, "wall"]):
            combine = np.min if args.stat == "min" else np.median
            base = float(combine([timed(model, x0, clock, args.repeats, args.stat) for _ in range(args.rounds)]))
            ours = float(combine([timed(pruned, x0, clock, args.repeats, args.stat) for _ in range(args.rounds)]))
            row[f"{clock}_base_us"], row[f"{clock}_us"], row[f"{clock}_speedup"] = base, ours, base / ours
        picks[label] = row
    return {"model": name, "kwargs": kwargs, "units": len(units), "lut_tables": len(lut.tables),
            "lut_seconds": lut_seconds, "lut_base_us": lut.base_us, "plans": args.plans,
            "pearson_abs": pearson(predicted, measured), "pearson_ratio": pearson(ratios_pred, ratios_meas),
            "predicted_us": predicted, "measured_us": measured, "threads": torch.get_num_threads(),
            "picks": picks}


def report(results: list[dict], args) -> str:
    clock = args.clock
    lines = [f"| model | LUT s | Pearson r (abs) | r (ratio to base) | pick @{args.target:.0%} MACs | proxy | MACs red. | "
             f"predicted us | {clock} us | {clock} speedup | wall us | wall speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for label, p in res["picks"].items():
            lines.append(f"| {res['model']} | {res['lut_seconds']:.0f} | {res['pearson_abs']:.3f} | "
                         f"{res['pearson_ratio']:.3f} | {label} | {p['proxy']:.4f} | {100 * p['macs_reduction']:.1f}% | "
                         f"{p['predicted_us']:.0f} | {p[f'{clock}_us']:.0f} | {p[f'{clock}_speedup']:.2f}x | "
                         f"{p['wall_us']:.0f} | {p['wall_speedup']:.2f}x |")
        aware, macs = res["picks"]["latency_aware"], res["picks"]["macs_only"]
        lines.append(f"| {res['model']} | | | | latency-aware / MACs-only ({clock}) | | | "
                     f"{aware['predicted_us'] / macs['predicted_us']:.3f} | {aware[f'{clock}_us'] / macs[f'{clock}_us']:.3f} | | "
                     f"{aware['wall_us'] / macs['wall_us']:.3f} | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,resnet20,vgg16")
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--stat", default="min", choices=("min", "median"),
                        help="per measurement: fastest block (robust on a shared machine) or median block")
    parser.add_argument("--lut-repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin passes over all plans (and LUT points)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench_latency.json")
    args = parser.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    started = time.perf_counter()
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results.append(bench_model(name, args))
        print(f"{name}: r={results[-1]['pearson_abs']:.3f} (ratio r={results[-1]['pearson_ratio']:.3f}) "
              f"after {time.perf_counter() - started:.0f}s", flush=True)
    wall = time.perf_counter() - started
    table = report(results, args)
    print(table)
    print(f"command: {command}\nwall time: {wall:.0f}s, torch threads {torch.get_num_threads()}, clock {args.clock}, "
          f"stat {args.stat} of {args.repeats} blocks x {args.rounds} rounds")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from gaprune.utils.io import write_json

    for res in results:
        for p in res["picks"].values():
            p.pop("plan", None)
    write_json(out, {"command": command, "wall_seconds": wall, "args": vars(args), "table": table, "results": results})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
