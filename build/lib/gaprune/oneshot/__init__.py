"""One-shot pruners for the tables (SPEC "Baselines": global Taylor, uniform L1, slimming, global
magnitude, uniform, ERK, LAMP, rate-distortion), all fine-tuned with the same recipe as search
picks (`gaprune.engine.finetune`). `PRUNERS` maps `oneshot.name` to the class."""
from gaprune.oneshot import rate_distortion, structured, unstructured  # noqa: F401  (register pruners)
from gaprune.oneshot.base import OneshotContext, OneshotResult, PRUNERS, Pruner, build_pruner

__all__ = ["PRUNERS", "OneshotContext", "OneshotResult", "Pruner", "build_pruner"]
