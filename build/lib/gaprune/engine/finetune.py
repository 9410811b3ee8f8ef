"""The prune -> fine-tune (KD or CE) -> evaluate -> save checkpoint -> results row/table routine
(`FinetuneJob`), shared by finetune.py, search.py's `then_finetune` and the one-shot pruners, so
search picks and one-shot plans are fine-tuned by the same recipe and tabulated in the same
format. It takes channel plans (`Plan`: physical pruning) and weight-mask plans (`SparsePlan`:
masks re-applied after every optimizer step, effective MACs/params from `SparseCostModel`, a
`sparsity` column). With `latency` settings, the teacher is timed once per job and every
pruned student after fine-tuning, on the job's device (`gaprune.deploy.latency`): batch and
throughput-batch latency, threads, and the speedup over the teacher as a ratio (table columns
`latency`, `speedup`, `img/s`, `speedup@b`). Reads no config: the pipeline hands it the recipe
and the loaders."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from gaprune.deploy.latency import LatencySettings, latency_fields, speedup_fields
from gaprune.engine.compute import Compute, format_macs, forward_macs, training_macs
from gaprune.engine.checkpoint import save_checkpoint
from gaprune.engine.training import TrainConfig, evaluate, train, train_with_state
from gaprune.pruning.cost import SparseCostModel
from gaprune.pruning.masking import apply_masks_permanently
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.pruning.units import PrunableUnit
from gaprune.utils.io import atomic_write_text, write_csv, write_json
from gaprune.utils.tracking import RunLogger


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _speedup(value: float) -> str:
    """A speedup, flagged when the pruned model measured slower than the baseline."""
    return f"{value:.2f}x" + (" (slower)" if value < 1.0 else "")


def _latency_cells(r: dict[str, Any], base: bool) -> str:
    """Latency (± half the range of its timed blocks: the machine's noise), speedups, throughput."""
    if r.get("latency_ms") is None:
        return " - | - | - | - |"
    speedup, throughput_speedup = ("-", "-") if base else (_speedup(r["speedup"]), _speedup(r["throughput_speedup"]))
    spread = f" ±{50 * r['latency_spread']:.0f}%" if r.get("latency_spread") is not None else ""
    return f" {r['latency_ms']:.3f} ms{spread} | {speedup} | {r['throughput']:.0f} | {throughput_speedup} |"


def markdown_table(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    """The results table; a `sparsity` column is added when a row is a weight-masked plan, latency
    columns (batch latency, speedup, throughput-batch images/s, its speedup) when measured."""
    sparse = any(r.get("sparsity") is not None for r in rows)
    extra_head, extra_rule, extra_base = (" sparsity |", "---|", " - |") if sparse else ("", "", "")
    if baseline.get("latency_ms") is not None:
        extra_head += (f" latency b{baseline['latency_batch']} | speedup | img/s b{baseline['throughput_batch']} | "
                       f"speedup b{baseline['throughput_batch']} |")
        extra_rule += "---|---|---|---|"
        extra_base += _latency_cells(baseline, True)
    lines = ["| plan | pick | search proxy | val acc | test acc | Δ test acc | MACs | MACs red. | params | params red. "
             "| compute |" + extra_head,
             "|---|---|---|---|---|---|---|---|---|---|---|" + extra_rule,
             f"| baseline | - | - | {100 * baseline['val_acc']:.2f} | {100 * baseline['test_acc']:.2f} | - | "
             f"{baseline['macs'] / 1e6:.2f}M | - | {baseline['params'] / 1e6:.3f}M | - | - |" + extra_base]
    for r in rows:
        proxy = "-" if r.get("search_proxy") is None else f"{r['search_proxy']:.4f}"
        lines.append(f"| {r['plan_id']} | {r['pick']} | {proxy} | {100 * r['val_acc']:.2f} | "
                     f"{100 * r['test_acc']:.2f} | {100 * r['test_acc_delta']:+.2f} | {r['macs'] / 1e6:.2f}M | "
                     f"{100 * r['macs_reduction']:.1f}% | {r['params'] / 1e6:.3f}M | {100 * r['params_reduction']:.1f}% | "
                     f"{format_macs(r.get('compute_macs'))} |"
                     + (f" {_pct(r.get('sparsity'))} |" if sparse else "")
                     + (_latency_cells(r, False) if baseline.get("latency_ms") is not None else ""))
    return "\n".join(lines) + "\n"


def mask_keeper(model: nn.Module, masks: dict[str, torch.Tensor], device) -> Callable[[], None]:
    """An `after_step` hook that keeps masked-out weights at zero (masks moved to the device once)."""
    on_device = {name: mask.to(device) for name, mask in masks.items()}
    return lambda: apply_masks_permanently(model, on_device)


@dataclass
class FinetuneJob:
    """One results table: the teacher (the unpruned baseline), the data, the recipe (`recipe`, KD
    from the teacher when `kd`), the run dir and the rows finished so far (read back from
    results.json when resuming). `gaprune.pipeline.finetune.open_job` builds it from a config."""

    recipe: TrainConfig
    kd: bool
    directory: Path
    teacher: nn.Module
    meta: dict[str, Any]
    units: Sequence[PrunableUnit]
    x0: torch.Tensor
    device: torch.device
    train_batches: Any
    val_batches: Any
    test_batches: Any
    logger: RunLogger
    pick: str
    header: dict[str, Any] = field(default_factory=dict)  # extra keys of results.json (search_dir, method)
    rows: list[dict[str, Any]] = field(default_factory=list)
    latency: LatencySettings | None = None  # None: no latency columns
    teacher_latency: dict[str, Any] | None = None  # measured once per job, on first use

    @property
    def baseline(self) -> dict[str, Any]:
        meta = self.meta
        return {"val_acc": meta["val_acc"], "test_acc": meta["test_acc"], "macs": meta["macs"], "params": meta["params"],
                **(self.teacher_latency or {})}

    def measure_teacher(self) -> dict[str, Any] | None:
        """The teacher's latency fields (measured on the first call of a job, then reused)."""
        if self.latency is not None and self.teacher_latency is None:
            self.teacher_latency = latency_fields(self.teacher, self.x0, self.device, self.latency)
        return self.teacher_latency

    def done(self, plan_id: Any) -> bool:
        """Finished before an interruption (its row is in results.json)."""
        return any(r["plan_id"] == plan_id for r in self.rows)

    def short_finetune(self, model: nn.Module, masks: dict[str, torch.Tensor] | None, epochs: int) -> None:
        """A few epochs of the same recipe (KD or CE) with masks kept applied, no state files."""
        config = replace(self.recipe, epochs=int(epochs))
        model.to(self.device)
        train(model, self.train_batches, self.val_batches, config, teacher=self.teacher if self.kd else None,
              desc="step finetune", after_step=mask_keeper(model, masks, self.device) if masks else None)

    def run(self, plan: Plan | SparsePlan, plan_id: Any, search_proxy: float | None = None,
            predicted_macs: int | None = None, start_weights: dict[str, torch.Tensor] | None = None,
            extra: dict[str, Any] | None = None, spent: Compute | None = None,
            warm_start: dict[str, Any] | None = None) -> dict[str, Any]:
        """Prune (physically, or by masks) -> fine-tune -> evaluate -> save pruned-<pick>-<id>.pt -> add a row.

        Args:
            spent: what finding the plan cost (search or one-shot phases); the row's
                `compute_macs` is it plus this fine-tune (`gaprune.engine.compute`).
            warm_start: a finalist's fine-tune state to continue from (`train_with_state`)."""
        meta, directory, tag = self.meta, self.directory, f"{self.pick}-{plan_id}"
        sparse = isinstance(plan, SparsePlan)
        if sparse:
            student = copy.deepcopy(self.teacher).cpu()
            if start_weights is not None:
                student.load_state_dict(start_weights)
            apply_masks_permanently(student, plan.masks)
            macs, params = SparseCostModel(student, list(plan.masks), self.x0).cost(plan)
        else:
            student = prune_model(self.teacher.cpu(), self.units, plan, self.x0)
            macs, params = count_macs_params(student, self.x0)
        self.teacher.to(self.device)
        student.to(self.device)
        after_step = mask_keeper(student, plan.masks, self.device) if sparse else None
        before = evaluate(student, self.val_batches)
        history = train_with_state(student, self.train_batches, self.val_batches, replace(self.recipe),
                                   directory / f"state-{tag}.pt", teacher=self.teacher if self.kd else None,
                                   on_epoch=lambda row: self.logger.log({f"plan{plan_id}/{k}": v for k, v in row.items()}),
                                   desc=f"finetune plan {plan_id}", after_step=after_step, warm_start=warm_start)
        compute = (spent or Compute()) + self.finetune_compute(macs, before["images"], history)
        val, test = evaluate(student, self.val_batches), evaluate(student, self.test_batches)
        ck_meta = {**meta, "val_acc": val["acc"], "test_acc": test["acc"], "macs": macs, "params": params}
        row = {
            "plan_id": plan_id, "pick": self.pick, "search_proxy": search_proxy,
            "val_acc_before_finetune": before["acc"], "val_acc": val["acc"], "test_acc": test["acc"],
            "test_acc_delta": test["acc"] - meta["test_acc"], "macs": macs, "params": params,
            "macs_reduction": 1 - macs / meta["macs"], "params_reduction": 1 - params / meta["params"],
        }
        if sparse:
            row["sparsity"] = ck_meta["sparsity"] = plan.sparsity()
        if self.measure_teacher() is not None:
            timing = latency_fields(student, self.x0, self.device, self.latency)
            row.update({**timing, **speedup_fields(timing, self.teacher_latency)})
        row.update({"predicted_macs": macs if predicted_macs is None else predicted_macs, "epochs": len(history),
                    "steps": sum(r["steps"] for r in history) + (int(warm_start["steps"]) if warm_start else 0),
                    "kd": bool(self.kd), "compute_macs": compute.total, "compute_macs_by_phase": compute.to_json(),
                    **(extra or {})})
        save_checkpoint(directory / f"pruned-{tag}.pt", copy.deepcopy(student).cpu(), ck_meta, plan=plan)
        self.logger.artifact(directory / f"pruned-{tag}.pt")
        self.rows.append(row)
        write_json(directory / "results.json", {"baseline": self.baseline, "results": self.rows, **self.header})
        write_csv(directory / "results.csv", self.rows)
        (directory / f"state-{tag}.pt").unlink(missing_ok=True)
        return row

    def finetune_compute(self, student_macs: float, before_images: int, history: Sequence[dict[str, Any]]) -> Compute:
        """The fine-tune's MACs: the student's training and validation passes (the evaluation
        before training included), the KD teacher's forwards."""
        teacher_macs = self.meta["macs"] if self.kd else 0.0
        compute = Compute()
        compute.add("finetune", forward_macs(before_images + sum(r["eval_images"] for r in history), student_macs))
        compute.add("finetune", training_macs(sum(r["train_images"] for r in history), student_macs, teacher_macs))
        return compute

    def close(self, summary_keys: Sequence[str] = ("test_acc", "macs_reduction")) -> str:
        """Write results.md, close the logger, print and return the table."""
        if self.rows and any("latency_ms" in r for r in self.rows):
            self.measure_teacher()  # rows finished before a resume: the teacher is timed again
        table = markdown_table(self.rows, self.baseline)
        atomic_write_text(self.directory / "results.md", table)
        self.logger.summary({k: self.rows[0][k] for k in summary_keys if k in self.rows[0]} if self.rows else {})
        self.logger.table("results", self.rows)
        self.logger.finish()
        print(table)
        return table
