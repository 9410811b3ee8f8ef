"""`python -m benchmarks.quality ...`: the command line is benchmarks/quality/cli.py (`--help`)."""
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # one line per finished item in the logs, no progress bars

from benchmarks.quality.cli import main  # noqa: E402

main()
