"""Glue shared by the entry points: data, loaders, paths, logger and baseline from a config."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gaprune.data import DataBundle, load_dataset
from gaprune.errors import GapruneError
from gaprune.loaders import make_loader
from gaprune.tracking import RunLogger


def run_dir() -> Path:
    """Hydra's output dir for this job (falls back to ./outputs/manual outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        path = Path("outputs/manual")
        path.mkdir(parents=True, exist_ok=True)
        return path


def resume_run_dir(cfg: DictConfig, fresh_dir: Path, marker: str, kind: str) -> tuple[Path, bool]:
    """(run dir, resuming?) from resume=false|true|<run dir>; a resumable run holds `marker`.
    true picks the newest such run under <output_root>/<task>."""
    resume = cfg.resume
    if resume in (None, False, "false"):
        return fresh_dir, False
    if resume in (True, "true"):
        root = Path(cfg.paths.output_root) / cfg.task
        candidates = sorted((p.parent for p in root.rglob(marker) if p.parent != fresh_dir), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise GapruneError(f"resume=true but no {kind} run with {marker} under '{root}'; start a new one")
        return candidates[-1], True
    path = Path(str(resume))
    if not (path / marker).is_file():
        raise GapruneError(f"resume='{path}' is not a {kind} run dir (no {marker}); give the run dir of a {kind}")
    return path, True


def load_bundle(cfg: DictConfig) -> DataBundle:
    data = cfg.dataset
    return load_dataset(data.name, data_dir=data.data_dir, download=data.download, val_fraction=data.val_fraction,
                        seed=cfg.seed, train_limit=data.train_limit, test_limit=data.test_limit,
                        image_size=data.get("image_size"))


def loader(bundle: DataBundle, split: str, batch_size: int, device, seed: int = 0, train: bool = False,
           augment: bool = True, limit: int | None = None):
    return make_loader(bundle, split, int(batch_size), shuffle=train, augment=train and augment, device=device,
                       seed=seed, limit=limit)


def plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def model_spec(cfg: DictConfig) -> dict[str, Any]:
    return {"name": cfg.model.name, "include_linear": bool(cfg.model.include_linear), "kwargs": plain(cfg.model.kwargs) or {}}


def make_logger(cfg: DictConfig, directory: Path, job_type: str) -> RunLogger:
    log = cfg.logger
    return RunLogger(directory, mode=log.mode, project=log.project, group=log.group, name=f"{job_type}-{directory.name}",
                     job_type=job_type, config=plain(cfg), tags=list(log.tags or []))
