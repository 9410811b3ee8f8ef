"""Choosing plans from a search: the Pareto set over all evaluated plans, and the knee /
best / target-MACs / target-latency picks that fine-tuning takes. `target_latency` needs records
with `latency_reduction` (a search with the latency lookup table)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gaprune.utils.errors import GapruneError

PICKS = ("knee", "best", "all", "target_macs", "target_latency")


def pareto_front(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-dominated records for (max proxy, max MACs reduction), sorted by MACs reduction."""
    ordered = sorted(records, key=lambda r: (-r["macs_reduction"], -r["proxy"], r["id"]))
    front, best_proxy = [], -np.inf
    for record in ordered:
        if record["proxy"] > best_proxy:
            front.append(record)
            best_proxy = record["proxy"]
    return front


def knee(front: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Closest point to the ideal (best proxy, best MACs reduction) after min-max normalisation."""
    proxy = np.array([r["proxy"] for r in front])
    reduction = np.array([r["macs_reduction"] for r in front])

    def scale(v: np.ndarray) -> np.ndarray:
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.ones_like(v)

    distance = np.hypot(1.0 - scale(proxy), 1.0 - scale(reduction))
    return front[int(np.argmin(distance))]


def target_latency_pick(records: Sequence[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """Best proxy among plans whose predicted latency is at least `target` below the baseline's."""
    if target is None:
        raise GapruneError("pick=target_latency needs score.target_latency_reduction=<fraction>, e.g. 0.5")
    timed = [r for r in records if r.get("latency_reduction") is not None]
    if not timed:
        raise GapruneError("pick=target_latency needs a search with the latency lookup table "
                           "(score.target_latency_reduction or optimizer.objectives with latency)")
    eligible = [r for r in timed if r["latency_reduction"] >= target]
    if not eligible:
        best = max(r["latency_reduction"] for r in timed)
        raise GapruneError(f"no plan reaches target_latency_reduction={target} (best found: {best:.3f}); "
                           "lower the target or search longer")
    return max(eligible, key=lambda r: (r["proxy"], -r["id"]))


def pick_plans(records: Sequence[dict[str, Any]], pick: str, target_macs_reduction: float | None = None,
               target_latency_reduction: float | None = None) -> list[dict[str, Any]]:
    if not records:
        raise GapruneError("the search has no evaluated plans to pick from")
    front = pareto_front(records)
    if pick == "knee":
        return [knee(front)]
    if pick == "best":
        return [max(records, key=lambda r: (r["score"], -r["id"]))]
    if pick == "all":
        return list(front)
    if pick == "target_macs":
        if target_macs_reduction is None:
            raise GapruneError("pick=target_macs needs target_macs_reduction=<fraction>, e.g. 0.7")
        eligible = [r for r in records if r["macs_reduction"] >= target_macs_reduction]
        if not eligible:
            best = max(r["macs_reduction"] for r in records)
            raise GapruneError(
                f"no plan reaches target_macs_reduction={target_macs_reduction} (best found: {best:.3f}); "
                "lower the target or search longer"
            )
        return [max(eligible, key=lambda r: (r["proxy"], -r["id"]))]
    if pick == "target_latency":
        return [target_latency_pick(records, target_latency_reduction)]
    raise GapruneError(f"unknown pick '{pick}'; choose one of: {', '.join(PICKS)}")
