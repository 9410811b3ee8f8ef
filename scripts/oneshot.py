"""Entry point: see conf/oneshot.yaml. Logic lives in gaprune/pipeline/oneshot.py.

python scripts/oneshot.py oneshot=global_taylor oneshot.params.rule=min target_macs_reduction=0.6
python scripts/oneshot.py oneshot=lamp target_sparsity=0.9 model=vgg16 dataset=cifar10
"""
import hydra
from omegaconf import DictConfig

from gaprune.utils.job import exit_on_user_error, hydra_entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="oneshot")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from gaprune.pipeline.oneshot import run_oneshot

    run_oneshot(cfg)


if __name__ == "__main__":
    hydra_entry(main)
