"""gaprune's benchmarks, beside their results. Run from the repository root:

    python -m benchmarks.quality --protocol cifar10 --out benchmarks/quality-cifar10 --report
    python -m benchmarks.latency                # latency LUT: predicted vs measured, picks at equal MACs
    python -m benchmarks.search_speed           # proxy evaluations per second, NSGA-II loop wall time
    python -m benchmarks.workers                # fitness.workers=1 vs N (Ray) on digits

`quality/` (package) and `latency.py`, `search_speed.py`, `workers.py` hold the code;
`quality-cifar10/` (the quality protocol's work dir: items, logs, runner) and `results/` (tables and
JSON) hold what they measured. The benchmarks use the library as a user would: `gaprune`'s API and
the building blocks docs/api.md lists ("Building blocks the benchmarks use"), no private names;
nothing in gaprune imports from here, and the wheel does not ship this package.
"""
