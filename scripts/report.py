"""Turn result dirs into the Markdown tables of the paper.

Reads every results.json under the given dirs (finetune runs of searches and scripts/oneshot.py
runs), plus the search summary next to each finetune dir, and prints / writes one table:

    python scripts/report.py outputs/search/<run> outputs/oneshot/<run> ... [--out table.md] [--title ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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


def collect(paths: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    rows, baseline = [], None
    for root in paths:
        if not root.exists():
            sys.exit(f"report: '{root}' does not exist; give result dirs of finetune.py / search.py / scripts/oneshot.py")
        for path in sorted([root] if root.is_file() else root.rglob("results.json")):
            data = json.loads(path.read_text())
            baseline = baseline or data.get("baseline")
            for row in data.get("results", []):
                rows.append({**row, "method": method_name(path, data, row), "source": str(path.parent)})
    return rows, baseline


def table(rows: list[dict[str, Any]], baseline: dict[str, Any] | None, title: str) -> str:
    sparse = any("sparsity" in r for r in rows)
    timed = any("speedup" in r for r in rows)  # measured latency (finetune.latency): speedup columns
    head = (["method", "top-1 (%)", "Δ vs baseline", "MACs red.", "params red."] + (["sparsity"] if sparse else [])
            + (["latency (ms)", "speedup", "speedup @throughput batch"] if timed else []))
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if baseline:
        lines.append(f"| baseline | {100 * baseline['test_acc']:.2f} | - | - | - |" + (" - |" if sparse else "")
                     + (f" {baseline['latency_ms']:.3f} | - | - |" if timed and "latency_ms" in baseline else
                        " - | - | - |" if timed else ""))
    for r in sorted(rows, key=lambda r: -r["test_acc"]):
        cells = [r["method"], f"{100 * r['test_acc']:.2f}", f"{100 * r.get('test_acc_delta', 0):+.2f}",
                 f"{100 * r['macs_reduction']:.1f}%", f"{100 * r['params_reduction']:.1f}%"]
        if sparse:
            cells.append(f"{100 * r['sparsity']:.1f}%" if "sparsity" in r else "-")
        if timed:
            cells += ([f"{r['latency_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['throughput_speedup']:.2f}x"]
                      if "speedup" in r else ["-", "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--title", default="Results")
    args = parser.parse_args()
    rows, baseline = collect(args.dirs)
    if not rows:
        sys.exit(f"report: no results.json under {', '.join(map(str, args.dirs))}; run finetune.py or scripts/oneshot.py first")
    text = table(rows, baseline, args.title)
    print(text)
    if args.out:
        from gaprune.utils.io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
