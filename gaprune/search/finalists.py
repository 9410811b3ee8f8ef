"""Finalists: the search's best plans at the MACs target, re-ranked by a short fine-tune.

A search optimises a proxy (pre-fine-tune calibration accuracy), which ranks plans at one MACs
budget only roughly; what a user keeps is the plan after fine-tuning. So `pick=target_macs` does
not take the highest proxy blindly: the `count` highest-proxy plans at the target, plus the
one-shot plans the first population was seeded with, each get the same short fine-tune (the
`finetune` recipe capped at `steps` SGD steps, the same seeded batches for every plan), and the one
best on validation after it is the pick.

Invariants: finalists are records of the search (the pick is always an evaluated plan at the
target); their order and every result are deterministic for the seed; each finished finalist is
written to `finalists.json` at once and a resumed run re-uses it (a file for another target or
another set of finalists is recomputed); `count=0` leaves the proxy's pick.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from gaprune.pruning.plan import Plan
from gaprune.search.fitness import Fitness
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import read_json, write_json

METRICS = {"accuracy": "finetune_acc", "neg_loss": "finetune_loss"}


def select_finalists(records: Sequence[dict[str, Any]], target: float, count: int,
                     seeded: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The `count` highest-proxy records reaching `target` (ties: lower id), then the seeded
    records reaching it that are not among them."""
    eligible = sorted((r for r in records if r["macs_reduction"] >= target), key=lambda r: (-r["proxy"], r["id"]))
    chosen = eligible[:count]
    ids = {r["id"] for r in chosen}
    for record in seeded:
        if record["macs_reduction"] >= target and record["id"] not in ids:
            chosen.append(record)
            ids.add(record["id"])
    return chosen


def rerank(finalists: Sequence[dict[str, Any]], decode: Callable[[Sequence[float]], Plan], fitness: Fitness,
           path: Path, target: float, metric: str = "accuracy") -> dict[str, Any]:
    """Fine-tune every finalist (resumable through `path`) and return the winner's record.

    Writes {"target", "metric", "ids", "rows": [{id, proxy, finetune_acc, finetune_loss, ...}],
    "winner"}; the winner has the best `metric` after the short fine-tune (ties: higher proxy,
    then lower id)."""
    if metric not in METRICS:
        raise GapruneError(f"finalists.metric={metric!r} is unknown; choose one of: {', '.join(METRICS)}")
    ids = [r["id"] for r in finalists]
    done: dict[int, dict[str, Any]] = {}
    if path.is_file():
        saved = read_json(path)
        if saved.get("target") == target and saved.get("ids") == ids:
            done = {row["id"]: row for row in saved["rows"]}
    state = {"target": target, "metric": metric, "ids": ids, "rows": [], "winner": None}
    for record in finalists:
        if record["id"] not in done:
            result = fitness.evaluate([decode(record["genome"])])[0]
            done[record["id"]] = {"id": record["id"], "proxy": record["proxy"],
                                  "macs_reduction": record["macs_reduction"],
                                  **{k: float(v) for k, v in result.items() if k != "proxy"}}
        state["rows"] = [done[i] for i in ids if i in done]
        write_json(path, state)
    sign = 1.0 if metric == "accuracy" else -1.0
    best = max(state["rows"], key=lambda row: (sign * row[METRICS[metric]], row["proxy"], -row["id"]))
    state["winner"] = best["id"]
    write_json(path, state)
    return next(r for r in finalists if r["id"] == best["id"])
