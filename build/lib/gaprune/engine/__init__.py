"""Training, evaluation and KD (`training`), the shared fine-tune job (`finetune`), checkpoints
(`checkpoint`)."""
