"""Entry point: see conf/train.yaml. Logic lives in gaprune/."""
import hydra
from omegaconf import DictConfig

from gaprune.utils.job import exit_on_user_error, hydra_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from gaprune.pipeline.train import run_train

    run_train(cfg)


if __name__ == "__main__":
    hydra_entry(main)
