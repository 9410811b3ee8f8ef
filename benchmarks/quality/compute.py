"""Compute of the quality benchmark's arms (issue #21): counted by the library in every item
written since `gaprune.engine.compute` existed, recounted from the protocol and the item's own
records for items written before, and the step count that matches a one-shot arm's compute to
another arm's (`*_matched` arms).

Invariants: a recount uses the library's rules (`gaprune.engine.compute`: a backward costs 2x its
forward, the KD teacher's forwards count, the final val / test report does not) and the item's
exact MACs for every network it names (the pick, each finalist); only the proxy evaluations of a
search use one MACs figure for every plan, the pick's (every plan is repaired into [target,
target + 1 %], so this is within about 1 % of the proxy part). Items say `compute_source`:
`counted` or `recounted`.
"""
from __future__ import annotations

import math
from typing import Any

from benchmarks.quality.protocol import MATCHED_ARMS, ONESHOT_ARMS, SEARCH_ARMS
from gaprune.engine.compute import Compute, forward_macs, training_macs


def finetune_compute(spec: dict[str, Any], sizes: dict[str, int], student_macs: float, teacher_macs: float,
                     epochs: int, steps: int | None = None, skipped_steps: int = 0) -> int:
    """MACs of the protocol's KD fine-tune on a model's `sizes` ({"train", "val"} images): the
    evaluation before it, `epochs` epochs (or `steps` SGD steps in all) of training, a validation
    pass per epoch; `skipped_steps` already trained elsewhere (a continued finalist) are not counted."""
    batch = spec["finetune_batch_size"]
    per_epoch = math.ceil(sizes["train"] / batch)
    total_steps = epochs * per_epoch if steps is None else min(steps, epochs * per_epoch)
    images = 0
    for epoch in range(epochs):
        first, last = epoch * per_epoch, min((epoch + 1) * per_epoch, total_steps)
        for step in range(max(first, skipped_steps), last):
            images += min(batch, sizes["train"] - (step - first) * batch)
    ran_epochs = math.ceil(total_steps / per_epoch)
    evals = sizes["val"] * (1 + ran_epochs)
    return training_macs(images, student_macs, teacher_macs) + forward_macs(evals, student_macs)


def recount(item: dict[str, Any], spec: dict[str, Any], sizes: dict[str, int], base_macs: float,
            overrides: list[str]) -> dict[str, Any]:
    """`compute_macs` / `compute_macs_by_phase` of an item written before the library counted
    them, from the protocol and the item's records (see the module docstring)."""
    compute = Compute()
    if "importance=taylor" in overrides or "oneshot.params.importance=taylor" in overrides:
        compute.add("importance", 8 * 128 * 3 * base_macs)  # conf/importance/taylor.yaml: 8 batches of 128
    if item.get("evaluations") and "fitness=taylor_proxy" not in overrides:  # taylor_proxy runs no network
        calib = spec["calib_samples"]
        bn = 0 if "fitness.params.adaptive_bn=false" in overrides else 8 * 64  # conf/fitness/calib.yaml
        compute.add("proxy", item["evaluations"] * forward_macs(calib + bn, item["macs"]))
    winner_steps = 0
    for row in item.get("finalists") or []:
        macs = base_macs * (1.0 - row["macs_reduction"])
        steps = spec["finalist_steps"]
        images = steps * spec["finetune_batch_size"]
        val = sizes["val"]
        compute.add("finalists", training_macs(images, macs, base_macs) + forward_macs(2 * val, macs))
        if row.get("winner"):
            winner_steps = steps
    continued = winner_steps if "finalists.continue_winner=false" not in overrides else 0
    compute.add("finetune", finetune_compute(spec, sizes, item["macs"], base_macs, item["epochs"], skipped_steps=continued))
    return {"compute_macs": compute.total, "compute_macs_by_phase": compute.to_json(), "compute_source": "recounted"}


def matched_steps(spec: dict[str, Any], sizes: dict[str, int], budget: float, spent_before: float,
                  student_macs: float, teacher_macs: float) -> tuple[int, int]:
    """(epochs, steps) of a KD fine-tune whose compute plus `spent_before` (finding the plan)
    comes closest to `budget` without passing it; the cosine schedule spans the epochs."""
    per_epoch = math.ceil(sizes["train"] / spec["finetune_batch_size"])
    steps = 1
    while True:
        nxt = steps + 1
        epochs = math.ceil(nxt / per_epoch)
        if spent_before + finetune_compute(spec, sizes, student_macs, teacher_macs, epochs, nxt) > budget:
            return math.ceil(steps / per_epoch), steps
        steps = nxt


def item_compute(item: dict[str, Any], spec: dict[str, Any], sizes: dict[str, int], base_macs: float) -> dict[str, Any]:
    """An item's compute fields (`compute_macs`, `compute_macs_by_phase`, `compute_source`): as
    the library counted them, or recounted for an item written before it did."""
    if "compute_macs" in item:
        return {"compute_macs": item["compute_macs"], "compute_macs_by_phase": item["compute_macs_by_phase"],
                "compute_source": item.get("compute_source", "counted")}
    arm = item["arm"]
    overrides = list(SEARCH_ARMS.get(arm) or ONESHOT_ARMS.get(MATCHED_ARMS.get(arm, arm), []))
    if arm in SEARCH_ARMS:  # written before continue_winner: every finalist's fine-tune was started over
        overrides.append("finalists.continue_winner=false")
    return recount(item, spec, sizes, base_macs, overrides)
