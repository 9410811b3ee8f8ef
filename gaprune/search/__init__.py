"""Searching plans: genome encodings, fitness proxies, the search problem, DEAP optimizers,
Pareto picks, and the layer-wise weight-mask GA (`layerwise`)."""
