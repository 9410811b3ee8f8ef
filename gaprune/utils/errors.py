"""User-facing errors: one clear line naming the bad value and the fix, no traceback.

Every entry script runs through `hydra_entry`: Hydra's own errors (unknown group option, key
typo, bad override syntax, missing interpolation) and an unwritable output dir come out as one
`gaprune: error:` line with exit code 2, like a `GapruneError` raised by a job; Ctrl-C is one
`gaprune: interrupted ...` line with exit code 130. `HYDRA_FULL_ERROR=1` set by the user keeps
Hydra's full tracebacks.
"""
from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable)

USER_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class GapruneError(Exception):
    """An error caused by the user's input or environment; printed as one line."""


class Interrupted(Exception):
    """Ctrl-C, with what was finished and how to continue: a message starting "interrupted ...",
    printed as one line, exit 130."""


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
            result = fn(*args, **kwargs)
        except GapruneError as err:
            _fail(one_line(str(err)), USER_ERROR)
        except (InterpolationResolutionError, MissingMandatoryValue) as err:
            _fail(f"config: {one_line(str(err))}", USER_ERROR)
        except Interrupted as err:
            _fail(str(err), INTERRUPTED, "")
        except KeyboardInterrupt:
            _fail("interrupted (Ctrl-C)", INTERRUPTED, "")
        _remove_empty_run_dir()
        return result

    return wrapper  # type: ignore[return-value]


def one_line(message: str) -> str:
    """A multi-line library message (Hydra, OmegaConf) folded into one line: indented lines
    become a comma-separated list, OmegaConf's `full_key:` / `object_type=` trailers and Hydra's
    HYDRA_FULL_ERROR hint are dropped."""
    parts: list[str] = []
    for line in str(message).splitlines():
        text = line.strip()
        if not text or text.startswith(("full_key:", "object_type=", "reference_type=", "Set the environment variable",
                                        "See https://hydra.cc")):
            continue
        if text.startswith("Config search path"):
            break
        if line[:1] in ("\t", " ") and parts:
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + text
        else:
            parts.append(text.rstrip("."))
    return "; ".join(parts) or str(message).strip()


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

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C)", INTERRUPTED, "")
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


def _remove_empty_run_dir() -> None:
    """Leave nothing half-written: drop a Hydra run dir that holds only Hydra's own files."""
    import shutil
    from pathlib import Path

    try:
        from hydra.core.hydra_config import HydraConfig

        run = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    if run.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run.iterdir()):
        shutil.rmtree(run, ignore_errors=True)
        parent, cwd = run.parent, Path.cwd().resolve()
        for _ in range(3):  # <output_root>/<task>[/multirun/<date>] folders made for this run alone
            if parent.resolve() == cwd or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
            parent = parent.parent
