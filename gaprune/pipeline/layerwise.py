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
from gaprune.engine.training import evaluate, seed_everything, train
from gaprune.pipeline.finetune import open_job
from gaprune.pipeline.runconfig import resume_with
from gaprune.pipeline.setup import loader, make_logger, open_run, plain, train_config, train_loader
from gaprune.pipeline.train import ensure_baseline
from gaprune.pruning.cost import SparseCostModel
from gaprune.pruning.masking import apply_masks_permanently, sparse_layers
from gaprune.search.layerwise import LayerwiseResult, WeightMaskConfig, layer_seed, resolve_layers, search_layers
from gaprune.utils.errors import GapruneError, Interrupted
from gaprune.utils.io import atomic_torch_save, read_torch_dict, write_csv, write_json
from gaprune.utils.plots import plot_layerwise

SEARCHER = "layerwise_weight_mask"
STATE = "layerwise_state.pt"
MODEL = "masked_model.pt"


def read_state(path: Path, layers: list[str], seed: int) -> dict[str, Any]:
    state = read_torch_dict(path, "layer-wise search state", "delete the run dir and start again",
                            ("layers", "seed", "masks", "results", "rows", "state_dict"))
    if state.get("layers") != layers or state.get("seed") != int(seed):
        raise GapruneError(f"resume: '{path.parent}' searched layers {state.get('layers')} with seed {state.get('seed')}, "
                           f"not {layers} with seed {seed}; resume with the same searcher.params.layers and seed")
    return state


