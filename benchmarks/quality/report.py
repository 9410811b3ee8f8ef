"""Tables from finished items: `<results>.json` (the schema of issue #10) and `<results>.md`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from benchmarks.quality.compute import item_compute
from benchmarks.quality.fidelity import correlations, study_files, study_name
from benchmarks.quality.finalists import render_short_vs_full, short_vs_full
from benchmarks.quality.protocol import ARMS, LABELS, MATCHED_ARMS, MATCHED_TO

SIMPLE = ("uniform_l1", "global_taylor", "global_l1", "random")  # the hand-set / unguided arms


def report(args, baselines: dict[str, Any], wall: float) -> dict[str, Any]:
    from gaprune.utils.io import atomic_write_text, read_json, write_json

    arms: dict[str, dict[str, Any]] = {}
    items = [read_json(path) for path in sorted((args.out / "items").glob("*@*/*.json"))]
    for row in items:
        if row["model"] in baselines:
            row.update(item_compute(row, args.spec, baselines[row["model"]]["sizes"], baselines[row["model"]]["macs"]))
        cell = arms.setdefault(row.get("cell") or f"{row['model']}@{row['target']:g}", {}).setdefault(row["arm"], {
            "seeds": [], "test_acc": [], "macs_reduction": [], "params_reduction": [], "val_acc_before_finetune": [],
            "keep_counts": [], "seconds": [], "compute_macs": [], "compute_source": []})
        for key in cell:
            cell[key].append(row["seed"] if key == "seeds" else row.get(key))
    spec = args.spec
    finalists_table = short_vs_full(items)
    studies = {}
    for model, study in spec["fidelity"].items():
        name = study_name(model, study)
        scores_path, finetune_dir = study_files(args.out, name)
        if not (scores_path.is_file() and (finetune_dir / "results.json").is_file()):
            continue
        scored, rows = read_json(scores_path), read_json(finetune_dir / "results.json")["results"]
        if not rows:
            continue
        studies[name] = {
            "correlations": correlations(scored, rows), "plans_finetuned": len(rows), "plans": len(scored["plans"]),
            "window": scored["window"], "finetune_epochs": study["epochs"], "importance": study["importance"],
            "test_acc_range": [min(r["test_acc"] for r in rows), max(r["test_acc"] for r in rows)],
            "scoring_seconds": scored["seconds"]}
        same_budget = study["epochs"] == spec["finetune_epochs"]  # only then do the arms' points belong
        plot_study(scored, rows, studies[name], name, finalists_table if same_budget else [],
                   args.results.with_name(f"{args.results.name}-fidelity-{name}.png"))
    first = next(iter(studies.values()), {})  # the protocol's first study (ResNet-20): issue #10's `fidelity`
    results = {
        "protocol": {"name": args.protocol, **{k: v for k, v in spec.items() if k != "results"},
                     "arms": {a: LABELS.get(a, a) for a in sorted({arm for cells in arms.values() for arm in cells})}, "threads": args.threads,
                     "command": "python -m benchmarks.quality " + " ".join(sys.argv[1:]),
                     "wall_seconds_this_invocation": wall},
        "baselines": {m: b["test_acc"] for m, b in baselines.items()},
        "baseline_details": baselines,
        "arms": {key: {arm: {k: cell[k] for k in ("test_acc", "macs_reduction", "params_reduction",
                                                  "val_acc_before_finetune", "seeds", "keep_counts", "seconds",
                                                  "compute_macs", "compute_source")}
                       for arm, cell in sorted(cells.items(), key=arm_order)} for key, cells in sorted(arms.items())},
        "fidelity": {name: {"kendall_tau": c["kendall_tau"], "spearman": c["spearman"]}
                     for name, c in first.get("correlations", {}).items()},
        "fidelity_studies": studies,
    }
    results["goal"] = goal_check(results["arms"])
    results["compute_goal"] = compute_goal(results["arms"])
    results["finalists_short_vs_full"] = finalists_table
    write_json(args.results.with_suffix(".json"), results)
    text = render(results)
    atomic_write_text(args.results.with_suffix(".md"), text)
    print(text)
    return results


# the default proxy and the finalists' short fine-tune -> the finalists table's field with the same score
PLOTTED = {"calib_adaptive_bn": "proxy", "finalists": "short_acc"}


def plot_study(scored: dict[str, Any], rows: Sequence[dict[str, Any]], study: dict[str, Any], name: str,
               finalists_table: Sequence[dict[str, Any]], path: Path) -> None:
    """The default proxy and the finalists' score of each fine-tuned plan against its test accuracy,
    with the default arm's picks and one-shot seeds of the same cell from `finalists_table` (their scores
    in the search against their arm's fine-tune; give them only when that has the study's budget)."""
    from gaprune.utils.plots import plot_proxy_fidelity

    done = {r["plan_id"]: r["test_acc"] for r in rows}
    panels, marked = {}, {}
    for proxy in (p for p in PLOTTED if p in scored["scores"]):
        tau = study["correlations"].get(proxy, {}).get("kendall_tau", float("nan"))
        panel = f"{proxy} (tau {tau:+.2f})"
        panels[panel] = ([scored["scores"][proxy][i] for i in sorted(done)], [100 * done[i] for i in sorted(done)])
        for role, label in (("winner", "default's pick"), ("uniform", "uniform L1 seed"), ("global", "global L1 seed")):
            points = [row[role] for row in finalists_table if row["cell"] == name and role in row]
            if points:
                marked.setdefault(panel, {})[f"{label} ({len(points)} arm seeds)"] = (
                    [p[PLOTTED[proxy]] for p in points], [100 * p["test_acc"] for p in points])
    if panels:
        plot_proxy_fidelity(panels, f"test acc % after {study['finetune_epochs']} epoch(s)",
                            f"proxy fidelity {name}: {len(done)} random plans", path, marked)
        study["plot"] = path.name


def arm_order(item: tuple[str, Any]) -> tuple[int, str]:
    """The protocol's arms in their order, then the ablations by name."""
    arm = item[0]
    return (ARMS.index(arm), "") if arm in ARMS else (len(ARMS), arm)


