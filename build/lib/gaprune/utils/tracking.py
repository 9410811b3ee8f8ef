"""Run logging: local JSON-lines always, plus wandb (offline by default). One wandb run per job of
an invocation, grouped by the invocation (a search and the fine-tune it runs share a group), named
for the job; tables (`wandb.Table`), plots (`wandb.Image`) and checkpoints (artifacts) go to wandb
when it runs, and never stop an experiment when they fail."""
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

    def _safely(self, what: str, action) -> None:
        if self.run is None:
            return
        try:
            action()
        except Exception as err:  # logging must never kill an experiment
            warnings.warn(f"wandb could not log {what} ({type(err).__name__}: {err})")

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """`rows` (dicts with the same keys; lists become strings) as a wandb.Table."""
        def action() -> None:
            import wandb

            columns = list(dict.fromkeys(k for row in rows for k in row))
            data = [[" ".join(map(str, v)) if isinstance(v, list) else v for v in (row.get(c) for c in columns)]
                    for row in rows]
            self.run.log({name: wandb.Table(columns=columns, data=data)})

        if rows:
            self._safely(f"table {name}", action)

    def images(self, paths: dict[str, Path]) -> None:
        """Plots (PNG files that exist) as wandb.Image, by name."""
        def action() -> None:
            import wandb

            self.run.log({name: wandb.Image(str(path)) for name, path in paths.items() if Path(path).is_file()})

        self._safely("plots", action)

    def artifact(self, path: Path, kind: str = "model") -> None:
        """A file (a pruned checkpoint) as a wandb artifact named after it."""
        def action() -> None:
            import wandb

            art = wandb.Artifact(Path(path).stem.replace("@", "-"), type=kind)
            art.add_file(str(path))
            self.run.log_artifact(art)

        self._safely(f"artifact {path}", action)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
