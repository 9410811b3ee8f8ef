"""The jobs behind the entry scripts, and the only code that reads a DictConfig: one shared run
setup (`setup`) and the train / search / finetune / oneshot / layerwise jobs."""
