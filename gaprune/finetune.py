"""finetune.py's job: pick plans from a search run, physically prune the baseline with
torch-pruning, fine-tune with KD from the unpruned baseline, and tabulate the results."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from gaprune.baseline import train_config
from gaprune.checkpoint import example_input, load_model, save_checkpoint
from gaprune.errors import GapruneError
from gaprune.io import atomic_torch_save, atomic_write_text, read_json, write_csv, write_json
from gaprune.picks import PICKS, knee
from gaprune.plan import Plan
from gaprune.runtime import load_bundle, loader, make_logger, run_dir
from gaprune.training import evaluate, make_optimizer, resolve_device, seed_everything, train
from gaprune.units import count_macs_params, discover_units, prune_model


def chosen_records(search_dir: Path, pick: str, target: float | None) -> list[dict[str, Any]]:
    """Records (with plans) for pick=knee|best|all|target_macs from a search run dir."""
    if pick not in PICKS:
        raise GapruneError(f"unknown pick '{pick}'; choose one of: {', '.join(PICKS)}")
    pareto_path = search_dir / "pareto.json"
    if not pareto_path.is_file():
        raise GapruneError(f"'{search_dir}' is not a finished search run (no pareto.json); run search.py first "
                           "or give search_dir=<a search run dir>")
    front = read_json(pareto_path)
    if pick == "knee":
        return [knee(front)]
    if pick == "best":
        return [read_json(search_dir / "best_plan.json")]
    if pick == "all":
        return front
    if target is None:
        raise GapruneError("pick=target_macs needs objective.target_macs_reduction=<fraction>, e.g. 0.7")
    eligible = [r for r in front if r["macs_reduction"] >= target]
    if not eligible:
        raise GapruneError(f"no Pareto plan reaches a {target:.0%} MACs reduction (best: "
                           f"{max(r['macs_reduction'] for r in front):.1%}); lower the target")
    return [max(eligible, key=lambda r: r["proxy"])]


def resolve_search_dir(value: Any, output_root: Path) -> Path:
    """A finished search run dir; `latest` means the newest one under outputs/search."""
    if value in (None, "", "latest"):
        finished = sorted((output_root / "search").rglob("search_summary.json"), key=lambda p: p.stat().st_mtime)
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


def markdown_table(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    lines = ["| plan | pick | search proxy | val acc | test acc | Δ test acc | MACs | MACs red. | params | params red. |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| baseline | - | - | {100 * baseline['val_acc']:.2f} | {100 * baseline['test_acc']:.2f} | - | "
             f"{baseline['macs'] / 1e6:.2f}M | - | {baseline['params'] / 1e6:.3f}M | - |"]
    for r in rows:
        lines.append(f"| {r['plan_id']} | {r['pick']} | {r['search_proxy']:.4f} | {100 * r['val_acc']:.2f} | "
                     f"{100 * r['test_acc']:.2f} | {100 * r['test_acc_delta']:+.2f} | {r['macs'] / 1e6:.2f}M | "
                     f"{100 * r['macs_reduction']:.1f}% | {r['params'] / 1e6:.3f}M | {100 * r['params_reduction']:.1f}% |")
    return "\n".join(lines) + "\n"


def finetune_with_state(student, teacher, train_batches, val_batches, config, state_path: Path, logger,
                        plan_id: int) -> list[dict[str, Any]]:
    """Fine-tune, saving model/optimizer/RNG state each epoch; continue from `state_path` if present."""
    optimizer, scheduler = make_optimizer(student, config)
    history: list[dict[str, Any]] = []
    if state_path.is_file():
        state = read_checkpoint_state(state_path)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history = list(state["history"])
        print(f"resuming fine-tune of plan {plan_id} after epoch {len(history)}")
    train_batches.set_epoch(len(history))

    def save(row: dict[str, Any]) -> None:
        history.append(row)
        atomic_torch_save({"model": student.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "history": history},
                          state_path)
        logger.log({f"plan{plan_id}/{k}": v for k, v in row.items()})

    train(student, train_batches, val_batches, config, teacher=teacher, on_epoch=save, desc=f"finetune plan {plan_id}",
          start_epoch=len(history), optimizer_state=(optimizer, scheduler))
    return history


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GapruneError(f"fine-tune state '{path}' is unreadable ({type(err).__name__}); delete it to restart that plan") from None


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
    x0 = example_input(meta)
    units = discover_units(teacher, x0, include_linear=meta["model"].get("include_linear", False))
    ft = cfg.finetune
    train_batches = loader(bundle, "train", ft.batch_size, device, cfg.seed, train=True, augment=cfg.dataset.augment)
    val_batches = loader(bundle, "val", ft.eval_batch_size, device)
    test_batches = loader(bundle, "test", ft.eval_batch_size, device)
    teacher = teacher.to(device)
    baseline = {"val_acc": meta["val_acc"], "test_acc": meta["test_acc"], "macs": meta["macs"], "params": meta["params"]}
    logger = make_logger(cfg, directory, "finetune")
    done = read_json(directory / "results.json")["results"] if (directory / "results.json").is_file() else []
    rows = [r for r in done if r["pick"] == cfg.pick]
    for record in chosen_records(search_dir, cfg.pick, cfg.objective.target_macs_reduction):
        if any(r["plan_id"] == record["id"] for r in rows):
            continue  # finished before an interruption
        plan = Plan.from_json(record["plan"])
        student = prune_model(teacher.cpu(), units, plan, x0)
        macs, params = count_macs_params(student, x0)
        teacher.to(device)
        student.to(device)
        before = evaluate(student, val_batches)
        history = finetune_with_state(student, teacher if ft.kd else None, train_batches, val_batches, train_config(ft),
                                      directory / f"state-{cfg.pick}-{record['id']}.pt", logger, record["id"])
        val, test = evaluate(student, val_batches), evaluate(student, test_batches)
        save_checkpoint(directory / f"pruned-{cfg.pick}-{record['id']}.pt", copy.deepcopy(student).cpu(),
                        {**meta, "val_acc": val["acc"], "test_acc": test["acc"], "macs": macs, "params": params}, plan=plan)
        rows.append({
            "plan_id": record["id"], "pick": cfg.pick, "search_proxy": record["proxy"],
            "val_acc_before_finetune": before["acc"], "val_acc": val["acc"], "test_acc": test["acc"],
            "test_acc_delta": test["acc"] - meta["test_acc"], "macs": macs, "params": params,
            "macs_reduction": 1 - macs / meta["macs"], "params_reduction": 1 - params / meta["params"],
            "predicted_macs": record["macs"], "epochs": len(history), "kd": bool(ft.kd),
        })
        write_json(directory / "results.json", {"baseline": baseline, "results": rows, "search_dir": str(search_dir.resolve())})
        write_csv(directory / "results.csv", rows)
        (directory / f"state-{cfg.pick}-{record['id']}.pt").unlink(missing_ok=True)
    table = markdown_table(rows, baseline)
    atomic_write_text(directory / "results.md", table)
    logger.summary({"test_acc": rows[0]["test_acc"], "macs_reduction": rows[0]["macs_reduction"]} if rows else {})
    logger.finish()
    print(table)
    return rows
