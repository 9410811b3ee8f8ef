"""Searching plans: genome encodings, fitness proxies, the search problem, DEAP optimizers,
Pareto picks, and the layer-wise weight-mask GA (`layerwise`).

This package is also the API's `gaprune.search(model, example_inputs, calib_data, ...)`: calling
it runs `gaprune.api.search` (imported on the first call), so `import gaprune;
gaprune.search(...)` works whether or not this subpackage was imported first.
"""
import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from gaprune.api import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
