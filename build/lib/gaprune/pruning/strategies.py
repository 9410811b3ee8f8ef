"""Which channels a unit keeps, given its importance and how many to keep.

Fitness and physical pruning both call these, so a plan means the same channels everywhere.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from gaprune.utils.registry import Registry

Strategy = Callable[[np.ndarray, int], np.ndarray]
STRATEGIES: Registry[Strategy] = Registry("strategy")


@STRATEGIES.register("min")
def keep_most_important(importance: np.ndarray, keep: int) -> np.ndarray:
    """Min-Importance: remove the lowest-importance channels (ties broken by index)."""
    order = np.argsort(-importance, kind="stable")
    return np.sort(order[:keep])


@STRATEGIES.register("median")
def keep_both_tails(importance: np.ndarray, keep: int) -> np.ndarray:
    """Median-Rank: remove a contiguous window of ranks centred on the median, keeping both tails."""
    channels = importance.shape[0]
    remove = channels - keep
    order = np.argsort(importance, kind="stable")
    start = (channels - remove) // 2
    return np.sort(np.concatenate([order[:start], order[start + remove:]]))
