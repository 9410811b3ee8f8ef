"""Everything about a pruning plan on a model: plan types and JSON (`plan`), prunable units
(`units`), applying a plan by masks (`masking`), by sliced tensors (`slicing`) or physically
(`physical`), its cost (`cost`), channel importance and keep strategies."""
