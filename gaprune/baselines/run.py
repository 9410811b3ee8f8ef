"""scripts/baseline.py's job: baseline checkpoint (trained if missing) -> one-shot plan by
`method` -> the same prune / fine-tune / evaluate / table routine as finetune.py
(`gaprune.finetune.FinetuneJob`), into a run dir under outputs/baseline/."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gaprune.baseline import prepare_baseline
from gaprune.baselines.base import BaselineContext, Method, build_method
from gaprune.checkpoint import example_input
from gaprune.cost import CostModel
from gaprune.errors import GapruneError
from gaprune.finetune import FinetuneJob
from gaprune.io import atomic_torch_save, read_json, read_torch_state, write_json
from gaprune.models import build_model
from gaprune.plan import Plan
from gaprune.runtime import load_bundle, model_spec, plain, resume_run_dir, run_dir
from gaprune.sparsity import SparsePlan, plan_from_json
from gaprune.training import resolve_device, seed_everything
from gaprune.units import discover_units

PLAN = "plan.json"
WEIGHTS = "start-weights.pt"


def method_from_config(cfg: DictConfig) -> Method:
    """The configured method, every option checked (one clear line on a bad one)."""
    section = cfg.method
    if section is None or not section.get("name"):
        raise GapruneError("no method given; pass method=<name>, e.g. method=global_taylor")
    return build_method(str(section.name), target_macs_reduction=cfg.get("target_macs_reduction"),
                        target_sparsity=cfg.get("target_sparsity"), **(plain(section.get("params")) or {}))


def read_plan(path: Path) -> Plan | SparsePlan:
    return plan_from_json(read_json(path))


def run_baseline(cfg: DictConfig) -> dict[str, Any]:
    method = method_from_config(cfg)
    directory, resumed = resume_run_dir(cfg, run_dir(), PLAN, "baseline")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    bundle = load_bundle(cfg)
    if type(method).check_model is not Method.check_model:  # refuse before a baseline is trained
        spec = model_spec(cfg)
        method.check_model(build_model(spec["name"], bundle.num_classes, bundle.in_channels, bundle.image_size,
                                       **spec["kwargs"]))
    baseline_path, teacher, meta = prepare_baseline(cfg, directory)
    x0 = example_input(meta)
    units = discover_units(teacher, x0, include_linear=meta["model"].get("include_linear", False))
    job = FinetuneJob.open(cfg, directory, teacher, meta, bundle, device, "baseline", str(cfg.method.name),
                           header={"method": str(cfg.method.name), "options": method.options(),
                                   "checkpoint": str(Path(baseline_path).resolve())}, units=units)
    teacher = job.teacher
    label = method.label()

    weights = None
    if resumed:
        plan = read_plan(directory / PLAN)
        if (directory / WEIGHTS).is_file():
            weights = read_torch_state(directory / WEIGHTS, "fine-tune weights", "delete it to restart that plan")
        print(f"resuming baseline run {directory} ({cfg.method.name}, plan from {PLAN})")
    else:
        ctx = BaselineContext(model=teacher, units=units, example_input=x0, bundle=bundle, device=device,
                              seed=int(cfg.seed), cache_dir=Path(cfg.paths.checkpoints) / "cache",
                              checkpoint=Path(baseline_path), finetune=job.short_finetune)
        result = method.run(ctx)
        plan, weights = result.plan, result.weights
        write_json(directory / PLAN, plan.to_json())
        if weights is not None:
            atomic_torch_save(weights, directory / WEIGHTS)
        write_json(directory / "method.json", {"method": str(cfg.method.name), "label": label, "kind": method.kind,
                                               "target": method.target, "options": method.options(),
                                               "info": result.info})
    predicted = None
    if isinstance(plan, Plan):
        cost = CostModel(teacher, units, x0)
        predicted = cost.cost(plan)[0]
        print(f"{cfg.method.name} [{label}]: {1 - predicted / cost.base_macs:.1%} fewer MACs "
              f"(target {method.target:.1%}), keep counts {plan.keep_counts()}")
    else:
        print(f"{cfg.method.name} [{label}]: sparsity {plan.sparsity():.2%} (target {method.target:.2%}), "
              f"layer densities {', '.join(f'{d:.3f}' for d in plan.densities())}")
    if not job.done(label):
        job.run(plan, label, predicted_macs=predicted, start_weights=weights)
    job.close()
    return {"run_dir": str(Path(directory).resolve()), "method": str(cfg.method.name), "rows": job.rows}
