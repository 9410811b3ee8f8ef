"""The finalists' short fine-tune against the shared full fine-tune: does the lead a searched plan
has over the one-shot seeds after `finalists.steps` KD steps survive the arms' full fine-tune?

Per model @ target and seed, from the `default` arm's finalists (the best plans at the target and
the one-shot seeds, re-ranked by a short fine-tune) and the one-shot arms of the same seed: the
winner's and the uniform / global seeds' proxy and short-fine-tune accuracy, next to the full
fine-tune's test accuracy of `default`, `uniform_l1` and `global_l1`. The seeds are the search's
first records, in `gaprune.search.target.target_seeds`' order (#0 uniform, #1 global); the one-shot
arm's plan is the same allocation, up to where the search's repair and the one-shot pruner hand
back the last few channels (`same_plan` says whether the keep counts are identical).

Invariants: a search item carries `finalists` (its run's finalists.json rows, each with the
plan's keep counts from evaluations.json); an item written before that field existed gains it
from its run dir while the run dir is there (`attach_finalists`, idempotent), else stays as it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

SEEDS = {"uniform": "uniform_l1", "global": "global_l1"}  # the search's seeds in record order -> their one-shot arm


def finalist_rows(run_dir: Path) -> list[dict[str, Any]] | None:
    """The finalists' rows of one search run with their keep counts, the winner flagged; None
    when the run re-ranked no finalists."""
    from gaprune.utils.io import read_json

    path = run_dir / "finalists.json"
    if not path.is_file():
        return None
    finalists = read_json(path)
    keep_counts = {r["id"]: r["keep_counts"] for r in read_json(run_dir / "evaluations.json")}
    return [{**row, "keep_counts": keep_counts[row["id"]], "winner": row["id"] == finalists["winner"]}
            for row in finalists["rows"]]


def attach_finalists(out: Path) -> int:
    """Give every search item without `finalists` its run's rows (when its run dir has them);
    returns how many items changed."""
    from gaprune.utils.io import read_json, write_json

    changed = 0
    for path in sorted((out / "items").glob("*@*/*.json")):
        item = read_json(path)
        if "finalists" in item or "search_seconds" not in item:  # done, or a one-shot arm
            continue
        rows = finalist_rows(out / "runs" / path.parent.name / path.stem)
        if rows is not None:
            write_json(path, {**item, "finalists": rows})
            changed += 1
    return changed


def short_vs_full(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model @ target and seed with a `default` item that has finalists: the winner's and each
    seed's proxy and short-fine-tune accuracy, and the full fine-tune's test accuracy of `default`
    and of the seeds' one-shot arms."""
    by_key = {(f"{i['model']}@{i['target']:g}", i["seed"], i["arm"]): i for i in items}
    table = []
    for (cell, seed, arm), item in sorted(by_key.items()):
        if arm != "default" or not item.get("finalists"):
            continue
        winner = next(r for r in item["finalists"] if r["winner"])
        row = {"cell": cell, "seed": seed, "winner": {"id": winner["id"], "proxy": winner["proxy"],
                                                      "short_acc": winner["finetune_acc"], "test_acc": item["test_acc"]}}
        for record_id, (seed_name, oneshot) in enumerate(SEEDS.items()):
            plan = by_key.get((cell, seed, oneshot))
            match = next((r for r in item["finalists"] if r["id"] == record_id), None)
            if plan and match:
                row[seed_name] = {"id": record_id, "proxy": match["proxy"], "short_acc": match["finetune_acc"],
                                  "test_acc": plan["test_acc"], "same_plan": match["keep_counts"] == plan["keep_counts"]}
        table.append(row)
    return table


def render_short_vs_full(table: Sequence[dict[str, Any]], steps: Any) -> list[str]:
    """Markdown lines: leads over the uniform seed after the short and after the full fine-tune."""
    if not table:
        return []
    lines = ["", f"## Finalists: lead over the one-shot seeds after the {steps}-step fine-tune vs after the full one",
             "", "Winner = the default's pick; its full fine-tune is the `default` arm, the seeds' are `uniform_l1` and "
                 "`global_l1` (* the one-shot pruner hands back a few channels elsewhere than the search's repair: "
                 "nearly the same plan). Accuracies in %; short = validation after the finalists' fine-tune.", "",
             "| model @ target | seed | winner: proxy / short / full | uniform: proxy / short / full | "
             "global: proxy / short / full | lead over uniform: short / full |", "|---|---|---|---|---|---|"]

    def cell(entry: dict[str, Any] | None) -> str:
        return (f"#{entry['id']}: {entry['proxy']:.3f} / {100 * entry['short_acc']:.1f} / {100 * entry['test_acc']:.2f}"
                + ("" if entry.get("same_plan", True) else "*") if entry else "-")

    for row in table:
        uniform, winner = row.get("uniform"), row["winner"]
        lead = (f"{100 * (winner['short_acc'] - uniform['short_acc']):+.1f} / "
                f"{100 * (winner['test_acc'] - uniform['test_acc']):+.2f}" if uniform else "-")
        lines.append(f"| {row['cell']} | s{row['seed']} | {cell(winner)} | {cell(uniform)} | {cell(row.get('global'))} "
                     f"| {lead} |")
    return lines
