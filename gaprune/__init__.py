"""gaprune: layer-wise pruning plans for CNNs found with genetic algorithms."""

__version__ = "0.1.0"