def run_layerwise_search(cfg: DictConfig) -> dict[str, Any]:
    config = WeightMaskConfig.from_params(plain(cfg.searcher.params))
    run = open_run(cfg, (STATE,), "layer-wise weight-mask search")
    directory, device, bundle = run.directory, run.device, run.bundle
    ensure_baseline(cfg, run.directory)
    model = run.reference(units=False)
    baseline_path, meta, x0 = run.baseline_path, run.meta, run.x0
    layers = resolve_layers(model, config.layers, x0)
    cost = SparseCostModel(model, layers, x0)
    model.to(device)
    calib = list(loader(bundle, "val", config.batch_size, device, limit=config.calib_samples))
    baseline_calib = evaluate(model, calib)["acc"]

    done = None
    if run.resuming:
        state = read_state(directory / STATE, layers, cfg.seed)
        model.load_state_dict(state["state_dict"])
        done = LayerwiseResult(dict(state["masks"]), list(state["results"]), list(state["rows"]))
        print(f"resuming layer-wise weight-mask search in {directory}: {len(done.masks)}/{len(layers)} layers done")
    seed_everything(cfg.seed)

    logger = make_logger(cfg, directory, "search")
    steps_per_layer = config.generations + 1

    def on_generation(row: dict[str, Any]) -> None:
        logger.log({k: v for k, v in row.items() if k not in ("layer",)},
                   step=row["layer_index"] * steps_per_layer + row["generation"])

    def write_tables(result: LayerwiseResult) -> None:
        write_json(directory / "layers.json", result.rows)
        write_csv(directory / "layers.csv", result.rows)
        write_json(directory / "layer_results.json", result.layers)

    def on_layer(result: LayerwiseResult) -> None:
        write_tables(result)
        atomic_torch_save({"layers": layers, "seed": int(cfg.seed), "masks": {k: v.cpu() for k, v in result.masks.items()},
                           "results": result.layers, "rows": result.rows,
                           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
                          directory / STATE)
        last = result.layers[-1]
        print(f"layer {last['layer']}: sparsity {last['sparsity']:.3f} ({last['weights']} weights), calib acc "
              f"{last['acc_after_layer']:.4f}, {last['seconds'] + last['retrain_seconds']:.1f}s")

    retrain = None
    if config.retrain_epochs > 0:
        trainer = train_config(cfg.trainer)
        trainer.epochs, trainer.lr = config.retrain_epochs, config.retrain_lr

        def retrain(net: nn.Module, masks: dict[str, torch.Tensor], index: int) -> dict[str, Any]:
            batches = train_loader(cfg, bundle, cfg.trainer.batch_size, device, layer_seed(cfg.seed, index))
            on_device = {k: v.to(device) for k, v in masks.items()}
            history = train(net, capped(batches, config.retrain_steps), calib, trainer,
                            after_step=lambda: apply_masks_permanently(net, on_device),
                            desc=f"retrain after {layers[index]}")
            return {"train_loss": history[-1]["train_loss"], "epochs": len(history)} if history else {}

    started = time.perf_counter() - sum(r["seconds"] + r["retrain_seconds"] for r in (done.layers if done else []))
    try:
        result = search_layers(model, layers, calib, config, cfg.seed, retrain=retrain, done=done,
                               on_generation=on_generation, on_layer=on_layer)
    except KeyboardInterrupt:
        finished = len(read_state(directory / STATE, layers, cfg.seed)["masks"]) if (directory / STATE).exists() else 0
        raise Interrupted(f"interrupted after {finished} of {len(layers)} layers; " + (
            f"resume with {resume_with(directory)}" if finished else "nothing to resume, start the search again")) from None
    seconds = time.perf_counter() - started
    write_tables(result)

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
    write_json(directory / "weight_masks.json", plan.to_json())
    summary = {
        "run_dir": str(directory.resolve()),
        "baseline": str(baseline_path.resolve()),
        "model": meta["model"],
        "data": meta["data"],
        "searcher": SEARCHER,
        "params": asdict(config),
        "layers": layers,
        "baseline_val_acc": meta["val_acc"],
        "baseline_test_acc": meta["test_acc"],
        "baseline_calib_acc": baseline_calib,
        "calib_samples": sum(int(y.numel()) for _, y in calib),
        "calib_acc": final_calib,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "sparsity": plan.sparsity(),
        "network_sparsity": sparse_info["network_sparsity"],
        "per_layer": [{k: r[k] for k in ("layer", "weights", "kept", "sparsity", "acc_ga", "acc_after_layer", "fitness",
                                         "initial_best_fitness", "evaluations", "mode", "seconds", "retrain_seconds")}
                      for r in result.layers],
        "baseline_macs": cost.base_macs,
        "baseline_params": cost.base_params,
        "sparse_macs": macs,
        "sparse_params": params,
        "macs_reduction": 1.0 - macs / cost.base_macs,
        "params_reduction": 1.0 - params / cost.base_params,
        "evaluations": sum(r["evaluations"] for r in result.layers),
        "seconds": seconds,
        "checkpoint": str((directory / MODEL).resolve()),
    }
    out_meta = {**meta, "val_acc": val_acc, "test_acc": test_acc, "baseline_val_acc": meta["val_acc"],
                "baseline_test_acc": meta["test_acc"], "sparse": sparse_info}
    save_checkpoint(directory / MODEL, model.cpu(), out_meta)
    model.to(device)
    plot_layerwise(result.layers, result.rows, baseline_calib, directory / "layers.png")
    write_json(directory / "search_summary.json", summary)
    logger.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    logger.finish()
    print(f"layer-wise weight-mask search done: {len(layers)} layers, sparsity {100 * plan.sparsity():.1f}% of their weights "
          f"({100 * sparse_info['network_sparsity']:.1f}% of all conv/linear weights), sparse MACs "
          f"-{100 * summary['macs_reduction']:.1f}%, calib acc {baseline_calib:.4f} -> {final_calib:.4f} "
          f"in {seconds:.1f}s -> {directory}")
    if cfg.get("then_finetune"):
        teacher, _, _ = load_model(baseline_path)
        job = open_job(cfg, directory / "finetune", teacher, meta, bundle, device, "finetune", "weight_mask")
        if not job.done(0):
            job.run(plan, 0, predicted_macs=macs, start_weights={k: v.detach().cpu() for k, v in model.state_dict().items()})
        job.close()
        summary["finetune"] = job.rows
    return summary
