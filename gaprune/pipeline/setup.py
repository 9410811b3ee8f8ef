"""The one run setup every job uses (train, search, layer-wise weight-mask search, one-shot,
finetune): run dir and resume, seed, device, data, the reference model (the unpruned
baseline checkpoint, trained first when missing), its example input and prunable units.

`gaprune.pipeline` is the only package that reads a `DictConfig`; everything below it takes
plain values. `resolve_resume` is the one resume resolver (`resume=false|true|<run dir>`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from gaprune.data.datasets import DataBundle, load_dataset
from gaprune.data.loaders import make_loader
from gaprune.engine.checkpoint import example_input, load_model
from gaprune.engine.training import TrainConfig, resolve_device, seed_everything
from gaprune.models import build_model
from gaprune.pruning.units import PrunableUnit, discover_units
from gaprune.utils.errors import GapruneError
from gaprune.utils.tracking import RunLogger


def run_dir() -> Path:
    """Hydra's output dir for this job (falls back to ./outputs/manual outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        path = Path("outputs/manual")
        path.mkdir(parents=True, exist_ok=True)
        return path


def resolve_resume(cfg: DictConfig, fresh_dir: Path, markers: Sequence[str], kind: str) -> tuple[Path, bool]:
    """(run dir, resuming?) from resume=false|true|<run dir>. A resumable run dir holds a file
    matching one of `markers` (glob patterns); true picks the newest such run under
    <output_root>/<task>."""
    resume = cfg.get("resume")
    if resume in (None, False, "false"):
        return fresh_dir, False

    def resumable(path: Path) -> bool:
        return any(next(path.glob(marker), None) is not None for marker in markers)

    what = " or ".join(markers)
    if resume in (True, "true"):
        root = Path(cfg.paths.output_root) / cfg.task
        found = {p.parent for marker in markers for p in root.rglob(marker) if p.parent != fresh_dir}
        if not found:
            raise GapruneError(f"resume=true but no {kind} run with {what} under '{root}'; start a new one")
        return max(found, key=lambda p: p.stat().st_mtime), True
    path = Path(str(resume))
    if not path.is_dir() or not resumable(path):
        raise GapruneError(f"resume='{path}' is not a {kind} run dir (no {what}); give the run dir of a {kind}")
    return path, True


def plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def model_spec(cfg: DictConfig) -> dict[str, Any]:
    """The model as checkpoints record it (constructor arguments stored as `kwargs`)."""
    return {"name": cfg.model.name, "include_linear": bool(cfg.model.include_linear), "kwargs": plain(cfg.model.params) or {}}


def load_bundle(cfg: DictConfig) -> DataBundle:
    data = cfg.dataset
    return load_dataset(data.name, seed=int(data.get("split_seed", cfg.seed)), **plain(data.params))


def loader(bundle: DataBundle, split: str, batch_size: int, device, seed: int = 0, train: bool = False,
           augment: bool = True, limit: int | None = None):
    return make_loader(bundle, split, int(batch_size), shuffle=train, augment=train and augment, device=device,
                       seed=seed, limit=limit)


def train_loader(cfg: DictConfig, bundle: DataBundle, batch_size: int, device, seed: int | None = None):
    """A seeded, shuffled, augmented (when dataset.augment) loader over the train split."""
    return loader(bundle, "train", batch_size, device, cfg.seed if seed is None else seed, train=True,
                  augment=bool(cfg.dataset.augment))


def train_config(section: DictConfig) -> TrainConfig:
    """A training recipe (`trainer` or `finetune` group) as a TrainConfig (loader keys dropped)."""
    keys = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in plain(section).items() if k in keys})


def make_logger(cfg: DictConfig, directory: Path, job_type: str) -> RunLogger:
    log = cfg.logger
    return RunLogger(directory, mode=log.mode, project=log.project, group=log.group, name=f"{job_type}-{directory.name}",
                     job_type=job_type, config=plain(cfg), tags=list(log.tags or []))


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
    from gaprune.pipeline.train import run_train

    run_train(cfg, directory / "baseline")
    return path


def check_dataset(meta: dict[str, Any], cfg: DictConfig, path: Path | str, fix: str) -> None:
    if meta["data"]["name"] != cfg.dataset.name:
        raise GapruneError(f"checkpoint '{path}' was trained on {meta['data']['name']}, not "
                           f"dataset={cfg.dataset.name}; {fix}")


@dataclass
class Run:
    """One job's setup. `open_run` fills directory / resuming / device (and data); `reference`
    adds the reference model (the unpruned baseline, on CPU), its example input and units."""

    cfg: DictConfig
    directory: Path
    resuming: bool
    device: Any
    bundle: DataBundle | None = None
    baseline_path: Path | None = None
    model: nn.Module | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    x0: Any = None
    units: list[PrunableUnit] | None = None

    def load_data(self) -> DataBundle:
        self.bundle = load_bundle(self.cfg)
        return self.bundle

    def reference(self, units: bool = True) -> nn.Module:
        """Load the baseline (trained first when missing and allowed), checked against model= and
        dataset=; `units` also discovers its prunable units."""
        cfg = self.cfg
        path = ensure_baseline(cfg, self.directory)
        model, meta, pruned = load_model(path, expect_model=cfg.model.name,
                                         hint=f"train it with: python train.py model={cfg.model.name} dataset={cfg.dataset.name}")
        if pruned is not None:
            raise GapruneError(f"baseline='{path}' is already pruned; give an unpruned baseline checkpoint")
        check_dataset(meta, cfg, path, "point baseline= at the right checkpoint")
        self.baseline_path, self.model, self.meta, self.x0 = path, model, meta, example_input(meta)
        if units:
            self.units = discover_units(model, self.x0, include_linear=bool(cfg.model.include_linear))
        return model

    def build_untrained(self) -> nn.Module:
        """The configured architecture, freshly initialised (training, or checks before training)."""
        spec, bundle = model_spec(self.cfg), self.bundle
        return build_model(spec["name"], bundle.num_classes, bundle.in_channels, bundle.image_size, **spec["kwargs"])


def open_run(cfg: DictConfig, markers: Sequence[str] = (), kind: str = "", directory: Path | None = None,
             data: bool = True) -> Run:
    """Run dir (resolving `resume` when the job is resumable: `markers` given), seed, device and
    (with `data`) the dataset, in that order."""
    if markers and directory is None:
        directory, resuming = resolve_resume(cfg, run_dir(), markers, kind)
    else:
        directory, resuming = directory or run_dir(), False
    seed_everything(cfg.seed)
    run = Run(cfg, directory, resuming, resolve_device(cfg.device))
    if data:
        run.load_data()
    return run
