"""Run logging: local JSON-lines always, plus wandb (offline by default, one run per script)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

MODES = ("online", "offline", "disabled")


class RunLogger:
    def __init__(self, run_dir: Path, mode: str = "offline", project: str = "gaprune", group: str | None = None,
                 name: str | None = None, job_type: str = "search", config: dict[str, Any] | None = None,
                 tags: list[str] | None = None) -> None:
        from gaprune.utils.errors import GapruneError

        if mode not in MODES:
            raise GapruneError(f"logger.mode={mode!r} is not one of {', '.join(MODES)}")
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = None
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            try:
                import wandb

                self.run = wandb.init(mode=mode, dir=str(run_dir), project=project, group=group, name=name,
                                      job_type=job_type, config=config or {}, tags=tags or [], reinit="finish_previous")
            except Exception as err:  # logging must never kill an experiment
                warnings.warn(f"wandb could not start ({type(err).__name__}: {err}); local records only")

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {"step": step, **metrics} if step is not None else dict(metrics)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
