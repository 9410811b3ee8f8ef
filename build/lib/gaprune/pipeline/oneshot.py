"""scripts/oneshot.py's job: baseline checkpoint (trained if missing) -> one-shot plan by the
`oneshot` pruner -> the same prune / fine-tune / evaluate / table routine as finetune.py
(`gaprune.engine.finetune.FinetuneJob`), into a run dir under outputs/oneshot/."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gaprune.engine.compute import Compute, counting
from gaprune.engine.finetune import FinetuneJob
from gaprune.oneshot import OneshotContext, Pruner, build_pruner
from gaprune.pipeline.finetune import finetune_progress, open_job
from gaprune.pipeline.lifecycle import JobRun, job_run
from gaprune.pipeline.records import check_states, fields
from gaprune.pipeline.setup import Run, plain
from gaprune.pipeline.train import ensure_baseline
from gaprune.pruning.cost import CostModel
from gaprune.pruning.plan import Plan, plan_from_json
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import atomic_torch_save, read_record, read_torch_file, write_json
from gaprune.utils.lock import releasing

PLAN = "plan.json"
WEIGHTS = "start-weights.pt"


def pruner_from_config(cfg: DictConfig) -> Pruner:
    """The configured one-shot pruner, every option checked (one clear line on a bad one)."""
    section = cfg.get("oneshot")
    if section is None or not section.get("name"):
        raise GapruneError("no one-shot pruner given; pass oneshot=<name>, e.g. oneshot=global_taylor")
    return build_pruner(str(section.name), target_macs_reduction=cfg.get("target_macs_reduction"),
                        target_sparsity=cfg.get("target_sparsity"), **(plain(section.get("params")) or {}))


def plan_shape(value: Any) -> str | None:
    if not isinstance(value, dict) or not ("units" in value or "layers" in value):
        return "not a plan (no units or layers)"
    return None


def saved_plan(directory: Path) -> tuple[Plan | Any, Compute, Any]:
    """(plan, what finding it cost, start weights or None) of a one-shot run dir being resumed; a
    damaged file there is one line, before any work."""
    fix = "start a new run (resume cannot continue this one)"
    plan = plan_from_json(read_record(directory / PLAN, "one-shot plan", fix, plan_shape))
    info = read_record(directory / "oneshot.json", "one-shot record", fix, fields(("oneshot",))) \
        if (directory / "oneshot.json").exists() else {}
    check_states(directory)
    weights = read_torch_file(directory / WEIGHTS, "fine-tune weights", fix) \
        if (directory / WEIGHTS).exists() else None
    return plan, Compute.from_json(info.get("compute_macs_by_phase")), weights


@releasing
def run_oneshot(cfg: DictConfig) -> dict[str, Any]:
    """scripts/oneshot.py: find the `oneshot` pruner's plan (saved in the run dir; a resumed run
    reuses it), then prune, fine-tune and tabulate it.

    Args:
        cfg: the oneshot.yaml config.

    Returns:
        The run dir, the pruner's name and the results rows.
    """
    pruner = pruner_from_config(cfg)
    name = str(cfg.oneshot.name)
    with job_run(cfg, "oneshot", (PLAN,), "oneshot") as job:
        run, directory = job.run, job.directory
        resumed = saved_plan(directory) if run.resuming else None
        if type(pruner).check_model is not Pruner.check_model:  # refuse before a baseline is trained
            pruner.check_model(run.build_untrained())
        ensure_baseline(cfg, directory)
        teacher = run.reference()
        tuning = open_job(cfg, directory, teacher, run.meta, run.bundle, run.device, "oneshot", name,
                          header={"oneshot": name, "options": pruner.options(),
                                  "checkpoint": str(Path(run.baseline_path).resolve())}, units=run.units,
                          logger=job.logger)
        if resumed is not None:
            plan, spent, weights = resumed
            print(f"resuming one-shot run {directory} ({name}, plan from {PLAN})")
        else:
            plan, spent, weights = find_plan(job, pruner, tuning)
        predicted = describe_plan(name, pruner, plan, tuning.teacher, run)
        job.report(lambda: finetune_progress(directory))
        if not tuning.done(pruner.label()):
            tuning.run(plan, pruner.label(), predicted_macs=predicted, start_weights=weights, spent=spent)
        tuning.close()
    return {"run_dir": str(Path(directory).resolve()), "oneshot": name, "rows": tuning.rows}


def find_plan(job: JobRun, pruner: Pruner, tuning: FinetuneJob) -> tuple[Plan | Any, Compute, Any]:
    """Run the pruner on the job's baseline (every pass of it counted as `importance` compute)
    and save what it found: plan.json, its start weights (when it has them) and oneshot.json.
    Returns (plan, its compute, start weights or None)."""
    cfg, run, name = job.cfg, job.run, str(job.cfg.oneshot.name)
    spent = Compute()
    ctx = OneshotContext(model=tuning.teacher, units=run.units, example_input=run.x0, bundle=run.bundle,
                         device=run.device, seed=int(cfg.seed), cache_dir=Path(cfg.paths.checkpoints) / "cache",
                         checkpoint=Path(run.baseline_path), finetune=tuning.short_finetune, compute=spent)
    job.report(f"while {name} was finding its plan (nothing saved yet)", "start the run again")
    with counting(tuning.teacher, run.meta["macs"], spent, "importance"):  # every pass of the baseline finding the plan
        result = pruner.run(ctx)
    plan, weights = result.plan, result.weights
    write_json(job.directory / PLAN, plan.to_json())
    if weights is not None:
        atomic_torch_save(weights, job.directory / WEIGHTS)
    write_json(job.directory / "oneshot.json", {"oneshot": name, "label": pruner.label(), "kind": pruner.kind,
                                                "target": pruner.target, "options": pruner.options(),
                                                "info": result.info, "compute_macs": spent.total,
                                                "compute_macs_by_phase": spent.to_json()})
    return plan, spent, weights


def describe_plan(name: str, pruner: Pruner, plan: Plan | Any, teacher, run: Run) -> float | None:
    """Print what the plan prunes (MACs against the target, keep counts; or sparsity and layer
    densities for a weight-mask plan). Returns its predicted MACs (None for weight masks)."""
    label = pruner.label()
    if isinstance(plan, Plan):
        cost = CostModel(teacher, run.units, run.x0)
        predicted = cost.cost(plan)[0]
        print(f"{name} [{label}]: {1 - predicted / cost.base_macs:.1%} fewer MACs "
              f"(target {pruner.target:.1%}), keep counts {plan.keep_counts()}")
        return predicted
    print(f"{name} [{label}]: sparsity {plan.sparsity():.2%} (target {pruner.target:.2%}), "
          f"layer densities {', '.join(f'{d:.3f}' for d in plan.densities())}")
    return None
