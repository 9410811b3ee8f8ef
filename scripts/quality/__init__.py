"""scripts/bench_quality.py's parts: protocol (protocols, arms, configs), fidelity, report."""
