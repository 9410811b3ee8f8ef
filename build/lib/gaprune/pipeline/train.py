"""train.py's job: train the baseline (the unpruned reference model every other job prunes) and
save it at `baseline=` (default: <paths.checkpoints>/<model>-<dataset>-<key>.pt, the key a hash
of the training config, `gaprune.pipeline.setup.baseline_path`). The checkpoint records that
config (meta["train_config"]) so jobs loading it can check it. Rerunning an interrupted command
resumes it per epoch: one process at a time per baseline (`<baseline>.lock`), and only with the
training config it was started with (`<baseline>.state.json`, compared before any training)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gaprune.engine.checkpoint import example_input, save_checkpoint
from gaprune.engine.training import evaluate, train_with_state
from gaprune.pipeline.grow_prune import run_grow_prune
from gaprune.pipeline.lifecycle import job_run
from gaprune.pipeline.setup import (
    baseline_path,
    check_writable,
    loader,
    model_spec,
    training_recipe,
    train_loader,
    baseline_identity,
)
from gaprune.pipeline.training_state import done_baseline, hold_baseline, report_training
from gaprune.pruning.physical import count_macs_params
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import write_csv
from gaprune.utils.lock import releasing


@releasing
def run_train(cfg: DictConfig, directory: Path | None = None) -> dict[str, Any]:
    """Train the baseline described by cfg and save it at `baseline_path(cfg)`.

    Args:
        cfg: the train.py config (`trainer.schedule=grow_prune`: `run_grow_prune`).
        directory: the run dir (default: Hydra's; a search training its missing baseline passes its own).

    Returns:
        The summary written to train_summary.json.
    """
    if cfg.trainer.get("schedule") == "grow_prune":  # GGPA grow-and-prune: gaprune/pipeline/grow_prune.py
        return run_grow_prune(cfg, directory)
    with job_run(cfg, "train", directory=directory) as job:
        run, path = job.run, baseline_path(cfg)
        state_path = hold_baseline(cfg, path)  # per-epoch state: a rerun of the same command resumes
        directory, device, bundle, spec = run.directory, run.device, run.bundle, model_spec(cfg)
        model = run.build_untrained().to(device)
        logger, trainer = job.logger, cfg.trainer
        train_batches = train_loader(cfg, bundle, trainer.batch_size, device)
        val_batches = loader(bundle, "val", trainer.eval_batch_size, device)
        report_training(job, state_path, path)
        history = train_with_state(model, train_batches, val_batches, training_recipe(trainer), state_path,
                                   on_epoch=lambda row: logger.log(row, step=int(row["epoch"])),
                                   desc=f"train {spec['name']}")
        val = evaluate(model, val_batches)
        test = evaluate(model, loader(bundle, "test", trainer.eval_batch_size, device))
        meta = {
            "model": spec,
            "data": {"name": bundle.name, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
                     "image_size": bundle.image_size},
            "seed": int(cfg.seed),
            "train_config": baseline_identity(cfg),
            "val_acc": val["acc"],
            "test_acc": test["acc"],
        }
        macs, params = count_macs_params(model.cpu().eval(), example_input(meta))
        meta.update(macs=macs, params=params)
        save_checkpoint(path, model, meta)
        done_baseline(state_path)
        job.report(None)  # saved: nothing left to continue
        summary = {**meta, "checkpoint": str(path.resolve()), "epochs": len(history)}
        write_csv(directory / "history.csv", history)
        job.finish(summary, "train_summary.json", {"val_acc": val["acc"], "test_acc": test["acc"], "macs": macs,
                                                   "params": params})
    print(f"baseline {spec['name']} on {bundle.name}: val acc {val['acc']:.4f}, test acc {test['acc']:.4f}, "
          f"MACs {macs / 1e6:.2f}M, params {params / 1e6:.3f}M -> {path}")
    return summary


def ensure_baseline(cfg: DictConfig, directory: Path) -> Path:
    """The baseline checkpoint path; trains it first when missing and cfg.train_if_missing."""
    path = baseline_path(cfg)
    if path.is_file():
        return path
    if path.exists():
        raise GapruneError(f"baseline '{path}' is a directory, not a checkpoint file; point baseline= at a .pt file "
                           "(or leave it unset for the default)")
    if not cfg.train_if_missing:
        raise GapruneError(
            f"baseline checkpoint '{path}' not found; train it with: python train.py model={cfg.model.name} "
            f"dataset={cfg.dataset.name} (or set train_if_missing=true)"
        )
    check_writable(path.parent, "baseline" if cfg.get("baseline") not in (None, "", "auto") else "paths.checkpoints")
    print(f"baseline '{path}' not found: training it first (train_if_missing=true)")
    run_train(cfg, directory / "baseline")
    return path
