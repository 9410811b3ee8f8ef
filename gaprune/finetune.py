"""finetune.py's job: pick plans from a search run, physically prune the baseline with
torch-pruning, fine-tune with KD from the unpruned baseline, and tabulate the results.

The "prune -> fine-tune (KD or CE) -> evaluate -> save checkpoint -> results row/table" routine
(`FinetuneJob`) is shared with the one-shot baselines (`gaprune.baselines`), so search picks and
baselines are fine-tuned by the same recipe and tabulated in the same format. It takes channel
plans (`Plan`: physical pruning) and weight-mask plans (`SparsePlan`: masks re-applied after
every optimizer step, effective MACs/params from `SparseCostModel`, a `sparsity` column)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig

from gaprune.baseline import train_config
from gaprune.checkpoint import example_input, load_model, save_checkpoint
from gaprune.errors import GapruneError
from gaprune.io import atomic_write_text, read_json, write_csv, write_json
from gaprune.picks import PICKS, pick_plans
from gaprune.plan import Plan
from gaprune.runtime import load_bundle, loader, make_logger, run_dir
from gaprune.sparsity import SparseCostModel, SparsePlan, apply_masks_permanently, plan_from_json
from gaprune.tracking import RunLogger
from gaprune.training import evaluate, resolve_device, seed_everything, train, train_with_state
from gaprune.units import PrunableUnit, count_macs_params, discover_units, prune_model


def chosen_records(search_dir: Path, pick: str, target: float | None) -> list[dict[str, Any]]:
    """Records (with plans) for pick=knee|best|all|target_macs from a search run dir."""
    if pick not in PICKS:
        raise GapruneError(f"unknown pick '{pick}'; choose one of: {', '.join(PICKS)}")
    pareto_path = search_dir / "pareto.json"
    if not pareto_path.is_file():
        raise GapruneError(f"'{search_dir}' is not a finished search run (no pareto.json); run search.py first "
                           "or give search_dir=<a search run dir>")
    if pick == "best":  # the best score may lie off the proxy/MACs front
        return [read_json(search_dir / "best_plan.json")]
    return pick_plans(read_json(pareto_path), pick, target)


def resolve_search_dir(value: Any, output_root: Path) -> Path:
    """A finished search run dir; `latest` means the newest one under outputs/search."""
    if value in (None, "", "latest"):
        finished = sorted((p for p in (output_root / "search").rglob("search_summary.json")
                           if (p.parent / "pareto.json").is_file()), key=lambda p: p.stat().st_mtime)
        if not finished:
            raise GapruneError(f"no finished search run under '{output_root / 'search'}'; run search.py first "
                               "or give search_dir=<a search run dir>")
        return finished[-1].parent
    path = Path(str(value))
    if not (path / "search_summary.json").is_file():
        raise GapruneError(f"search_dir='{path}' is not a finished search run (no search_summary.json); "
                           "give the run dir that search.py printed")
    return path


def resume_dir(cfg: DictConfig) -> Path | None:
    """resume=<a finetune run dir> continues it (finished plans skipped, the current one from its last epoch)."""
    resume = cfg.get("resume")
    if resume in (None, False, "false"):
        return None
    path = Path(str(resume))
    if not path.is_dir():
        raise GapruneError(f"resume='{path}' is not a directory; give the finetune run dir to continue")
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown_table(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    """The results table; a `sparsity` column is added when a row is a weight-masked plan."""
    sparse = any(r.get("sparsity") is not None for r in rows)
    extra_head, extra_rule, extra_base = (" sparsity |", "---|", " - |") if sparse else ("", "", "")
    lines = ["| plan | pick | search proxy | val acc | test acc | Δ test acc | MACs | MACs red. | params | params red. |"
             + extra_head,
             "|---|---|---|---|---|---|---|---|---|---|" + extra_rule,
             f"| baseline | - | - | {100 * baseline['val_acc']:.2f} | {100 * baseline['test_acc']:.2f} | - | "
             f"{baseline['macs'] / 1e6:.2f}M | - | {baseline['params'] / 1e6:.3f}M | - |" + extra_base]
    for r in rows:
        proxy = "-" if r.get("search_proxy") is None else f"{r['search_proxy']:.4f}"
        lines.append(f"| {r['plan_id']} | {r['pick']} | {proxy} | {100 * r['val_acc']:.2f} | "
                     f"{100 * r['test_acc']:.2f} | {100 * r['test_acc_delta']:+.2f} | {r['macs'] / 1e6:.2f}M | "
                     f"{100 * r['macs_reduction']:.1f}% | {r['params'] / 1e6:.3f}M | {100 * r['params_reduction']:.1f}% |"
                     + (f" {_pct(r.get('sparsity'))} |" if sparse else ""))
    return "\n".join(lines) + "\n"


def mask_keeper(model: nn.Module, masks: dict[str, torch.Tensor], device) -> Callable[[], None]:
    """An `after_step` hook that keeps masked-out weights at zero (masks moved to the device once)."""
    on_device = {name: mask.to(device) for name, mask in masks.items()}
    return lambda: apply_masks_permanently(model, on_device)


@dataclass
class FinetuneJob:
    """One results table: the teacher (unpruned baseline), the data, the recipe (`cfg.finetune`),
    the run dir and the rows finished so far (read back from results.json when resuming)."""

    cfg: DictConfig
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

    @classmethod
    def open(cls, cfg: DictConfig, directory: Path, teacher: nn.Module, meta: dict[str, Any], bundle, device,
             job_type: str, pick: str, header: dict[str, Any] | None = None,
             units: Sequence[PrunableUnit] | None = None) -> "FinetuneJob":
        x0 = example_input(meta)
        if units is None:
            units = discover_units(teacher, x0, include_linear=meta["model"].get("include_linear", False))
        ft = cfg.finetune
        train_batches = loader(bundle, "train", ft.batch_size, device, cfg.seed, train=True, augment=cfg.dataset.augment)
        val_batches = loader(bundle, "val", ft.eval_batch_size, device)
        test_batches = loader(bundle, "test", ft.eval_batch_size, device)
        teacher = teacher.to(device)
        logger = make_logger(cfg, directory, job_type)
        done = read_json(directory / "results.json")["results"] if (directory / "results.json").is_file() else []
        return cls(cfg, directory, teacher, meta, list(units), x0, device, train_batches, val_batches, test_batches,
                   logger, pick, dict(header or {}), [r for r in done if r["pick"] == pick])

    @property
    def baseline(self) -> dict[str, Any]:
        meta = self.meta
        return {"val_acc": meta["val_acc"], "test_acc": meta["test_acc"], "macs": meta["macs"], "params": meta["params"]}

    def done(self, plan_id: Any) -> bool:
        """Finished before an interruption (its row is in results.json)."""
        return any(r["plan_id"] == plan_id for r in self.rows)

    def short_finetune(self, model: nn.Module, masks: dict[str, torch.Tensor] | None, epochs: int) -> None:
        """A few epochs of the same recipe (KD or CE) with masks kept applied, no state files."""
        config = train_config(self.cfg.finetune)
        config.epochs = int(epochs)
        model.to(self.device)
        train(model, self.train_batches, self.val_batches, config, teacher=self.teacher if self.cfg.finetune.kd else None,
              desc="step finetune", after_step=mask_keeper(model, masks, self.device) if masks else None)

    def run(self, plan: Plan | SparsePlan, plan_id: Any, search_proxy: float | None = None,
            predicted_macs: int | None = None, start_weights: dict[str, torch.Tensor] | None = None,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Prune (physically, or by masks) -> fine-tune -> evaluate -> save pruned-<pick>-<id>.pt -> add a row."""
        ft, meta, directory, tag = self.cfg.finetune, self.meta, self.directory, f"{self.pick}-{plan_id}"
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
        history = train_with_state(student, self.train_batches, self.val_batches, train_config(ft),
                                   directory / f"state-{tag}.pt", teacher=self.teacher if ft.kd else None,
                                   on_epoch=lambda row: self.logger.log({f"plan{plan_id}/{k}": v for k, v in row.items()}),
                                   desc=f"finetune plan {plan_id}", after_step=after_step)
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
        row.update({"predicted_macs": macs if predicted_macs is None else predicted_macs, "epochs": len(history),
                    "kd": bool(ft.kd), **(extra or {})})
        save_checkpoint(directory / f"pruned-{tag}.pt", copy.deepcopy(student).cpu(), ck_meta, plan=plan)
        self.rows.append(row)
        write_json(directory / "results.json", {"baseline": self.baseline, "results": self.rows, **self.header})
        write_csv(directory / "results.csv", self.rows)
        (directory / f"state-{tag}.pt").unlink(missing_ok=True)
        return row

    def close(self, summary_keys: Sequence[str] = ("test_acc", "macs_reduction")) -> str:
        """Write results.md, close the logger, print and return the table."""
        table = markdown_table(self.rows, self.baseline)
        atomic_write_text(self.directory / "results.md", table)
        self.logger.summary({k: self.rows[0][k] for k in summary_keys if k in self.rows[0]} if self.rows else {})
        self.logger.finish()
        print(table)
        return table


def run_finetune(cfg: DictConfig, search_dir: Path | None = None, directory: Path | None = None) -> list[dict[str, Any]]:
    search_dir = resolve_search_dir(search_dir or cfg.get("search_dir"), Path(cfg.paths.output_root))
    directory = directory or resume_dir(cfg) or run_dir()
    summary = read_json(search_dir / "search_summary.json")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    teacher, meta, _ = load_model(summary["baseline"])
    if meta["data"]["name"] != cfg.dataset.name:
        raise GapruneError(f"search run used dataset {meta['data']['name']} but dataset={cfg.dataset.name}; "
                           f"pass dataset={meta['data']['name']}")
    bundle = load_bundle(cfg)
    job = FinetuneJob.open(cfg, directory, teacher, meta, bundle, device, "finetune", cfg.pick,
                           header={"search_dir": str(search_dir.resolve())})
    for record in chosen_records(search_dir, cfg.pick, cfg.objective.target_macs_reduction):
        if job.done(record["id"]):
            continue  # finished before an interruption
        job.run(plan_from_json(record["plan"]), record["id"], search_proxy=record["proxy"],
                predicted_macs=record["macs"])
    job.close()
    return job.rows
