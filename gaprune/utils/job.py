"""The entry points' job wrapper: every entry script runs through `hydra_entry` and
`exit_on_user_error`. Hydra's own errors (unknown group option, key typo, bad override syntax,
missing interpolation) and an unwritable output dir come out as one `gaprune: error:` line with
exit code 2, like a `GapruneError` raised by a job; Ctrl-C is one `gaprune: interrupted ...` line
with exit code 130, and so is SIGTERM (raised as `Terminated`, a KeyboardInterrupt, so every job
stops on it exactly as on Ctrl-C). Run-dir locks are released on every exit. What a job prints
also goes to its run dir's `<job>.log` (`console_to_log`). `HYDRA_FULL_ERROR=1` set by the user
keeps Hydra's full tracebacks.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
from typing import Any, Callable, Iterator, TypeVar

from gaprune.utils.errors import INTERRUPTED, USER_ERROR, GapruneError, Interrupted, Terminated, one_line
from gaprune.utils.lock import release_all

F = TypeVar("F", bound=Callable)


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one interrupt: the clean stop is not cut short again
    raise Terminated()


def handle_sigterm() -> None:
    """SIGTERM stops the job as Ctrl-C does (only in the process that runs the entry point, and only
    from the main thread: a cluster launcher's worker keeps its own handlers)."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _how(err: BaseException) -> str:
    return "interrupted (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"


def _fail(message: str, code: int, prefix: str = "error: ") -> None:
    print(f"gaprune: {prefix}{message}", file=sys.stderr, flush=True)
    _remove_empty_run_dir()
    sys.exit(code)


def exit_on_user_error(fn: F) -> F:
    """Wrap a job so a GapruneError (or a config interpolation error) prints one line and
    exits with code 2, and Ctrl-C prints one line and exits with code 130. A run dir left
    holding only Hydra's own files (a user error, or `resume=` continuing another run dir) is
    removed."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

        try:
            with console_to_log():
                result = fn(*args, **kwargs)
        except GapruneError as err:
            _fail(one_line(str(err)), USER_ERROR)
        except (InterpolationResolutionError, MissingMandatoryValue) as err:
            _fail(f"config: {one_line(str(err))}", USER_ERROR)
        except Interrupted as err:
            _fail(str(err), INTERRUPTED, "")
        except KeyboardInterrupt as err:
            _fail(_how(err), INTERRUPTED, "")
        _remove_empty_run_dir()
        return result

    return wrapper  # type: ignore[return-value]


class _Tee:
    """A console stream that also appends what is written to a log file (progress-bar redraws,
    which carry a carriage return, stay on the console only)."""

    def __init__(self, stream: Any, handle: Any) -> None:
        self.stream, self.handle = stream, handle

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if "\r" not in text:
            self.handle.write(text)
            self.handle.flush()
        return written

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def console_to_log() -> Iterator[None]:
    """While a Hydra job runs, what it prints to stdout / stderr also lands in its run dir's
    `<job name>.log`, next to Hydra's own log lines (nothing happens outside Hydra)."""
    from pathlib import Path

    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        path = Path(hydra.runtime.output_dir) / f"{hydra.job.name}.log"
    except Exception:  # not launched by Hydra
        yield
        return
    with open(path, "a", encoding="utf-8") as handle:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, handle), _Tee(stderr, handle)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = stdout, stderr


def _write_error(err: OSError) -> str | None:
    """One line for an OSError that means 'cannot write there', else None."""
    if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
        return None
    where = err.filename or "?"
    return (f"cannot create '{where}' ({os.strerror(err.errno)}); point paths.output_root= (run dirs) and "
            "paths.checkpoints= at writable directories")


def hydra_entry(main: Callable[[], Any]) -> None:
    """Run a `@hydra.main` function from the command line with one-line errors: Hydra's config
    errors (composition, overrides, missing keys) and unwritable run dirs exit 2, Ctrl-C exits
    130, both without a traceback. Hydra is made to raise instead of printing (HYDRA_FULL_ERROR
    for this process) unless the user asked for full errors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    handle_sigterm()
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except KeyboardInterrupt as err:
        _fail(_how(err), INTERRUPTED, "")
    except (HydraException, OmegaConfBaseException) as err:
        text = one_line(str(err))
        override = getattr(err, "override", None)
        if override:
            text = f"bad override '{override}': {text}"
        cause = err.__cause__
        if isinstance(cause, OmegaConfBaseException) and one_line(str(cause)) not in text:
            text += f": {one_line(str(cause))}"
        _fail(text, USER_ERROR)
    except OSError as err:
        message = _write_error(err)
        if message is None:
            raise
        _fail(message, USER_ERROR)


BOOKKEEPING = ("run_config.json", ".gaprune.lock")  # a run's own config and lock: not results


def _remove_empty_run_dir() -> None:
    """Leave nothing half-written: release this process's run-dir locks, then drop a Hydra run dir
    that holds only Hydra's own files (and the run's config)."""
    import shutil
    from pathlib import Path

    release_all()
    try:
        from hydra.core.hydra_config import HydraConfig

        run = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    if run.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" or p.name in BOOKKEEPING for p in run.iterdir()):
        shutil.rmtree(run, ignore_errors=True)
        parent, cwd = run.parent, Path.cwd().resolve()
        for _ in range(3):  # <output_root>/<task>[/multirun/<date>] folders made for this run alone
            if parent.resolve() == cwd or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
            parent = parent.parent