def goal_check(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per cell with a `default` arm: its mean minus the best simple pruner's mean (issue #10's
    goal: >= +0.5 points), and the per-seed differences on the seeds both have."""
    import statistics

    out = {}
    for key, cells in arms.items():
        rivals = {arm: statistics.fmean(cells[arm]["test_acc"]) for arm in SIMPLE if arm in cells}
        if "default" not in cells or not rivals:
            continue
        best = max(rivals, key=rivals.get)
        default = dict(zip(cells["default"]["seeds"], cells["default"]["test_acc"]))
        rival = dict(zip(cells[best]["seeds"], cells[best]["test_acc"]))
        mean = statistics.fmean(default.values())
        out[key] = {"default_mean": mean, "default_seeds": sorted(default), "best_simple": best,
                    "best_simple_mean": rivals[best], "best_simple_seeds": sorted(rival),
                    "margin": mean - rivals[best], "per_seed_margin": {seed: default[seed] - rival[seed]
                                                                       for seed in sorted(default) if seed in rival}}
    return out


def mean_margin(cells: dict[str, Any], arm: str, rival: str) -> dict[str, Any]:
    """`arm`'s mean test accuracy minus `rival`'s over the seeds both have, and per seed."""
    import statistics

    mine, theirs = (dict(zip(cells[a]["seeds"], cells[a]["test_acc"])) for a in (arm, rival))
    common = set(mine) & set(theirs)
    mine, theirs = ({s: v for s, v in d.items() if s in common} for d in (mine, theirs))
    return {"arm": arm, "mean": statistics.fmean(mine.values()), "seeds": sorted(mine), "rival": rival,
            "rival_mean": statistics.fmean(theirs.values()), "rival_seeds": sorted(theirs),
            "margin": statistics.fmean(mine.values()) - statistics.fmean(theirs.values()),
            "per_seed_margin": {seed: mine[seed] - theirs[seed] for seed in sorted(mine) if seed in theirs}}


def compute_goal(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue #21's goals for the cheap search (MATCHED_TO): >= 0.5 points above the best
    compute-matched one-shot arm; in a -ft<epochs> cell >= 0.5 above the best of uniform / global
    L1; its compute <= 1.5x uniform L1's (means over seeds)."""
    import statistics

    out: dict[str, Any] = {}
    for key, cells in arms.items():
        if MATCHED_TO not in cells:
            continue
        rivals = [a for a in (MATCHED_ARMS if "-ft" not in key else ("uniform_l1", "global_l1")) if a in cells]
        goal: dict[str, Any] = {}
        if rivals and set(cells[MATCHED_TO]["seeds"]) & set.intersection(*(set(cells[a]["seeds"]) for a in rivals)):
            best = max(rivals, key=lambda a: mean_margin(cells, a, MATCHED_TO)["mean"])
            goal["accuracy"] = mean_margin(cells, MATCHED_TO, best)
        if "uniform_l1" in cells and None not in cells[MATCHED_TO]["compute_macs"] + cells["uniform_l1"]["compute_macs"]:
            ratio = statistics.fmean(cells[MATCHED_TO]["compute_macs"]) / statistics.fmean(cells["uniform_l1"]["compute_macs"])
            goal["compute_ratio_to_uniform_l1"] = ratio
        out[key] = goal
    return out


