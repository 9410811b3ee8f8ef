"""One-shot baseline pruners for the tables (SPEC "Baselines"), all fine-tuned with the same
recipe as search picks (`gaprune.finetune`). `METHODS` maps `method.name` to the class."""
from gaprune.baselines.base import METHODS, BaselineContext, BaselineResult, Method, build_method
from gaprune.baselines import rate_distortion, structured, unstructured  # noqa: F401  (register methods)

__all__ = ["METHODS", "BaselineContext", "BaselineResult", "Method", "build_method"]
