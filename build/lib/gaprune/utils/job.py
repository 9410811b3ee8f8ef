"""The entry points' job wrapper: every entry script runs through `hydra_entry` and
`exit_on_user_error`. Hydra's own errors (unknown group option, key typo, bad override syntax,
missing interpolation) and an unwritable output dir come out as one `gaprune: error:` line with
exit code 2, like a `GapruneError` raised by a job and an OSError of the environment (a full
disk, a read-only or forbidden folder, a name too long: `os_error_line`, naming the file and what
to do); Ctrl-C is one `gaprune: interrupted ...` line with exit code 130, and so is SIGTERM
(raised as `Terminated`, a KeyboardInterrupt, so every job stops on it exactly as on Ctrl-C).
Run-dir locks are released on every exit. What a job prints also goes to its run dir's
`<job>.log` (`console_to_log`). `HYDRA_FULL_ERROR=1` set by the user keeps Hydra's full
tracebacks.
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


RUN_PATHS = "paths.output_root= (run dirs) and paths.checkpoints= (checkpoints)"


def exit_on_user_error(fn: F | None = None, *, elsewhere: str = RUN_PATHS) -> F:
    """Wrap a job so a GapruneError (or a config interpolation error) prints one line and
    exits with code 2, and Ctrl-C prints one line and exits with code 130. An OSError of the
    environment (a full disk, a read-only or forbidden folder, a name too long: `os_error_line`)
    is one line naming the file and `elsewhere` (the options that move what the job writes),
    exit 2. A run dir left holding only Hydra's own files (a user error, or `resume=` continuing
    another run dir) is removed. Also `@exit_on_user_error(elsewhere="--out")`."""
    if fn is None:
        return functools.partial(exit_on_user_error, elsewhere=elsewhere)  # type: ignore[return-value]

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
        except OSError as err:
            message = os_error_line(err, elsewhere)
            if message is None:
                raise
            _fail(message, USER_ERROR)
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
        if "\r" not in text and self.handle is not None:
            try:
                self.handle.write(text)
                self.handle.flush()
            except OSError:  # a full disk: the console keeps the job's output, the job's own writes fail
                self.handle = None
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
    try:
        handle = open(path, "a", encoding="utf-8")
    except OSError:  # the run dir cannot be written: the job's own first write says so in one line
        yield
        return
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(stdout, handle), _Tee(stderr, handle)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        with contextlib.suppress(OSError):
            handle.close()


ADVICE = {  # errno -> (what failed, what to do with `elsewhere`)
    errno.ENOSPC: ("cannot write", "free space there, or point {} at another disk"),
    errno.EDQUOT: ("cannot write", "free space there (a disk quota), or point {} at another disk"),
    errno.EROFS: ("cannot write", "point {} at writable directories"),
    errno.EACCES: ("cannot access", "give this user access to it, or point {} at writable directories"),
    errno.EPERM: ("cannot access", "give this user access to it, or point {} at writable directories"),
    errno.ENAMETOOLONG: ("cannot create", "use shorter names: point {} at shorter paths"),
    errno.ENOTDIR: ("cannot create", "a file is in the way of a folder; point {} elsewhere"),
    errno.EEXIST: ("cannot create", "a file is in the way of a folder; point {} elsewhere"),
    errno.EISDIR: ("cannot write", "a folder is in the way of a file; point {} elsewhere"),
}


def os_error_line(err: OSError, elsewhere: str = RUN_PATHS) -> str | None:
    """One line for an OSError of the environment (full disk, read-only or forbidden folder, name
    too long, a file where a folder belongs), naming the path (this job's run dir when the error
    names none) and what to do; None for any other OSError (a bug: its traceback is kept)."""
    if err.errno not in ADVICE:
        return None
    failed, fix = ADVICE[err.errno]
    where = err.filename if err.filename is not None else _run_dir_or(None)
    target = f"'{where}'" if where is not None else "a file"
    return f"{failed} {target} ({os.strerror(err.errno)}); {fix.format(elsewhere)}"


def _run_dir_or(default: str | None) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.output_dir)
    except Exception:
        return default


RENAMED = {"objective.": "score.", "finalists.calib_samples": "finalists.val_samples"}  # old -> new, one release


def renamed_overrides(overrides: list[str]) -> list[str]:
    """Overrides spelled the way of the previous release, rewritten, with one notice line each.

    Args:
        overrides: the command line after the script's name.

    Returns:
        The same overrides, renamed keys spelled the current way.
    """
    out = []
    for override in overrides:
        prefix = override[: len(override) - len(override.lstrip("+~"))]
        for old, new in RENAMED.items():
            if override[len(prefix):].startswith(old):
                key = override[len(prefix):].split("=")[0]
                override = prefix + new + override[len(prefix) + len(old):]
                print(f"gaprune: {key} is now {new + key[len(old):]} (the old name works for one release)",
                      file=sys.stderr)
        out.append(override)
    return out


def hydra_entry(main: Callable[[], Any]) -> None:
    """Run a `@hydra.main` function from the command line with one-line errors: Hydra's config
    errors (composition, overrides, missing keys) and unwritable run dirs exit 2, Ctrl-C exits
    130, both without a traceback. Hydra is made to raise instead of printing (HYDRA_FULL_ERROR
    for this process) unless the user asked for full errors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    handle_sigterm()
    sys.argv[1:] = renamed_overrides(sys.argv[1:])
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except KeyboardInterrupt as err:
        _fail(_how(err), INTERRUPTED, "")
    except (HydraException, OmegaConfBaseException) as err:
        _fail(config_error_line(err), USER_ERROR)
    except GapruneError as err:  # raised before any job (the sweep's up-front checks)
        _fail(one_line(str(err)), USER_ERROR)
    except OSError as err:  # Hydra creating the run dir
        message = os_error_line(err)
        if message is None:
            raise
        _fail(message, USER_ERROR)


def config_error_line(err: Exception) -> str:
    """One line for a Hydra / OmegaConf error: the bad override and the cause when they say more."""
    from omegaconf.errors import OmegaConfBaseException

    text = one_line(str(err))
    override = getattr(err, "override", None)
    if override:
        text = f"bad override '{override}': {text}"
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and one_line(str(cause)) not in text:
        text += f": {one_line(str(cause))}"
    return text


def refuse(message: str) -> None:
    """One `gaprune: error:` line and exit 2 from outside any job (a sweep refused up front: Hydra
    only warns about an exception raised by a callback, so this exits instead)."""
    release_all()
    print(f"gaprune: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR)


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
