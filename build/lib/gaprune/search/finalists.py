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
from gaprune.utils.io import atomic_torch_save, read_json, read_torch_file, write_json

# finalists.metric -> the fine-tune result it ranks by: validation accuracy, validation loss, or the
# mean training loss over the short fine-tune (the sum of training losses at a fixed step count: the
# "training speed" estimate of Ru et al., 2021; no validation pass needed)
METRICS = {"accuracy": "finetune_acc", "neg_loss": "finetune_loss", "neg_train_loss": "finetune_train_loss"}


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
           path: Path, target: float, metric: str = "accuracy", base_macs: float = 0.0,
           states: Path | None = None, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune every finalist (resumable through `path`) and return the winner's record.

    Writes {"target", "metric", "ids", "rows": [{id, proxy, finetune_acc, finetune_loss,
    compute_macs, ...}], "winner"}; the winner has the best `metric` after the short fine-tune
    (ties: higher proxy, then lower id). A row's `compute_macs` is what its fine-tune cost (its
    plan's MACs per pass, `base_macs` per baseline pass). With `states`, each finalist's trained
    state is kept in `<states>/plan-<id>.pt` until the winner is known, then only the winner's,
    so the final fine-tune can continue it (`winner_state`)."""
    if metric not in METRICS:
        raise GapruneError(f"finalists.metric={metric!r} is unknown; choose one of: {', '.join(METRICS)}")
    ids = [r["id"] for r in finalists]
    done: dict[int, dict[str, Any]] = {}
    if path.is_file():
        saved = read_json(path)
        if saved.get("target") == target and saved.get("ids") == ids:
            done = {row["id"]: row for row in saved["rows"]}
    state = {"target": target, "metric": metric, "ids": ids, "rows": [], "winner": None, "recipe": recipe}
    for record in finalists:
        if record["id"] not in done:
            result = dict(fitness.evaluate([decode(record["genome"])])[0])
            spent = result.pop("plan_passes", 0) * record.get("macs", 0) + result.pop("baseline_passes", 0) * base_macs
            if states is not None and getattr(fitness, "last_trained", None) is not None:
                atomic_torch_save(fitness.last_trained, states / f"plan-{record['id']}.pt")
            done[record["id"]] = {"id": record["id"], "proxy": record["proxy"],
                                  "macs_reduction": record["macs_reduction"], "compute_macs": int(spent),
                                  **{k: float(v) for k, v in result.items() if k != "proxy"}}
        state["rows"] = [done[i] for i in ids if i in done]
        write_json(path, state)
    sign = 1.0 if metric == "accuracy" else -1.0
    best = max(state["rows"], key=lambda row: (sign * row[METRICS[metric]], row["proxy"], -row["id"]))
    state["winner"] = best["id"]
    write_json(path, state)
    if states is not None:
        for other in ids:
            if other != best["id"]:
                (states / f"plan-{other}.pt").unlink(missing_ok=True)
    return next(r for r in finalists if r["id"] == best["id"])


def winner_state(search_dir: Path, plan_id: int, recipe: dict[str, Any], steps_per_epoch: int) -> dict[str, Any] | None:
    """The finalists' winner's short fine-tune state (`rerank(states=...)`) when `plan_id` is the
    winner and the final
    fine-tune can continue it exactly: same recipe (`recipe`: the finalists' fine-tune settings
    saved with it) and its steps inside the first epoch (whose learning rate it shares).
    None otherwise (the final fine-tune then starts over)."""
    path = search_dir / "finalists.json"
    if not path.is_file():
        return None
    saved = read_json(path)
    winner = saved.get("winner")
    state_path = search_dir / "finalists" / f"plan-{winner}.pt"
    if winner is None or winner != plan_id or saved.get("recipe") != recipe or not state_path.is_file():
        return None
    state = read_torch_file(state_path, "finalist state", "start a new run (resume cannot continue this one)")
    if not state.get("steps") or int(state["steps"]) >= steps_per_epoch:
        return None
    return state
