"""Entry point: see conf/baseline.yaml. Logic lives in gaprune/baselines/.

python scripts/baseline.py method=global_taylor method.params.rule=min target_macs_reduction=0.6
python scripts/baseline.py method=lamp target_sparsity=0.9 model=vgg16 dataset=cifar10
"""
import hydra
from omegaconf import DictConfig

from gaprune.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="baseline")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from gaprune.baselines.run import run_baseline

    run_baseline(cfg)


if __name__ == "__main__":
    main()
