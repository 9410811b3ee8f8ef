"""Plots people look at instead of reading CSVs: fitness per generation, Pareto front,
per-layer keep ratios of the picks; per-layer sparsity / accuracy of a layer-wise search.

Invariant: matplotlib (Agg backend) is imported on the first plot, not with this module, so the
entry points start (and print their one-line errors) without paying for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Rendered in memory, then written atomically (nothing half-written, no temp file left)."""
    import io

    from gaprune.utils.io import atomic_write_bytes

    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_fitness(generations: Sequence[dict[str, Any]], path: Path) -> None:
    gens = [g["generation"] for g in generations]
    plt = _pyplot()
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
    plt = _pyplot()
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(unit_names) + 2), 3.8))
    for i, (name, ratios) in enumerate(picks.items()):
        ax.bar([j + i * width for j in range(len(unit_names))], ratios, width=width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(unit_names))], unit_names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05), ax.set_ylabel("keep ratio"), ax.grid(axis="y", alpha=0.3), ax.legend(fontsize=8)
    _save(fig, path)


def plot_layerwise(layers: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], baseline_acc: float,
                   path: Path) -> None:
    """Per-layer sparsity bars + calib accuracy after each layer (left); best fitness per generation (right)."""
    names = [r["layer"] for r in layers]
    plt = _pyplot()
    fig, (ax, right) = plt.subplots(1, 2, figsize=(max(6.0, 0.5 * len(names) + 3) + 5, 4))
    xs = np.arange(len(names))
    ax.bar(xs, [r["sparsity"] for r in layers], color="tab:blue", alpha=0.8, label="layer sparsity")
    tilt = len(names) > 6
    ax.set_xticks(xs, names, rotation=60 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylim(0, 1.05), ax.set_ylabel("sparsity (pruned weights)"), ax.grid(axis="y", alpha=0.3)
    acc = ax.twinx()
    acc.plot(xs, [r["acc_after_layer"] for r in layers], "o-", color="tab:red", label="calib acc after layer")
    acc.axhline(baseline_acc, color="tab:red", ls="--", alpha=0.5, label="baseline calib acc")
    acc.set_ylim(0, 1.05), acc.set_ylabel("calibration accuracy")
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower left")
    ax.set_title("per-layer sparsity and accuracy")
    for name in names:
        mine = [r for r in rows if r["layer"] == name]
        right.plot([r["generation"] for r in mine], [r["best_fitness"] for r in mine], label=name)
    right.set_xlabel("generation"), right.set_ylabel("best fitness"), right.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    right.set_title("GA progress per layer")
    fig.subplots_adjust(wspace=0.45)
    _save(fig, path)


def plot_grow_prune(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Grow-and-prune run: width of every conv per epoch (left), params / MACs (middle), val acc (right).
    `rows`: epoch 0 (the seed) then one row per epoch with widths, params, macs, val_acc, phase."""
    epochs = [r["epoch"] for r in rows]
    widths = np.array([r["widths"] for r in rows])
    plt = _pyplot()
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(15, 4))
    for i in range(widths.shape[1]):
        left.plot(epochs, widths[:, i], label=f"conv{i}", lw=1.2)
    left.set_xlabel("epoch"), left.set_ylabel("channels"), left.set_title("layer widths"), left.grid(alpha=0.3)
    left.legend(fontsize=6, ncol=2)
    mid.plot(epochs, [r["params"] / 1e6 for r in rows], label="params (M)")
    mid.plot(epochs, [r["macs"] / 1e6 for r in rows], label="MACs (M)")
    mid.set_xlabel("epoch"), mid.set_yscale("log"), mid.set_title("cost"), mid.legend(), mid.grid(alpha=0.3)
    scored = [r for r in rows if "val_acc" in r]
    right.plot([r["epoch"] for r in scored], [r["val_acc"] for r in scored], "o-", ms=3)
    right.set_xlabel("epoch"), right.set_ylabel("val acc"), right.set_title("accuracy"), right.grid(alpha=0.3)
    for ax in (left, mid, right):
        for r in rows:
            if r.get("phase") == "score" and r.get("pruned_channels") is not None:
                ax.axvline(r["epoch"], color="k", ls="--", alpha=0.4)
    _save(fig, path)


def plot_proxy_fidelity(panels: dict[str, tuple[Sequence[float], Sequence[float]]], ylabel: str, title: str,
                        path: Path, marked: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]] | None = None
                        ) -> None:
    """One scatter per proxy: its score (x) against the outcome it should predict (y), one point
    per plan; `marked[panel]` adds labelled groups of other plans to that panel."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    for ax, (name, (x, y)) in zip(axes[0], panels.items()):
        ax.scatter(x, y, s=18, c="0.45", label="random plans")
        for (label, (mx, my)), marker in zip((marked or {}).get(name, {}).items(), "*Ds^v"):
            ax.scatter(mx, my, marker=marker, s=70, zorder=5, label=label)
        ax.set_xlabel(name), ax.set_ylabel(ylabel), ax.grid(alpha=0.3)
        if (marked or {}).get(name):
            ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
