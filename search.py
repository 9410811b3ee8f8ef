"""Entry point: see conf/search.yaml. Logic lives in gaprune/ (`gaprune.cli`; pip-installed: `gaprune-search`)."""
from gaprune.cli import run

if __name__ == "__main__":
    run("search")
