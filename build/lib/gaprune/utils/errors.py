"""User-facing errors: the exception types every job raises (one clear line naming the bad value
and the fix, no traceback) and the exit codes; the entry points' wrapper that turns them into
that line is `gaprune.utils.job`."""
from __future__ import annotations

USER_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class GapruneError(Exception):
    """An error caused by the user's input or environment; printed as one line."""


class Interrupted(Exception):
    """Ctrl-C, with what was finished and how to continue: a message starting "interrupted ...",
    printed as one line, exit 130."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as a KeyboardInterrupt so a job stops as on Ctrl-C."""


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
