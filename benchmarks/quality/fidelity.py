"""Proxy fidelity: per study (one per model in the protocol's `fidelity`), random plans near the
model's target, scored by every proxy in FITNESSES, each fine-tuned with one equal budget (the
study's `epochs`); Kendall tau / Spearman rho of each proxy against post-fine-tune test accuracy.

Invariants: a study `<model>@<target>` lives in `items/fidelity/<model>@<target>/`; its plans are
drawn once (seeded, channels ranked by the study's `importance`) and stored with their scores in
`scores.json`; a proxy missing there is scored and stored plan by plan (so a new proxy can be added
to a finished study and an interrupted one resumes); fine-tunes resume per plan (`finetune/`).
"""
from __future__ import annotations

import contextlib
import io
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.quality.protocol import FINALIST_PROXIES, FITNESSES, common, compose


def study_name(model: str, study: dict[str, Any]) -> str:
    return f"{model}@{study['target']:g}"


def study_files(out: Path, name: str) -> tuple[Path, Path]:
    """A study's scores file and its fine-tunes' directory (whose results.json the report reads)."""
    root = out / "items" / "fidelity" / name
    return root / "scores.json", root / "finetune"


def fidelity(args, model: str) -> dict[str, Any]:
    """`model`'s study: random plans near its target, every proxy, one equal fine-tune each (resumable per plan)."""
    from gaprune.utils.io import read_json

    study = args.spec["fidelity"][model]
    name = study_name(model, study)
    scores_path, finetune_dir = study_files(args.out, name)
    base = common(args, model, 0) + [f"finetune.epochs={study['epochs']}", f"importance={study['importance']}",
                                     f"finalists.steps={args.spec['finalist_steps']}"]
    scored = read_json(scores_path) if scores_path.is_file() else None
    if scored is None or any(proxy not in scored["scores"] for proxy in FITNESSES):
        scored = score_fidelity_plans(args, base, study, scored, scores_path, args.out / "runs" / "fidelity" / name)
    rows = finetune_fidelity_plans(args, base, scored, finetune_dir, name)
    return {"scored": scored, "rows": rows}