def render(results: dict[str, Any]) -> str:
    import statistics

    def pm(values: Sequence[float], digits: int = 2) -> str:
        mean = 100 * statistics.fmean(values)
        return f"{mean:.{digits}f}" + (f" ± {100 * statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")

    p = results["protocol"]
    lines = [f"# Quality at equal MACs ({p['name']})", "",
             f"Data: {p['dataset']}, train+val pool {p['train_limit'] or 'all'}, test {p['test_limit'] or 'all'}. "
             f"Baselines: {p['baseline_epochs']} epochs ({p['trainer']} recipe), one per model. Search budget: population "
             f"{p['population']} x {p['generations']} generations, calib on {p['calib_samples']} val images; finalists: "
             f"{p.get('finalist_steps', '-')}-step KD fine-tune each, scored on all val images. Every arm: "
             f"KD fine-tune {p['finetune_epochs']} epoch(s), batch {p['finetune_batch_size']}.", "",
             "Compute: TMACs spent per arm and seed (search or one-shot plan + fine-tune, counted by "
             "`gaprune.engine.compute`; * recounted from an item written before the library counted), and its "
             "mean as a multiple of uniform L1's in the cell.", "",
             "| model @ target | method | test acc % (mean ± std) | per seed | compute TMACs (per seed) | x uniform L1 "
             "| MACs red. % | params red. % | val acc before FT % |", "|---|---|---|---|---|---|---|---|---|"]
    for key, cells in results["arms"].items():
        model = key.split("@")[0]
        uniform = cells.get("uniform_l1", {}).get("compute_macs") or [None]
        lines.append(f"| {key} | baseline | {100 * results['baselines'].get(model, float('nan')):.2f} | | | | | | |")
        for arm, cell in cells.items():
            per_seed = ", ".join(f"s{seed} {100 * v:.2f}" for seed, v in zip(cell["seeds"], cell["test_acc"]))
            lines.append(f"| {key} | {LABELS.get(arm, arm)} | {pm(cell['test_acc'])} | {per_seed} | "
                         f"{compute_cell(cell)} | {ratio_cell(cell['compute_macs'], uniform)} | "
                         f"{pm(cell['macs_reduction'], 1)} | "
                         f"{pm(cell['params_reduction'], 1)} | {pm(cell['val_acc_before_finetune'])} |")
    lines += render_compute_goal(results.get("compute_goal", {}))
    if results.get("goal"):
        lines += ["", "## Goal: the default search's mean >= 0.5 points above the best simple pruner "
                      f"({', '.join(LABELS[a] for a in SIMPLE)})", "",
                  "| model @ target | default (seeds) | best simple (seeds) | margin | per-seed margin |", "|---|---|---|---|---|"]
        for key, g in results["goal"].items():
            seeds = ", ".join(f"s{seed} {100 * m:+.2f}" for seed, m in g["per_seed_margin"].items())
            lines.append(f"| {key} | {100 * g['default_mean']:.2f} ({len(g['default_seeds'])}) | "
                         f"{LABELS[g['best_simple']]} {100 * g['best_simple_mean']:.2f} ({len(g['best_simple_seeds'])}) | "
                         f"{100 * g['margin']:+.2f} | {seeds} |")
    lines += render_short_vs_full(results.get("finalists_short_vs_full", []), p.get("finalist_steps", "-"))
    for name, fid in results.get("fidelity_studies", {}).items():
        low, high = fid["test_acc_range"]
        lines += ["", f"## Proxy fidelity, {name}: {fid['plans_finetuned']}/{fid['plans']} random plans (channels by "
                      f"{fid['importance']}), MACs reduction in [{100 * fid['window'][0]:.0f}%, "
                      f"{100 * fid['window'][1]:.0f}%], each fine-tuned {fid['finetune_epochs']} epoch(s): "
                      f"test {100 * low:.2f}-{100 * high:.2f}%", "",
                  *([f"![{name}]({fid['plot']})", ""] if fid.get("plot") else []),
                  "| proxy | Kendall tau | p | Spearman rho | p | n |", "|---|---|---|---|---|---|"]
        for proxy, c in fid["correlations"].items():
            lines.append(f"| {proxy} | {c['kendall_tau']:+.3f} | {c['kendall_p']:.3f} | {c['spearman']:+.3f} | "
                         f"{c['spearman_p']:.3f} | {c['n']} |")
    lines += ["", f"Command: `{p['command']}`"]
    return "\n".join(lines) + "\n"


