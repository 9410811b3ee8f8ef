"""train.py with `trainer=grow_prune` (GGPA): grow a seed VGG (`model=vgg_seed`), prune it by
cumulative BN |gamma| and retrain (`gaprune.engine.grow_prune_schedule`), then save the result as
an ordinary baseline checkpoint, so search / fine-tune / tables start from it.

Invariants: the checkpoint's meta["model"] is the seed VGG with `layers` = the final widths and
`width` = 1, so `gaprune.engine.checkpoint.load_model` rebuilds it like any baseline; the
per-epoch state lives at `<baseline>.state` (rerunning the same command resumes, also through
growth and pruning) and is removed once the checkpoint is written; every file is written atomically.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterable

import torch.nn as nn
from omegaconf import DictConfig

from gaprune.engine.checkpoint import example_input, load_model, save_checkpoint
from gaprune.engine.grow_prune import GrowPruneConfig
from gaprune.engine.grow_prune_schedule import GrowPruneResult, grow_and_prune
from gaprune.engine.training import TrainConfig, evaluate
from gaprune.models import build_model
from gaprune.pipeline.lifecycle import job_run
from gaprune.pipeline.setup import Run, baseline_identity, baseline_path, loader, model_spec, plain, train_loader, training_recipe
from gaprune.pipeline.training_state import done_baseline, hold_baseline, report_training
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import write_csv, write_json
from gaprune.utils.plots import plot_grow_prune

SCHEDULE_KEYS = ("grow_until", "prune_at", "grow_percentile", "score_batches", "increments", "new_input_scale",
                 "percent", "min_keep")


def schedule_config(cfg: DictConfig) -> GrowPruneConfig:
    trainer = plain(cfg.trainer)
    return GrowPruneConfig(**{k: trainer[k] for k in SCHEDULE_KEYS if k in trainer}, seed=int(cfg.seed))


def run_grow_prune(cfg: DictConfig, directory: Path | None = None) -> dict[str, Any]:
    """Grow, prune and retrain the seed VGG described by cfg; save it at the baseline path.

    Args:
        cfg: the train.py config with `model=vgg_seed trainer=grow_prune`.
        directory: the run dir (default: Hydra's).

    Returns:
        The summary written to train_summary.json (the checkpoint's meta, its path, the epochs).
    """
    config, gp = checked_schedule(cfg)
    with job_run(cfg, "train", directory=directory) as job:
        run, path, spec = job.run, baseline_path(cfg), model_spec(cfg)
        device, bundle, trainer = run.device, run.bundle, cfg.trainer
        state_path = hold_baseline(cfg, path)  # one process per baseline; a rerun resumes only the same config
        seed_layers = _seed_layers(run, spec)
        train_batches = train_loader(cfg, bundle, trainer.batch_size, device)
        val_batches = loader(bundle, "val", trainer.eval_batch_size, device)
        meta: dict[str, Any] = {"data": {"name": bundle.name, "num_classes": bundle.num_classes,
                                         "in_channels": bundle.in_channels, "image_size": bundle.image_size}}
        logger = job.logger
        report_training(job, state_path, path)
        result = grow_and_prune(seed_layers, _rebuilder(spec, bundle), train_batches, val_batches,
                                _scoring_batches(cfg, bundle, device, gp), config, gp, state_path, example_input(meta),
                                device, desc=f"grow-prune {spec['name']}",
                                on_epoch=lambda row: logger.log({k: v for k, v in row.items() if not isinstance(v, list)},
                                                                step=int(row["epoch"])))
        model = result.model
        val = evaluate(model, val_batches)
        test = evaluate(model, loader(bundle, "test", trainer.eval_batch_size, device))
        meta.update(grown_meta(cfg, spec, seed_layers, result, val["acc"], test["acc"]))
        save_checkpoint(path, model.cpu(), meta)
        done_baseline(state_path)
        job.report(None)  # saved: nothing left to continue
        write_history(job.directory, result)
        summary = {**meta, "checkpoint": str(path.resolve()), "epochs": len(result.history)}
        if trainer.get("reference"):
            write_json(job.directory / "results.json", results_vs(trainer.reference, meta))
        job.finish(summary, "train_summary.json", {"val_acc": val["acc"], "test_acc": test["acc"], "macs": meta["macs"],
                                                   "params": meta["params"]})
    print(f"grow-and-prune {spec['name']} on {bundle.name}: widths {seed_layers} -> {list(result.layers)}; val acc "
          f"{val['acc']:.4f}, test acc {test['acc']:.4f}, MACs {meta['macs'] / 1e6:.2f}M, params "
          f"{meta['params'] / 1e6:.3f}M -> {path}")
    return summary


def checked_schedule(cfg: DictConfig) -> tuple[TrainConfig, GrowPruneConfig]:
    """The training recipe and the grow/prune schedule of cfg, checked (one line on a bad option)
    before anything is written."""
    if cfg.model.name != "vgg_seed":
        raise GapruneError(f"trainer=grow_prune grows a seed VGG, not model={cfg.model.name}; use model=vgg_seed "
                           "(model.params.layers sets the seed's stage/channel list)")
    config, gp = training_recipe(cfg.trainer), schedule_config(cfg)
    config.validate()
    gp.validate(config.epochs)
    return config, gp


def _seed_layers(run: Run, spec: dict[str, Any]) -> list:
    """The seed's stage/channel list with the width multiplier resolved into plain widths."""
    seed_model = run.build_untrained()
    widths = iter(int(conv.out_channels) for conv in seed_model.convs)
    return [item if item == "M" else next(widths) for item in (spec["kwargs"].get("layers") or _default_layers())]


def _rebuilder(spec: dict[str, Any], bundle) -> Callable[[list], nn.Module]:
    """Builds the seed VGG at given widths (width multiplier 1) for the dataset."""
    def rebuild(layers):
        return build_model(spec["name"], bundle.num_classes, bundle.in_channels, bundle.image_size,
                           **{**spec["kwargs"], "layers": list(layers), "width": 1.0})

    return rebuild


def _scoring_batches(cfg: DictConfig, bundle, device, gp: GrowPruneConfig) -> Callable[[int], Iterable]:
    """The growth-scoring batches of an epoch: `gp.score_batches` unaugmented training batches,
    shuffled by a seed of (run seed, epoch)."""
    trainer = cfg.trainer

    def score_batches(epoch: int):
        batches = loader(bundle, "train", trainer.batch_size, device, seed=int(cfg.seed) * 7919 + epoch, train=True,
                         augment=False)
        return itertools.islice(batches, gp.score_batches)

    return score_batches


def grown_meta(cfg: DictConfig, spec: dict[str, Any], seed_layers: list, result: GrowPruneResult, val_acc: float,
               test_acc: float) -> dict[str, Any]:
    """The checkpoint meta of the grown-and-pruned model: the seed VGG at its final widths, its
    accuracies and costs, the schedule's record and (where the setup records one) the training config."""
    final = result.history[-1]
    meta = {
        "model": {**spec, "kwargs": {**spec["kwargs"], "layers": list(result.layers), "width": 1.0}},
        "seed": int(cfg.seed), "val_acc": val_acc, "test_acc": test_acc, "macs": final["macs"],
        "params": final["params"],
        "grow_prune": {"seed_layers": seed_layers, "final_layers": list(result.layers),
                       "seed_params": result.initial["params"], "seed_macs": result.initial["macs"],
                       "peak_params": max(r["params"] for r in result.history), **result.prune_info},
    }
    meta["train_config"] = baseline_identity(cfg)  # the checkpoint key "train_config": what identifies the baseline
    return meta


def write_history(directory: Path, result: GrowPruneResult) -> None:
    """history.json / .csv (the seed row first), prune_plan.json (once pruned) and the widths plot."""
    rows = [result.initial, *result.history]
    write_json(directory / "history.json", rows)
    write_csv(directory / "history.csv", [{k: "-".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()}
                                          for r in rows])
    if result.plan is not None:
        write_json(directory / "prune_plan.json", result.plan.to_json())
    plot_grow_prune(rows, directory / "widths.png")


def _default_layers() -> list:
    from gaprune.models.vgg import SEED_LAYERS

    return list(SEED_LAYERS)


def results_vs(reference: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A results.json for scripts/report.py: the grown-and-pruned model against a reference
    baseline checkpoint (e.g. VGG-19), reductions relative to it."""
    _, ref, _ = load_model(reference, hint="train it first (e.g. python train.py model=vgg19 trainer=cifar)")
    row = {"pick": f"GGPA grow-and-prune ({meta['model']['name']})", "test_acc": meta["test_acc"],
           "val_acc": meta["val_acc"], "test_acc_delta": meta["test_acc"] - ref["test_acc"], "macs": meta["macs"],
           "params": meta["params"], "macs_reduction": 1.0 - meta["macs"] / ref["macs"],
           "params_reduction": 1.0 - meta["params"] / ref["params"]}
    return {"baseline": {"name": ref["model"]["name"], "test_acc": ref["test_acc"], "macs": ref["macs"],
                         "params": ref["params"]}, "results": [row]}
