"""scripts/oneshot.py's job: baseline checkpoint (trained if missing) -> one-shot plan by the
`oneshot` pruner -> the same prune / fine-tune / evaluate / table routine as finetune.py
(`gaprune.engine.finetune.FinetuneJob`), into a run dir under outputs/oneshot/."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gaprune.engine.compute import Compute, counting
from gaprune.oneshot import OneshotContext, Pruner, build_pruner
from gaprune.pipeline.finetune import open_job, stopped_cleanly
from gaprune.pipeline.records import check_states, fields
from gaprune.pipeline.setup import open_run, plain
from gaprune.pipeline.train import ensure_baseline
from gaprune.pruning.cost import CostModel
from gaprune.pruning.plan import Plan, plan_from_json
from gaprune.utils.errors import GapruneError, Interrupted
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
    weights = read_torch_file(directory / WEIGHTS, "fine-tune weights", "delete it to restart that plan") \
        if (directory / WEIGHTS).exists() else None
    return plan, Compute.from_json(info.get("compute_macs_by_phase")), weights


@releasing
def run_oneshot(cfg: DictConfig) -> dict[str, Any]:
    pruner = pruner_from_config(cfg)
    name = str(cfg.oneshot.name)
    run = open_run(cfg, (PLAN,), "oneshot")
    directory, device, bundle = run.directory, run.device, run.bundle
    resumed = saved_plan(directory) if run.resuming else None
    if type(pruner).check_model is not Pruner.check_model:  # refuse before a baseline is trained
        pruner.check_model(run.build_untrained())
    ensure_baseline(cfg, run.directory)
    teacher = run.reference()
    baseline_path, meta, x0, units = run.baseline_path, run.meta, run.x0, run.units
    job = open_job(cfg, directory, teacher, meta, bundle, device, "oneshot", name,
                   header={"oneshot": name, "options": pruner.options(),
                           "checkpoint": str(Path(baseline_path).resolve())}, units=units)
    teacher = job.teacher
    label = pruner.label()

    if resumed is not None:
        plan, spent, weights = resumed
        print(f"resuming one-shot run {directory} ({name}, plan from {PLAN})")
    else:
        spent = Compute()
        ctx = OneshotContext(model=teacher, units=units, example_input=x0, bundle=bundle, device=device,
                             seed=int(cfg.seed), cache_dir=Path(cfg.paths.checkpoints) / "cache",
                             checkpoint=Path(baseline_path), finetune=job.short_finetune, compute=spent)
        try:
            with counting(teacher, meta["macs"], spent, "importance"):  # every pass of the baseline finding the plan
                result = pruner.run(ctx)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted while {name} was finding its plan (nothing saved yet); start the run "
                              "again") from None
        plan, weights = result.plan, result.weights
        write_json(directory / PLAN, plan.to_json())
        if weights is not None:
            atomic_torch_save(weights, directory / WEIGHTS)
        write_json(directory / "oneshot.json", {"oneshot": name, "label": label, "kind": pruner.kind,
                                                "target": pruner.target, "options": pruner.options(),
                                                "info": result.info, "compute_macs": spent.total,
                                                "compute_macs_by_phase": spent.to_json()})
    predicted = None
    if isinstance(plan, Plan):
        cost = CostModel(teacher, units, x0)
        predicted = cost.cost(plan)[0]
        print(f"{name} [{label}]: {1 - predicted / cost.base_macs:.1%} fewer MACs "
              f"(target {pruner.target:.1%}), keep counts {plan.keep_counts()}")
    else:
        print(f"{name} [{label}]: sparsity {plan.sparsity():.2%} (target {pruner.target:.2%}), "
              f"layer densities {', '.join(f'{d:.3f}' for d in plan.densities())}")
    if not job.done(label):
        with stopped_cleanly(directory, directory):
            job.run(plan, label, predicted_macs=predicted, start_weights=weights, spent=spent)
    job.close()
    return {"run_dir": str(Path(directory).resolve()), "oneshot": name, "rows": job.rows}
