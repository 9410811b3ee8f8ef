"""Global allocations of channels over units, shared by the one-shot pruners
(`gaprune.oneshot.structured`) and the search's one-shot seeds (`gaprune.search.target`).

Invariants: scores are compared across units only after `normalised`; `removal_order` never lists
a unit's last channel, so any prefix of it leaves every unit at least one channel.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gaprune.pruning.units import PrunableUnit
from gaprune.utils.errors import GapruneError


def removal_order(units: Sequence[PrunableUnit], scores: dict[str, np.ndarray], most_important_first: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The global order in which channels go below a rising (or, for `max`, falling) threshold:
    (unit index per removal, score per removal). Each unit's last channel is never listed, so a
    unit keeps at least one. Ties break by unit order, then channel index."""
    units_idx, values = [], []
    for index, unit in enumerate(units):
        score = np.asarray(scores[unit.name], dtype=np.float64)
        if score.shape != (unit.channels,):
            raise GapruneError(f"importance of unit '{unit.name}' has shape {score.shape}, expected ({unit.channels},)")
        ordered = np.sort(score)[::-1] if most_important_first else np.sort(score)
        removable = ordered[: unit.channels - 1]
        units_idx.append(np.full(removable.shape[0], index))
        values.append(removable)
    unit_of, value = np.concatenate(units_idx), np.concatenate(values)
    order = np.argsort(-value if most_important_first else value, kind="stable")
    return unit_of[order], value[order]


def normalised(scores: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    """Per-unit normalisation before the global comparison. `mean`: score / unit mean (scale-free
    across widths, torch-pruning's default for global pruning); `sum`: shares summing to 1 per
    unit (gaprune's stored form; favours pruning wide units); `max`: score / unit max."""
    out = {}
    for name, score in scores.items():
        score = np.abs(np.asarray(score, dtype=np.float64))
        denom = {"mean": score.mean(), "sum": score.sum(), "max": score.max()}[how]
        out[name] = score / denom if denom > 0 else np.ones_like(score)
    return out
