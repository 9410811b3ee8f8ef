"""A job's lifecycle in one context manager (`job_run`), so every pipeline (train, grow-and-prune,
search, layer-wise search, finetune, one-shot) opens, logs, stops and finishes the same way:

    with job_run(cfg, "search", markers=(STATE,), kind="search") as job:
        ...                                    # job.run: the Run (`open_run`), job.directory
        logger = job.logger                    # made on first use
        job.report("after generation 3")       # what Ctrl-C reports from here on
        job.finish(summary, "search_summary.json")

On entry the run dir is opened (`gaprune.pipeline.setup.open_run`: checks, resume, lock, run
config, seed, device, data). The logger (`make_logger`) is made on first use, not on entry: a job
that fails its setup checks leaves no logger files behind, and a baseline trained first (its own
job, with its own wandb run) does not finish the caller's wandb run. Ctrl-C (or SIGTERM) inside
the block raises `Interrupted` with one line, "interrupted <progress>; <next step>", the next step
defaulting to the exact command that resumes the run (`gaprune.pipeline.runconfig.resume_with`);
while `progress` is None (the setup, before anything resumable is saved) the KeyboardInterrupt
goes on unchanged (the entry wrapper's "interrupted (Ctrl-C)"). The logger is finished on every
exit. The process-level entry wrapper (one-line errors, exit codes) is `gaprune.utils.job`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from omegaconf import DictConfig

from gaprune.pipeline.runconfig import resume_with
from gaprune.pipeline.setup import Run, make_logger, open_run
from gaprune.utils.errors import Interrupted
from gaprune.utils.io import write_json
from gaprune.utils.tracking import RunLogger


@dataclass
class JobRun:
    """One job inside `job_run`: its run, its logger and what an interrupt reports.

    `progress` says what is finished or under way ("after generation 3"); a callable is asked at
    the interrupt (e.g. to read the last saved epoch from disk). `next_step` replaces "resume with
    <command>" where the run cannot be resumed that way ("nothing to resume, start the search
    again"). `resume_dir` is the run dir the resume command names (default: this job's)."""

    cfg: DictConfig
    run: Run
    job_type: str
    progress: str | Callable[[], str] | None = None
    next_step: str | None = None
    resume_dir: Path | None = None
    _logger: RunLogger | None = None

    @property
    def directory(self) -> Path:
        return self.run.directory

    @property
    def logger(self) -> RunLogger:
        """The job's RunLogger (wandb group and name as `make_logger` gives), made on first use."""
        if self._logger is None:
            self._logger = make_logger(self.cfg, self.directory, self.job_type)
        return self._logger

    def report(self, progress: str | Callable[[], str] | None, next_step: str | None = None) -> None:
        """What Ctrl-C reports from now on: "interrupted <progress>; <next_step>" (next_step None:
        "resume with <the command that continues this run>"; progress None: nothing of the job's own)."""
        self.progress, self.next_step = progress, next_step

    def interrupted(self) -> Interrupted:
        """The one line Ctrl-C prints here: "interrupted <progress>; <next step>"."""
        progress = self.progress() if callable(self.progress) else self.progress
        next_step = self.next_step or f"resume with {resume_with(self.resume_dir or self.directory)}"
        return Interrupted(f"interrupted {progress}; {next_step}")

    def finish(self, summary: dict[str, Any], file: str, logged: dict[str, Any] | None = None) -> None:
        """Write `summary` to <run dir>/<file> (atomically), give the logger its summary and finish it.

        Args:
            summary: the job's summary record.
            file: its file name in the run dir (e.g. search_summary.json).
            logged: the logger's summary values (default: the numbers in `summary`).
        """
        write_json(self.directory / file, summary)
        self.logger.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))} if logged is None else logged)
        self.close_logger()

    def close_logger(self) -> None:
        """Finish the logger if one was made (again is harmless)."""
        if self._logger is not None:
            self._logger.finish()


@contextmanager
def job_run(cfg: DictConfig, job_type: str, markers: Sequence[str] = (), kind: str = "", directory: Path | None = None,
            data: bool = True, resolve: Callable[[dict[str, Any] | None], dict[str, Any]] | None = None
            ) -> Iterator[JobRun]:
    """Open the run dir, hand the job over, and stop or finish it the one way every job does.

    Args:
        cfg: the job's config.
        job_type: the logger's job type (train | search | finetune | oneshot).
        markers, kind, directory, data, resolve: as in `gaprune.pipeline.setup.open_run` (markers
            given: a resumable run dir, locked; kind names it in messages).

    Returns:
        A context manager giving the `JobRun`; Ctrl-C inside it raises `Interrupted` once the
        job has set `progress`, and the logger is finished on every exit.
    """
    job = JobRun(cfg, open_run(cfg, markers, kind, directory=directory, data=data, resolve=resolve), job_type)
    try:
        yield job
    except KeyboardInterrupt:
        if job.progress is None:
            raise
        raise job.interrupted() from None
    finally:
        job.close_logger()
