"""Entry point: see conf/oneshot.yaml. Logic lives in gaprune/pipeline/oneshot.py (pip-installed:
`gaprune-oneshot`).

python scripts/oneshot.py oneshot=global_taylor oneshot.params.rule=min target_macs_reduction=0.6
python scripts/oneshot.py oneshot=lamp target_sparsity=0.9 model=vgg16 dataset=cifar10
"""
from gaprune.cli import run

if __name__ == "__main__":
    run("oneshot")
