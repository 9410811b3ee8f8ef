"""One process per run dir: a lock file holding the owner's pid, host and start time.

`hold(path, what)` takes the lock at `path` or refuses in one line naming the process that holds
it. A lock is held through `fcntl.flock` on the open file (released by the kernel when its process
dies, even by kill -9) and, where flock is not available, by its recorded pid alone: a lock whose
process is gone (not alive, or its pid now another process) is stale and taken over. Locks are
re-entrant within a process; `releasing` drops those a job took when it returns or fails, and
every lock is dropped at exit. A requeued cluster job (SUBMITIT_EXECUTOR) waits up to a minute
for its previous attempt to let go.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from gaprune.utils.errors import GapruneError

try:
    import fcntl
except ImportError:  # not POSIX: the recorded pid alone
    fcntl = None  # type: ignore[assignment]

LOCK = ".gaprune.lock"  # a run dir's lock file
F = TypeVar("F", bound=Callable)
_held: dict[Path, int] = {}  # lock path -> open file descriptor


def _started(pid: int) -> str | None:
    """The process's start time (Linux /proc), so a reused pid is not taken for the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _started(os.getpid())}


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process recorded in a lock still runs (on another host: assumed so)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if owner.get("host") not in (None, socket.gethostname()):  # a requeued cluster job's previous attempt is gone
        return not os.environ.get("SUBMITIT_EXECUTOR")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = _started(pid)
    return owner.get("started") is None or started is None or started == owner["started"]


def _read(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _try(path: Path) -> tuple[int | None, dict[str, Any]]:
    """(fd of the lock now held, {}) or (None, the holder's record)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read(fd)
                os.close(fd)
                return None, owner or {"pid": "?"}
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # released and unlinked meanwhile: try again
            os.close(fd)
            return _try(path)
        owner = _read(fd)
        if owner.get("pid") != os.getpid() and _alive(owner):
            os.close(fd)
            return None, owner
    except BaseException:
        os.close(fd)
        raise
    data = json.dumps(_owner()).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return fd, {}


def hold(path: Path | str, what: str) -> None:
    """Take the lock file `path` for this process (no-op when it already holds it), or raise a
    GapruneError naming `what` is locked and by which process."""
    path = Path(path).absolute()
    if path in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + (60.0 if os.environ.get("SUBMITIT_EXECUTOR") else 0.0)
    while True:
        try:
            fd, owner = _try(path)
        except OSError as err:
            raise GapruneError(f"cannot take the lock '{path}' of {what} ({err.strerror or err}); remove what is "
                               "there or use another run dir") from None
        if fd is not None:
            _held[path] = fd
            return
        if time.monotonic() >= deadline:
            host = f" on {owner['host']}" if owner.get("host") not in (None, socket.gethostname()) else ""
            raise GapruneError(f"{what} is in use by process {owner.get('pid', '?')}{host} (lock '{path}'); wait for "
                               "it to finish or stop it, or use another run dir")
        time.sleep(0.5)


def release(path: Path | str) -> None:
    path = Path(path).absolute()
    fd = _held.pop(path, None)
    if fd is None:
        return
    try:
        path.unlink(missing_ok=True)  # before unlocking: a waiter then re-checks the inode and starts afresh
    finally:
        os.close(fd)


def release_all() -> None:
    for path in list(_held):
        release(path)


def held() -> list[Path]:
    return list(_held)


def releasing(fn: F) -> F:
    """Release the locks `fn` takes when it returns or raises (the run's files stay consistent)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = set(_held)
        try:
            return fn(*args, **kwargs)
        finally:
            for path in [p for p in _held if p not in before]:
                release(path)

    return wrapper  # type: ignore[return-value]


atexit.register(release_all)