def compute_cell(cell: dict[str, Any]) -> str:
    values = cell.get("compute_macs") or []
    if not values or None in values:
        return "-"
    marks = ["*" if source == "recounted" else "" for source in cell.get("compute_source", [])]
    return ", ".join(f"{v / 1e12:.2f}{m}" for v, m in zip(values, marks + [""] * len(values)))


def ratio_cell(values: Sequence[float | None], reference: Sequence[float | None]) -> str:
    import statistics

    if not values or None in values or None in reference:
        return "-"
    return f"{statistics.fmean(values) / statistics.fmean(reference):.2f}x"


def render_compute_goal(goals: dict[str, Any]) -> list[str]:
    if not goals:
        return []
    lines = ["", f"## Compute goals (issue #21): {LABELS.get(MATCHED_TO, MATCHED_TO)}", "",
             "| cell | vs | margin (mean) | per seed | compute / uniform L1 |", "|---|---|---|---|---|"]
    for key, goal in goals.items():
        acc = goal.get("accuracy")
        ratio = goal.get("compute_ratio_to_uniform_l1")
        seeds = ", ".join(f"s{seed} {100 * m:+.2f}" for seed, m in (acc or {}).get("per_seed_margin", {}).items())
        vs = f"{LABELS.get(acc['rival'], acc['rival'])} {100 * acc['rival_mean']:.2f} ({len(acc['rival_seeds'])} seeds)" \
            if acc else "-"
        margin = f"{100 * acc['margin']:+.2f} ({len(acc['seeds'])} seeds)" if acc else "-"
        lines.append(f"| {key} | {vs} | {margin} | {seeds} | {'-' if ratio is None else f'{ratio:.2f}x'} |")
    return lines

