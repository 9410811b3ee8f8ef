"""Turn result dirs into the Markdown tables of the paper.

Reads every results.json under the given dirs (finetune runs of searches and scripts/oneshot.py
runs), plus the search summary next to each finetune dir, and prints / writes one table per
(model, dataset), each against its own baseline. Runs of one method on several seeds are one row
(the k-th plan of each run dir together): mean ± std over the seeds, and the seeds in a column. Latency columns say how noisy the machine
was (± half the range of the timed blocks, averaged over the rows' runs) and flag speedups below 1x:

    python scripts/report.py outputs/search/<run> outputs/oneshot/<run> ... [--out table.md] [--title ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from gaprune.engine.compute import format_macs


def method_name(results_path: Path, data: dict[str, Any], row: dict[str, Any]) -> str:
    search = results_path.parent.parent / "search_summary.json"
    if not search.is_file() and data.get("search_dir"):
        search = Path(data["search_dir"]) / "search_summary.json"
    if search.is_file():
        summary = json.loads(search.read_text())
        kd = " + KD" if row.get("kd") else ""
        if summary.get("searcher") == "layerwise_weight_mask" or summary.get("encoding") == "weight_mask":  # old runs
            return f"layer-wise weight-mask GA{kd}"
        return f"{summary['optimizer']} {summary['encoding']} / {summary['fitness']}{kd} ({row.get('pick', '')})"
    pruner, variant = row.get("pick") or results_path.parent.name, row.get("plan_id")
    label = f"{pruner} ({variant})" if variant not in (None, "", pruner) else str(pruner)
    return f"one-shot {label}" if data.get("oneshot") or data.get("method") else label


def collect(paths: list[Path]) -> list[dict[str, Any]]:
    """Every results row under `paths`, with its method, (model, dataset, seed) and baseline."""
    rows = []
    for root in paths:
        if not root.exists():
            sys.exit(f"report: '{root}' does not exist; give result dirs of finetune.py / search.py / scripts/oneshot.py")
        for path in sorted([root] if root.is_file() else root.rglob("results.json")):
            data = json.loads(path.read_text())
            for row in data.get("results", []):
                rows.append({**row, "method": method_name(path, data, row), "source": str(path.parent),
                             "model": data.get("model", "?"), "dataset": data.get("dataset", "?"),
                             "seed": data.get("seed"), "baseline": data.get("baseline")})
    return rows


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    mean = scale * statistics.fmean(values)
    return f"{mean:.{digits}f}" + (f" ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def speedup(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f}x" + (" (slower)" if mean < 1.0 else "")


def method_row(rows: list[dict[str, Any]], sparse: bool, timed: bool) -> list[str]:
    """One table row: the method's runs aggregated over their seeds."""
    seeds = ", ".join(str(r["seed"]) for r in rows if r.get("seed") is not None) or "-"
    cells = [rows[0]["method"], seeds, mean_std([r["test_acc"] for r in rows]),
             mean_std([r.get("test_acc_delta", 0.0) for r in rows]),
             mean_std([r["macs_reduction"] for r in rows], digits=1) + "%",
             mean_std([r["params_reduction"] for r in rows], digits=1) + "%"]
    computed = [r["compute_macs"] for r in rows if r.get("compute_macs") is not None]
    cells.append(format_macs(statistics.fmean(computed)) if len(computed) == len(rows) else "-")
    if sparse:
        cells.append(mean_std([r["sparsity"] for r in rows], digits=1) + "%" if all("sparsity" in r for r in rows) else "-")
    if timed:
        timings = [r for r in rows if "speedup" in r]
        if timings:
            noise = [r["latency_spread"] for r in timings if r.get("latency_spread") is not None]
            cells += [f"{statistics.fmean(r['latency_ms'] for r in timings):.3f}"
                      + (f" ±{50 * statistics.fmean(noise):.0f}%" if noise else ""),
                      speedup([r["speedup"] for r in timings]), speedup([r["throughput_speedup"] for r in timings])]
        else:
            cells += ["-", "-", "-"]
    return cells


def group_table(rows: list[dict[str, Any]], title: str) -> str:
    """One (model, dataset) table: its baseline, then one row per method, best mean first."""
    sparse = any("sparsity" in r for r in rows)
    timed = any("speedup" in r for r in rows)  # measured latency (finetune.latency): speedup columns
    head = (["method", "seeds", "top-1 (%)", "Δ vs baseline", "MACs red.", "params red.", "compute (MACs)"]
            + (["sparsity"] if sparse else []) + (["latency (ms)", "speedup", "speedup @throughput batch"] if timed else []))
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    baseline = next((r["baseline"] for r in rows if r.get("baseline")), None)
    if baseline:
        latency = f" {baseline['latency_ms']:.3f} | - | - |" if timed and "latency_ms" in baseline else " - | - | - |"
        lines.append(f"| baseline | - | {100 * baseline['test_acc']:.2f} | - | - | - | - |" + (" - |" if sparse else "")
                     + (latency if timed else ""))
    methods: dict[tuple[str, int], list[dict[str, Any]]] = {}
    nth: dict[tuple[str, str], int] = {}
    for row in rows:  # the k-th row of a method in each run dir: the same pick on another seed
        k = nth[(row["source"], row["method"])] = nth.get((row["source"], row["method"]), -1) + 1
        methods.setdefault((row["method"], k), []).append(row)
    for runs in sorted(methods.values(), key=lambda runs: -statistics.fmean(r["test_acc"] for r in runs)):
        lines.append("| " + " | ".join(method_row(runs, sparse, timed)) + " |")
    return "\n".join(lines) + "\n"


def report(rows: list[dict[str, Any]], title: str) -> str:
    """One table per (model, dataset)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["dataset"]), []).append(row)
    return "\n".join(group_table(members, f"{title}: {model} / {dataset}")
                     for (model, dataset), members in sorted(groups.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--title", default="Results")
    args = parser.parse_args()
    rows = collect(args.dirs)
    if not rows:
        sys.exit(f"report: no results.json under {', '.join(map(str, args.dirs))}; run finetune.py or scripts/oneshot.py first")
    text = report(rows, args.title)
    print(text)
    if args.out:
        from gaprune.utils.io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
