"""search.py's entry for encoding=weight_mask: run dir and resume, calibration data, optional
retrain between layers, per-layer checkpoints, tables, plot, masked checkpoint and summary.
The per-layer GA itself is in `gaprune.layerwise`."""
from __future__ import annotations

import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.errors import GapruneError
from gaprune.layer_eval import model_accuracy
from gaprune.layerwise import LayerwiseResult, WeightMaskConfig, layer_seed, resolve_layers, search_layers
from gaprune.sparsity import apply_masks_permanently, sparse_layers

STATE = "layerwise_state.pt"
MODEL = "masked_model.pt"


class CappedBatches:
    """At most `steps` batches of a loader per pass (retrain by steps)."""

    def __init__(self, batches, steps: int | None) -> None:
        self.batches, self.steps = batches, steps

    def __iter__(self):
        return iter(self.batches) if self.steps is None else islice(iter(self.batches), self.steps)


def _load_state(path: Path, layers: list[str], seed: int) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GapruneError(f"'{path}' is corrupt ({type(err).__name__}); delete the run dir and start again") from None
    if state.get("layers") != layers or state.get("seed") != int(seed):
        raise GapruneError(f"resume: '{path.parent}' searched layers {state.get('layers')} with seed {state.get('seed')}, "
                           f"not {layers} with seed {seed}; resume with the same encoding.params.layers and seed")
    return state


def run_layerwise_search(cfg) -> dict[str, Any]:
    from gaprune.baseline import prepare_baseline, train_config
    from gaprune.checkpoint import example_input, load_model, save_checkpoint
    from gaprune.io import atomic_torch_save, write_csv, write_json
    from gaprune.runtime import load_bundle, loader, make_logger, plain, resume_run_dir, run_dir
    from gaprune.sparsity import SparseCostModel
    from gaprune.training import evaluate, resolve_device, seed_everything, train

    config = WeightMaskConfig.from_params(plain(cfg.encoding.params))
    directory, resuming = resume_run_dir(cfg, run_dir(), STATE, "weight_mask search")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    bundle = load_bundle(cfg)
    baseline_path, model, meta = prepare_baseline(cfg, directory)
    x0 = example_input(meta)
    layers = resolve_layers(model, config.layers, x0)
    cost = SparseCostModel(model, layers, x0)
    model.to(device)
    calib = list(loader(bundle, "val", config.batch_size, device, limit=config.calib_samples))
    baseline_calib = model_accuracy(model, calib)

    done = None
    if resuming:
        state = _load_state(directory / STATE, layers, cfg.seed)
        model.load_state_dict(state["state_dict"])
        done = LayerwiseResult(dict(state["masks"]), list(state["results"]), list(state["rows"]))
        print(f"resuming weight_mask search in {directory}: {len(done.masks)}/{len(layers)} layers done")
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
            batches = loader(bundle, "train", cfg.trainer.batch_size, device, layer_seed(cfg.seed, index), train=True,
                             augment=cfg.dataset.augment)
            on_device = {k: v.to(device) for k, v in masks.items()}
            history = train(net, CappedBatches(batches, config.retrain_steps), calib, trainer,
                            after_step=lambda: apply_masks_permanently(net, on_device),
                            desc=f"retrain after {layers[index]}")
            return {"train_loss": history[-1]["train_loss"], "epochs": len(history)} if history else {}

    started = time.perf_counter() - sum(r["seconds"] + r["retrain_seconds"] for r in (done.layers if done else []))
    result = search_layers(model, layers, calib, config, cfg.seed, retrain=retrain, done=done,
                           on_generation=on_generation, on_layer=on_layer)
    seconds = time.perf_counter() - started
    write_tables(result)

    plan = result.plan()
    macs, params = cost.cost(plan)
    final_calib = model_accuracy(model, calib)
    val_acc = test_acc = None
    if config.final_eval:
        val_acc = evaluate(model, loader(bundle, "val", config.batch_size, device))["acc"]
        test_acc = evaluate(model, loader(bundle, "test", config.batch_size, device))["acc"]
    all_weights = sum(model.get_submodule(n).weight.numel() for n in sparse_layers(model))
    pruned = sum(int(m.numel() - m.sum()) for m in plan.masks.values())
    sparse_info = {
        "encoding": "weight_mask", "baseline": str(baseline_path.resolve()), "plan": plan.to_json(),
        "sparsity": plan.sparsity(), "network_sparsity": pruned / max(1, all_weights),
        "macs": macs, "params": params, "dense_macs": cost.base_macs, "dense_params": cost.base_params,
    }
    write_json(directory / "weight_masks.json", plan.to_json())
    summary = {
        "run_dir": str(directory.resolve()),
        "baseline": str(baseline_path.resolve()),
        "model": meta["model"],
        "data": meta["data"],
        "encoding": "weight_mask",
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
    print(f"weight_mask done: {len(layers)} layers, sparsity {100 * plan.sparsity():.1f}% of their weights "
          f"({100 * sparse_info['network_sparsity']:.1f}% of all conv/linear weights), sparse MACs "
          f"-{100 * summary['macs_reduction']:.1f}%, calib acc {baseline_calib:.4f} -> {final_calib:.4f} "
          f"in {seconds:.1f}s -> {directory}")
    if cfg.get("then_finetune"):
        from gaprune.finetune import FinetuneJob

        teacher, _, _ = load_model(baseline_path)
        job = FinetuneJob.open(cfg, directory / "finetune", teacher, meta, bundle, device, "finetune", "weight_mask")
        if not job.done(0):
            job.run(plan, 0, predicted_macs=macs, start_weights={k: v.detach().cpu() for k, v in model.state_dict().items()})
        job.close()
        summary["finetune"] = job.rows
    return summary


def plot_layerwise(layers: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], baseline_acc: float,
                   path: Path) -> None:
    """Per-layer sparsity bars + calib accuracy after each layer (left); best fitness per generation (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["layer"] for r in layers]
    fig, (ax, right) = plt.subplots(1, 2, figsize=(max(6.0, 0.5 * len(names) + 3) + 5, 4))
    xs = np.arange(len(names))
    ax.bar(xs, [r["sparsity"] for r in layers], color="tab:blue", alpha=0.8, label="layer sparsity")
    tilt = len(names) > 6
    ax.set_xticks(xs, names, rotation=60 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylim(0, 1.05), ax.set_ylabel("sparsity (pruned weights)"), ax.grid(axis="y", alpha=0.3)
    acc = ax.twinx()
    acc.plot(xs, [r["acc_after_layer"] for r in layers], "o-", color="tab:red", label="calib acc after layer")
    acc.axhline(baseline_acc, color="tab:red", ls="--", alpha=0.5, label="baseline calib acc")
    acc.set_ylim(0, 1.05), acc.set_ylabel("calibration accuracy")
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower left")
    ax.set_title("per-layer sparsity and accuracy")
    for name in names:
        mine = [r for r in rows if r["layer"] == name]
        right.plot([r["generation"] for r in mine], [r["best_fitness"] for r in mine], label=name)
    right.set_xlabel("generation"), right.set_ylabel("best fitness"), right.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    right.set_title("GA progress per layer")
    fig.subplots_adjust(wspace=0.45)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
