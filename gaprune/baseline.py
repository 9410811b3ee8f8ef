"""Baseline training (train.py) and finding / auto-training the baseline for search."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gaprune.checkpoint import example_input, save_checkpoint
from gaprune.errors import GapruneError
from gaprune.io import write_csv, write_json
from gaprune.models import build_model
from gaprune.runtime import load_bundle, loader, make_logger, model_spec, plain, run_dir
from gaprune.training import TrainConfig, evaluate, resolve_device, seed_everything, train_with_state
from gaprune.units import count_macs_params


def train_config(section: DictConfig) -> TrainConfig:
    keys = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in plain(section).items() if k in keys})


def run_train(cfg: DictConfig, directory: Path | None = None) -> dict[str, Any]:
    """Train the baseline described by cfg and save it at cfg.baseline."""
    directory = directory or run_dir()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    bundle = load_bundle(cfg)
    spec = model_spec(cfg)
    model = build_model(spec["name"], bundle.num_classes, bundle.in_channels, bundle.image_size, **spec["kwargs"]).to(device)
    logger = make_logger(cfg, directory, "train")
    trainer = cfg.trainer
    train_batches = loader(bundle, "train", trainer.batch_size, device, cfg.seed, train=True, augment=cfg.dataset.augment)
    val_batches = loader(bundle, "val", trainer.eval_batch_size, device)
    state_path = Path(f"{cfg.baseline}.state")  # per-epoch state: a rerun of the same command resumes
    state_path.parent.mkdir(parents=True, exist_ok=True)
    history = train_with_state(model, train_batches, val_batches, train_config(trainer), state_path,
                               on_epoch=lambda row: logger.log(row, step=int(row["epoch"])), desc=f"train {spec['name']}")
    val = evaluate(model, val_batches)
    test = evaluate(model, loader(bundle, "test", trainer.eval_batch_size, device))
    meta = {
        "model": spec,
        "data": {"name": bundle.name, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
                 "image_size": bundle.image_size},
        "seed": int(cfg.seed),
        "val_acc": val["acc"],
        "test_acc": test["acc"],
    }
    macs, params = count_macs_params(model.cpu().eval(), example_input(meta))
    meta.update(macs=macs, params=params)
    save_checkpoint(cfg.baseline, model, meta)
    state_path.unlink(missing_ok=True)
    summary = {**meta, "checkpoint": str(Path(cfg.baseline).resolve()), "epochs": len(history)}
    write_csv(directory / "history.csv", history)
    write_json(directory / "train_summary.json", summary)
    logger.summary({"val_acc": val["acc"], "test_acc": test["acc"], "macs": macs, "params": params})
    logger.finish()
    print(f"baseline {spec['name']} on {bundle.name}: val acc {val['acc']:.4f}, test acc {test['acc']:.4f}, "
          f"MACs {macs / 1e6:.2f}M, params {params / 1e6:.3f}M -> {cfg.baseline}")
    return summary


def ensure_baseline(cfg: DictConfig, directory: Path) -> Path:
    """The baseline checkpoint path; trains it first when missing and cfg.train_if_missing."""
    path = Path(cfg.baseline)
    if path.is_file():
        return path
    if not cfg.train_if_missing:
        raise GapruneError(
            f"baseline checkpoint '{path}' not found; train it with: python train.py model={cfg.model.name} "
            f"dataset={cfg.dataset.name} (or set train_if_missing=true)"
        )
    print(f"baseline '{path}' not found: training it first (train_if_missing=true)")
    run_train(cfg, directory / "baseline")
    return path


def dataset_matches(meta: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    if meta["data"]["name"] != cfg.dataset.name:
        raise GapruneError(
            f"checkpoint '{path}' was trained on {meta['data']['name']}, not dataset={cfg.dataset.name}; "
            "point baseline= at the right checkpoint"
        )



def prepare_baseline(cfg: DictConfig, directory: Path) -> tuple[Path, Any, dict[str, Any]]:
    """(path, model, meta) of the baseline to prune: trained first when missing (and allowed),
    checked against model= and dataset=."""
    from gaprune.checkpoint import load_model

    path = ensure_baseline(cfg, directory)
    model, meta, pruned = load_model(path, expect_model=cfg.model.name,
                                     hint=f"train it with: python train.py model={cfg.model.name} dataset={cfg.dataset.name}")
    if pruned is not None:
        raise GapruneError(f"baseline='{path}' is already pruned; give an unpruned baseline checkpoint")
    dataset_matches(meta, cfg, path)
    return path, model, meta
