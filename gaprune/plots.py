"""Plots people look at instead of reading CSVs: fitness per generation, Pareto front,
per-layer keep ratios of the picks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_fitness(generations: Sequence[dict[str, Any]], path: Path) -> None:
    gens = [g["generation"] for g in generations]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(gens, [g["best_score"] for g in generations], label="best score")
    left.plot(gens, [g["mean_score"] for g in generations], label="mean score", alpha=0.7)
    left.set_xlabel("generation"), left.set_ylabel("score"), left.legend(), left.grid(alpha=0.3)
    right.plot(gens, [g["best_proxy"] for g in generations], label="best proxy")
    right.plot(gens, [g["mean_proxy"] for g in generations], label="mean proxy", alpha=0.7)
    right.plot(gens, [g["mean_macs_reduction"] for g in generations], label="mean MACs reduction", alpha=0.7)
    right.set_xlabel("generation"), right.legend(), right.grid(alpha=0.3)
    fig.suptitle("fitness per generation (population)")
    _save(fig, path)


def plot_pareto(records: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]],
                picks: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([100 * r["macs_reduction"] for r in records], [r["proxy"] for r in records], s=8, c="0.75",
               label=f"evaluated ({len(records)})")
    ax.plot([100 * r["macs_reduction"] for r in front], [r["proxy"] for r in front], "o-", ms=4,
            label=f"Pareto front ({len(front)})")
    for (name, record), marker in zip(picks.items(), "*DsP"):
        ax.scatter([100 * record["macs_reduction"]], [record["proxy"]], marker=marker, s=140, zorder=5, label=name)
    ax.set_xlabel("MACs reduction (%)"), ax.set_ylabel("proxy (higher is better)")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    _save(fig, path)


def plot_keep_ratios(unit_names: Sequence[str], picks: dict[str, Sequence[float]], path: Path) -> None:
    width = 0.8 / max(1, len(picks))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(unit_names) + 2), 3.8))
    for i, (name, ratios) in enumerate(picks.items()):
        ax.bar([j + i * width for j in range(len(unit_names))], ratios, width=width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(unit_names))], unit_names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05), ax.set_ylabel("keep ratio"), ax.grid(axis="y", alpha=0.3), ax.legend(fontsize=8)
    _save(fig, path)
