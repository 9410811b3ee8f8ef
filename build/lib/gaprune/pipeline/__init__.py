"""The jobs behind the entry scripts, and the only code that reads a DictConfig: one shared run
setup (`setup`), one job lifecycle (`lifecycle.job_run`: run dir, logger, Ctrl-C line, summary)
and the train / search / finetune / oneshot / layerwise jobs."""
