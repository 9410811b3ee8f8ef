"""The layer-by-layer weight-mask GA (searcher=layerwise_weight_mask): per conv / linear layer, in
forward order, a GA over one bit per weight (`ga`), scored a population chunk per forward pass
(`evaluate`). Its pipeline job (run dir, resume, records) is `gaprune.pipeline.layerwise`."""
from gaprune.search.layerwise.evaluate import LayerEvaluator, model_accuracy
from gaprune.search.layerwise.ga import (LayerOutcome, LayerwiseResult, WeightMaskConfig, evolve_layer, forward_order,
                                         layer_seed, resolve_layers, search_layers)

__all__ = ["LayerEvaluator", "LayerOutcome", "LayerwiseResult", "WeightMaskConfig", "evolve_layer", "forward_order",
           "layer_seed", "model_accuracy", "resolve_layers", "search_layers"]
