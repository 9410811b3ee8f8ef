"""The layer-by-layer weight-mask GA (searcher=layerwise_weight_mask): per conv / linear layer, in
forward order, the shared optimizer "ga" over one bit per weight (`ga`, `problem`), scored a
population chunk per forward pass (`evaluate`). Its pipeline job (run dir, resume, records) is
`gaprune.pipeline.layerwise`."""
from gaprune.search.layerwise.evaluate import LayerEvaluator
from gaprune.search.layerwise.ga import (LayerOutcome, LayerwiseResult, WeightMaskConfig, evolve_layer, forward_order,
                                         layer_optimizer, layer_seed, resolve_layers, search_layers)
from gaprune.search.layerwise.problem import BitMaskEncoding, LayerProblem

__all__ = ["BitMaskEncoding", "LayerEvaluator", "LayerOutcome", "LayerProblem", "LayerwiseResult", "WeightMaskConfig",
           "evolve_layer", "forward_order", "layer_optimizer", "layer_seed", "resolve_layers", "search_layers"]
