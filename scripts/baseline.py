"""DEPRECATED for one release: scripts/oneshot.py replaces it ("baseline" now means only the
unpruned reference model). Prints one notice line, maps method=/method.* overrides to
oneshot=/oneshot.* and runs scripts/oneshot.py."""
import re
import runpy
import sys
from pathlib import Path

NOTICE = "scripts/baseline.py is deprecated; use scripts/oneshot.py oneshot=<name> (same options)"


def translate(args: list[str]) -> list[str]:
    return [re.sub(r"^([+~]{0,2})method(?=[.=]|$)", r"\1oneshot", arg) for arg in args]


if __name__ == "__main__":
    print(NOTICE, file=sys.stderr)
    script = str(Path(__file__).with_name("oneshot.py"))
    sys.argv[:] = [script, *translate(sys.argv[1:])]
    runpy.run_path(script, run_name="__main__")
