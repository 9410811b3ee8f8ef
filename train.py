"""Entry point: see conf/train.yaml. Logic lives in gaprune/ (`gaprune.cli`; pip-installed: `gaprune-train`)."""
from gaprune.cli import run

if __name__ == "__main__":
    run("train")
