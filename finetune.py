"""Entry point: see conf/finetune.yaml. Logic lives in gaprune/ (`gaprune.cli`; pip-installed: `gaprune-finetune`)."""
from gaprune.cli import run

if __name__ == "__main__":
    run("finetune")
