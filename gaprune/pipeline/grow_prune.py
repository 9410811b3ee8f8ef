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
from typing import Any

from omegaconf import DictConfig

from gaprune.engine.checkpoint import example_input, load_model, save_checkpoint
from gaprune.engine.grow_prune import GrowPruneConfig
from gaprune.engine.grow_prune_schedule import grow_and_prune
from gaprune.engine.training import evaluate
from gaprune.models import build_model
from gaprune.pipeline import setup
from gaprune.pipeline.setup import loader, make_logger, model_spec, open_run, plain, train_config, train_loader
from gaprune.pipeline.training_state import done_baseline, hold_baseline, stopped_training
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import write_csv, write_json
from gaprune.utils.plots import plot_grow_prune

SCHEDULE_KEYS = ("grow_until", "prune_at", "grow_percentile", "score_batches", "increments", "new_input_scale",
                 "percent", "min_keep")


def schedule_config(cfg: DictConfig) -> GrowPruneConfig:
    trainer = plain(cfg.trainer)
    return GrowPruneConfig(**{k: trainer[k] for k in SCHEDULE_KEYS if k in trainer}, seed=int(cfg.seed))


def _baseline(cfg: DictConfig) -> Path:
    find = getattr(setup, "baseline_path", None)  # hashed default names where the setup has them
    return Path(find(cfg)) if find is not None else Path(str(cfg.baseline))


def run_grow_prune(cfg: DictConfig, directory: Path | None = None) -> dict[str, Any]:
    """Grow, prune and retrain the seed VGG described by cfg; save it at the baseline path."""
    if cfg.model.name != "vgg_seed":
        raise GapruneError(f"trainer=grow_prune grows a seed VGG, not model={cfg.model.name}; use model=vgg_seed "
                           "(model.params.layers sets the seed's stage/channel list)")
    config, gp = train_config(cfg.trainer), schedule_config(cfg)
    config.validate()
    gp.validate(config.epochs)
    run = open_run(cfg, directory=directory)
    path, directory, device, bundle, spec = _baseline(cfg), run.directory, run.device, run.bundle, model_spec(cfg)
    state_path = hold_baseline(cfg, path)  # one process per baseline; a rerun resumes only the same config
    kwargs = dict(spec["kwargs"])
    seed_model = run.build_untrained()  # resolves the width multiplier into plain widths
    widths = iter(int(conv.out_channels) for conv in seed_model.convs)
    seed_layers = [item if item == "M" else next(widths) for item in (kwargs.get("layers") or _default_layers())]

    def rebuild(layers):
        return build_model(spec["name"], bundle.num_classes, bundle.in_channels, bundle.image_size,
                           **{**kwargs, "layers": list(layers), "width": 1.0})

    trainer = cfg.trainer
    train_batches = train_loader(cfg, bundle, trainer.batch_size, device)
    val_batches = loader(bundle, "val", trainer.eval_batch_size, device)

    def score_batches(epoch: int):
        batches = loader(bundle, "train", trainer.batch_size, device, seed=int(cfg.seed) * 7919 + epoch, train=True,
                         augment=False)
        return itertools.islice(batches, gp.score_batches)

    meta: dict[str, Any] = {"data": {"name": bundle.name, "num_classes": bundle.num_classes,
                                     "in_channels": bundle.in_channels, "image_size": bundle.image_size}}
    logger = make_logger(cfg, directory, "train")
    try:
        result = grow_and_prune(seed_layers, rebuild, train_batches, val_batches, score_batches, config, gp, state_path,
                                example_input(meta), device,
                                on_epoch=lambda row: logger.log({k: v for k, v in row.items() if not isinstance(v, list)},
                                                                step=int(row["epoch"])),
                                desc=f"grow-prune {spec['name']}")
    except KeyboardInterrupt:
        raise stopped_training(state_path, path) from None
    model = result.model
    val = evaluate(model, val_batches)
    test = evaluate(model, loader(bundle, "test", trainer.eval_batch_size, device))
    final = result.history[-1]
    meta.update({
        "model": {**spec, "kwargs": {**kwargs, "layers": list(result.layers), "width": 1.0}},
        "seed": int(cfg.seed), "val_acc": val["acc"], "test_acc": test["acc"], "macs": final["macs"],
        "params": final["params"],
        "grow_prune": {"seed_layers": seed_layers, "final_layers": list(result.layers),
                       "seed_params": result.initial["params"], "seed_macs": result.initial["macs"],
                       "peak_params": max(r["params"] for r in result.history), **result.prune_info},
    })
    record = getattr(setup, "training_config", None)
    if record is not None:
        meta["train_config"] = record(cfg)
    save_checkpoint(path, model.cpu(), meta)
    done_baseline(state_path)
    rows = [result.initial, *result.history]
    write_json(directory / "history.json", rows)
    write_csv(directory / "history.csv", [{k: "-".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()}
                                          for r in rows])
    if result.plan is not None:
        write_json(directory / "prune_plan.json", result.plan.to_json())
    plot_grow_prune(rows, directory / "widths.png")
    summary = {**meta, "checkpoint": str(path.resolve()), "epochs": len(result.history)}
    write_json(directory / "train_summary.json", summary)
    reference = trainer.get("reference")
    if reference:
        write_json(directory / "results.json", results_vs(reference, meta))
    logger.summary({"val_acc": val["acc"], "test_acc": test["acc"], "macs": meta["macs"], "params": meta["params"]})
    logger.finish()
    print(f"grow-and-prune {spec['name']} on {bundle.name}: widths {seed_layers} -> {list(result.layers)}; val acc "
          f"{val['acc']:.4f}, test acc {test['acc']:.4f}, MACs {meta['macs'] / 1e6:.2f}M, params "
          f"{meta['params'] / 1e6:.3f}M -> {path}")
    return summary


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
