"""search.py's job for searcher=layerwise_weight_mask (unstructured, one layer at a time): run dir
and resume, calibration data, optional retrain between layers, per-layer checkpoints
(layerwise_state.pt), tables (layers.json/csv, layer_results.json), plot, weight_masks.json,
masked_model.pt and search_summary.json. The per-layer GA is `gaprune.search.layerwise`.

Invariants: layerwise_state.pt is rewritten after every finished layer (its mask, results, rows
and the model's weights after it); resuming with the same layers and seed skips the finished
layers and ends with the masks and tables (timings aside) of the uninterrupted run."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig

from gaprune.data.loaders import capped
from gaprune.engine.checkpoint import load_model, save_checkpoint
from gaprune.engine.compute import Compute, forward_macs, training_macs
from gaprune.engine.training import evaluate, seed_everything, train
from gaprune.pipeline.finetune import open_job
from gaprune.pipeline.lifecycle import JobRun, job_run
from gaprune.pipeline.setup import Run, loader, plain, training_recipe, train_loader
from gaprune.pipeline.train import ensure_baseline
from gaprune.pruning.cost import SparseCostModel
from gaprune.pruning.masking import apply_masks_permanently, sparse_layers
from gaprune.search.layerwise import LayerwiseResult, WeightMaskConfig, layer_seed, resolve_layers, search_layers
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import atomic_torch_save, read_torch_dict, with_digest, write_csv, write_json
from gaprune.utils.plots import plot_layerwise

SEARCHER = "layerwise_weight_mask"
STATE = "layerwise_state.pt"
MODEL = "masked_model.pt"


def read_state(path: Path, layers: list[str], seed: int) -> dict[str, Any]:
    state = read_torch_dict(path, "layer-wise search state", "start a new run (resume cannot continue this one)",
                            ("layers", "seed", "masks", "results", "rows", "state_dict"))
    if state.get("layers") != layers or state.get("seed") != int(seed):
        raise GapruneError(f"resume: '{path.parent}' searched layers {state.get('layers')} with seed {state.get('seed')}, "
                           f"not {layers} with seed {seed}; resume with the same searcher.params.layers and seed")
    return state


def run_layerwise_search(cfg: DictConfig) -> dict[str, Any]:
    """searcher=layerwise_weight_mask: search a weight mask per layer, save the masked model and
    its records (resuming after the last finished layer), then fine-tune it when `then_finetune`.

    Args:
        cfg: the search.py config.

    Returns:
        The summary written to search_summary.json (with the fine-tune's rows under "finetune").
    """
    config = WeightMaskConfig.from_params(plain(cfg.searcher.params))
    with job_run(cfg, "search", (STATE,), "layer-wise weight-mask search") as job:
        run, directory = job.run, job.directory
        ensure_baseline(cfg, directory)
        model = run.reference(units=False)
        layers = resolve_layers(model, config.layers, run.x0)
        cost = SparseCostModel(model, layers, run.x0)
        model.to(run.device)
        calib = list(loader(run.bundle, "val", config.batch_size, run.device, limit=config.calib_samples))
        baseline_calib = evaluate(model, calib)["acc"]
        done = resumed_layers(directory, model, layers, cfg.seed) if run.resuming else None
        seed_everything(cfg.seed)
        records = LayerRecords(job, model, layers, int(cfg.seed), config.generations + 1)
        records.finished(len(done.masks) if done else 0)
        started = time.perf_counter() - sum(r["seconds"] + r["retrain_seconds"] for r in (done.layers if done else []))
        result = search_layers(model, layers, calib, config, cfg.seed, retrain=layer_retrain(cfg, config, run, calib, layers),
                               done=done, on_generation=records.on_generation, on_layer=records.on_layer)
        seconds = time.perf_counter() - started
        records.write_tables(result)
        plan = result.plan()
        summary, out_meta = masked_outcome(run, model, config, layers, cost, calib, result, baseline_calib, seconds)
        write_json(directory / "weight_masks.json", plan.to_json())
        save_checkpoint(directory / MODEL, model.cpu(), out_meta)
        model.to(run.device)
        plot_layerwise(result.layers, result.rows, baseline_calib, directory / "layers.png")
        job.finish(summary, "search_summary.json")
    print(f"layer-wise weight-mask search done: {len(layers)} layers, sparsity {100 * plan.sparsity():.1f}% of their weights "
          f"({100 * summary['network_sparsity']:.1f}% of all conv/linear weights), sparse MACs "
          f"-{100 * summary['macs_reduction']:.1f}%, calib acc {baseline_calib:.4f} -> {summary['calib_acc']:.4f} "
          f"in {seconds:.1f}s -> {directory}")
    if cfg.get("then_finetune"):
        summary["finetune"] = finetune_masked(cfg, run, model, plan, summary["sparse_macs"],
                                              Compute.from_json(summary["compute_macs_by_phase"]))
    return summary


def resumed_layers(directory: Path, model: nn.Module, layers: list[str], seed: int) -> LayerwiseResult:
    """The finished layers of the run being resumed; `model` gets the weights saved after them."""
    state = read_state(directory / STATE, layers, seed)
    model.load_state_dict(state["state_dict"])
    done = LayerwiseResult(dict(state["masks"]), list(state["results"]), list(state["rows"]))
    print(f"resuming layer-wise weight-mask search in {directory}: {len(done.masks)}/{len(layers)} layers done")
    return done


class LayerRecords:
    """What the search leaves behind as it goes: a logger row per generation, and after every
    layer the tables and the state file (its mask, results, rows, the model's weights), then
    the job's interrupt line."""

    def __init__(self, job: JobRun, model: nn.Module, layers: list[str], seed: int, steps_per_layer: int) -> None:
        self.job, self.model, self.layers, self.seed, self.steps_per_layer = job, model, layers, seed, steps_per_layer
        self.logger = job.logger

    def finished(self, count: int) -> None:
        """`count` layers are saved: what Ctrl-C reports from now on."""
        self.job.report(f"after {count} of {len(self.layers)} layers",
                        None if count else "nothing to resume, start the search again")

    def on_generation(self, row: dict[str, Any]) -> None:
        self.logger.log({k: v for k, v in row.items() if k not in ("layer",)},
                        step=row["layer_index"] * self.steps_per_layer + row["generation"])

    def write_tables(self, result: LayerwiseResult) -> None:
        directory = self.job.directory
        write_json(directory / "layers.json", result.rows)
        write_csv(directory / "layers.csv", result.rows)
        write_json(directory / "layer_results.json", result.layers)

    def on_layer(self, result: LayerwiseResult) -> None:
        self.write_tables(result)
        atomic_torch_save(with_digest({  # its tensors' sha256, checked by read_state
            "layers": self.layers, "seed": self.seed, "masks": {k: v.cpu() for k, v in result.masks.items()},
            "results": result.layers, "rows": result.rows,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}), self.job.directory / STATE)
        self.finished(len(result.masks))
        last = result.layers[-1]
        print(f"layer {last['layer']}: sparsity {last['sparsity']:.3f} ({last['weights']} weights), calib acc "
              f"{last['acc_after_layer']:.4f}, {last['seconds'] + last['retrain_seconds']:.1f}s")


def layer_retrain(cfg: DictConfig, config: WeightMaskConfig, run: Run, calib: list, layers: list[str]):
    """The short retrain after each layer (`retrain_epochs` > 0; else None): the `trainer`
    recipe at `retrain_lr`, seeded batches per layer, the masks re-applied after every step."""
    if config.retrain_epochs <= 0:
        return None
    trainer = training_recipe(cfg.trainer)
    trainer.epochs, trainer.lr = config.retrain_epochs, config.retrain_lr
    device = run.device

    def retrain(net: nn.Module, masks: dict[str, torch.Tensor], index: int) -> dict[str, Any]:
        batches = train_loader(cfg, run.bundle, cfg.trainer.batch_size, device, layer_seed(cfg.seed, index))
        on_device = {k: v.to(device) for k, v in masks.items()}
        history = train(net, capped(batches, config.retrain_steps), calib, trainer,
                        after_step=lambda: apply_masks_permanently(net, on_device),
                        desc=f"retrain after {layers[index]}")
        if not history:
            return {}
        return {"train_loss": history[-1]["train_loss"], "epochs": len(history),
                "train_images": sum(r["train_images"] for r in history), "eval_images": sum(r["eval_images"] for r in history)}

    return retrain


def masked_outcome(run: Run, model: nn.Module, config: WeightMaskConfig, layers: list[str], cost: SparseCostModel,
                   calib: list, result: LayerwiseResult, baseline_calib: float, seconds: float
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(search summary, checkpoint meta) of the finished search: the masked model's calibration
    (and with `final_eval` validation and test) accuracy, sparsity and sparse costs, beside the
    baseline's calibration accuracy and the search's `seconds`."""
    meta, baseline_path, device, bundle = run.meta, run.baseline_path, run.device, run.bundle
    plan = result.plan()
    macs, params = cost.cost(plan)
    final_calib = evaluate(model, calib)["acc"]
    val_acc = test_acc = None
    if config.final_eval:
        val_acc = evaluate(model, loader(bundle, "val", config.batch_size, device))["acc"]
        test_acc = evaluate(model, loader(bundle, "test", config.batch_size, device))["acc"]
    all_weights = sum(model.get_submodule(n).weight.numel() for n in sparse_layers(model))
    pruned = sum(int(m.numel() - m.sum()) for m in plan.masks.values())
    sparse_info = {
        "searcher": SEARCHER, "baseline": str(baseline_path.resolve()), "plan": plan.to_json(),
        "sparsity": plan.sparsity(), "network_sparsity": pruned / max(1, all_weights),
        "macs": macs, "params": params, "dense_macs": cost.base_macs, "dense_params": cost.base_params,
    }
    summary = {
        "run_dir": str(run.directory.resolve()), "baseline": str(baseline_path.resolve()), "model": meta["model"],
        "data": meta["data"], "searcher": SEARCHER, "params": asdict(config), "layers": layers,
        "baseline_val_acc": meta["val_acc"], "baseline_test_acc": meta["test_acc"], "baseline_calib_acc": baseline_calib,
        "calib_samples": sum(int(y.numel()) for _, y in calib), "calib_acc": final_calib, "val_acc": val_acc,
        "test_acc": test_acc, "sparsity": plan.sparsity(), "network_sparsity": sparse_info["network_sparsity"],
        "per_layer": [{k: r[k] for k in PER_LAYER} for r in result.layers],
        "baseline_macs": cost.base_macs, "baseline_params": cost.base_params, "sparse_macs": macs, "sparse_params": params,
        "macs_reduction": 1.0 - macs / cost.base_macs, "params_reduction": 1.0 - params / cost.base_params,
        "evaluations": sum(r["evaluations"] for r in result.layers), "seconds": seconds,
        "checkpoint": str((run.directory / MODEL).resolve()),
    }
    spent = search_compute(result, summary["calib_samples"], cost.base_macs)
    summary.update({"compute_macs": spent.total, "compute_macs_by_phase": spent.to_json()})
    out_meta = {**meta, "val_acc": val_acc, "test_acc": test_acc, "baseline_val_acc": meta["val_acc"],
                "baseline_test_acc": meta["test_acc"], "sparse": sparse_info}
    return summary, out_meta


def search_compute(result: LayerwiseResult, calib_images: int, dense_macs: float) -> Compute:
    """What the search spent (`gaprune.engine.compute`): every mask scored on the calibration
    images (`proxy`), and the retrain after each layer (`retrain`), all through the dense network
    (masked weights are zeros, not removed)."""
    spent = Compute()
    spent.add("proxy", forward_macs(sum(r["evaluations"] for r in result.layers) * calib_images, dense_macs))
    for layer in result.layers:
        spent.add("retrain", training_macs(layer.get("retrain_train_images", 0), dense_macs)
                  + forward_macs(layer.get("retrain_eval_images", 0), dense_macs))
    return spent


PER_LAYER = ("layer", "weights", "kept", "sparsity", "acc_ga", "acc_after_layer", "fitness", "initial_best_fitness",
             "evaluations", "mode", "seconds", "retrain_seconds")  # a layer's fields in the summary


def finetune_masked(cfg: DictConfig, run: Run, model: nn.Module, plan, predicted_macs: float,
                    spent: Compute) -> list[dict[str, Any]]:
    """then_finetune: fine-tune the masked model (masks kept) with KD from the baseline into
    <run dir>/finetune; returns its results rows."""
    teacher, _, _ = load_model(run.baseline_path)
    tuning = open_job(cfg, run.directory / "finetune", teacher, run.meta, run.bundle, run.device, "finetune", "weight_mask")
    if not tuning.done(0):
        tuning.run(plan, 0, predicted_macs=predicted_macs, spent=spent,
                   start_weights={k: v.detach().cpu() for k, v in model.state_dict().items()})
    tuning.close()
    return tuning.rows