def draw_plans(encoding, cost, study: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """`study["plans"]` distinct random plans within target +- window (seeded), and the draws it took."""
    rng = random.Random(10_000)
    lo, hi = study["target"] - study["window"], study["target"] + study["window"]
    plans, seen, draws = [], set(), 0
    while len(plans) < study["plans"]:
        draws += 1
        if draws > 500_000:
            raise RuntimeError(f"only {len(plans)} random plans in MACs reduction [{lo:.2f}, {hi:.2f}]")
        genome = encoding.random_genome(rng)
        plan = encoding.decode(genome)
        macs, params = cost.cost(plan)
        reduction = 1.0 - macs / cost.base_macs
        if lo <= reduction <= hi and plan.signature() not in seen:
            seen.add(plan.signature())
            plans.append({"genome": genome, "plan": plan.to_json(), "macs": macs, "macs_reduction": reduction,
                          "params_reduction": 1.0 - params / cost.base_params})
    return plans, draws


def score_fidelity_plans(args, base: list[str], study: dict[str, Any], scored: dict[str, Any] | None,
                         path: Path, run_dir: Path) -> dict[str, Any]:
    """Scores of every proxy in FITNESSES missing from `scored` (None: draw the plans first),
    written to `path` after every plan."""
    from omegaconf import open_dict

    from gaprune.pipeline.search import finalist_fitness, fitness_from_config, run_importance, search_space
    from gaprune.pipeline.setup import open_run
    from gaprune.pipeline.train import ensure_baseline

    def job_cfg(extra):
        samples = [] if "fitness=taylor_proxy" in extra or any(o.startswith("fitness.calib_samples=") for o in extra) \
            else [f"fitness.calib_samples={args.spec['calib_samples']}"]
        cfg = compose("search", base + ["encoding=ratio_strategy"] + extra + samples)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    run = open_run(job_cfg([]), directory=run_dir)
    ensure_baseline(run.cfg, run.directory)
    run.reference()
    importance, encoding, cost = search_space(run)
    if scored is None:
        plans, draws = draw_plans(encoding, cost, study)
        scored = {"window": [study["target"] - study["window"], study["target"] + study["window"]], "draws": draws,
                  "plans": plans, "scores": {}, "seconds": {}}
    decoded = [encoding.decode(p["genome"]) for p in scored["plans"]]
    for name, overrides in FITNESSES.items():
        if name in scored["scores"]:
            continue
        if name in FINALIST_PROXIES:  # the finalists' short fine-tune (its steps from the overrides)
            fitness = finalist_fitness(job_cfg(overrides or []), run, importance)
        else:  # a proxy with its own importance (taylor_proxy) scores the study's plans with it
            cfg = job_cfg(overrides)
            own = importance if cfg.importance.name == run.cfg.importance.name else run_importance(run, cfg.importance)
            fitness = fitness_from_config(cfg.fitness, run, own)
        score_proxy(name, fitness, decoded, scored, path)
    return scored


def score_proxy(name: str, fitness, decoded: list, scored: dict[str, Any], path: Path) -> None:
    """Proxy `name`'s scores of the plans `decoded` into `scored` (resuming from its `partial`
    entry), written to `path` after every plan; closes `fitness`."""
    from gaprune.utils.io import write_json

    partial = scored.setdefault("partial", {}).setdefault(
        name, {"proxy": [], "neg_loss": [], "neg_train_loss": [], "seconds": 0.0})
    for plan in decoded[len(partial["proxy"]):]:
        t0 = time.perf_counter()
        (result,) = fitness.evaluate([plan])
        partial["proxy"].append(float(result["proxy"]))
        loss = result.get("calib_loss", result.get("finetune_loss"))
        partial["neg_loss"].append(None if loss is None else -float(loss))
        train_loss = result.get("finetune_train_loss")  # the sum of training losses (a fixed step count)
        partial.setdefault("neg_train_loss", []).append(None if train_loss is None else -float(train_loss))
        partial["seconds"] += time.perf_counter() - t0
        write_json(path, scored)
    if hasattr(fitness, "close"):
        fitness.close()
    done = scored["partial"].pop(name)
    if not scored["partial"]:
        del scored["partial"]
    scored["scores"][name] = done["proxy"]
    for key in ("neg_loss", "neg_train_loss"):
        if done.get(key) and None not in done[key]:
            scored["scores"][f"{name}_{key}"] = done[key]
    scored["seconds"][name] = done["seconds"]
    write_json(path, scored)
    print(f"[bench] fidelity {path.parent.name}: {name} scored {len(decoded)} plans in {done['seconds']:.1f}s",
          flush=True)


def finetune_fidelity_plans(args, base: list[str], scored: dict[str, Any], directory: Path,
                            name: str) -> list[dict[str, Any]]:
    from omegaconf import open_dict

    import gaprune
    from gaprune.engine.checkpoint import load_model
    from gaprune.engine.training import resolve_device, seed_everything
    from gaprune.pipeline.finetune import open_job
    from gaprune.pipeline.setup import load_bundle

    cfg = compose("search", base)
    with open_dict(cfg):
        del cfg["hydra"]
    device = resolve_device(cfg.device)
    teacher, meta, _ = load_model(cfg.baseline)
    job = open_job(cfg, directory, teacher, meta, load_bundle(cfg), device, "fidelity", "fidelity",
                   header={"note": "bench_quality proxy-fidelity plans"})  # as in the committed results
    for index, item in enumerate(scored["plans"]):
        if job.done(index):
            continue
        started = time.perf_counter()
        seed_everything(int(cfg.seed))
        row = job.run(gaprune.Plan.from_json(item["plan"]), index, predicted_macs=item["macs"])
        print(f"[bench] fidelity {name} plan {index}: MACs -{100 * row['macs_reduction']:.1f}%, test "
              f"{100 * row['test_acc']:.2f}% ({time.perf_counter() - started:.0f}s)", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        job.close()
    return job.rows


def correlations(scored: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    from scipy.stats import kendalltau, spearmanr

    done = {r["plan_id"]: r for r in rows}
    ids = [i for i in range(len(scored["plans"])) if i in done]
    acc = [done[i]["test_acc"] for i in ids]
    predictors = dict(scored["scores"])
    predictors["-MACs reduction (reference)"] = [-p["macs_reduction"] for p in scored["plans"]]
    out = {}
    for name, values in predictors.items():
        x = [values[i] for i in ids]
        if len(ids) < 3 or len(set(x)) < 2 or len(set(acc)) < 2:
            continue
        tau, spear = kendalltau(x, acc), spearmanr(x, acc)
        out[name] = {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
                     "spearman": float(spear.statistic), "spearman_p": float(spear.pvalue), "n": len(ids)}
    return out

