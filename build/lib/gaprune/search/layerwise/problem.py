"""One layer's weight mask as a search problem for the shared optimizers (`gaprune.search.optimizers`).

Invariants:
- The genome is one bit per weight of the layer, flat in the weight's memory order (1 = kept):
  `BitMaskEncoding` has n_real = 0, n_discrete = #weights, choices = 2 and `bit_genome = True`, so
  the optimizers hold genomes as numpy bool arrays and use their vectorised bit operators.
- `LayerProblem` has the shape of `gaprune.search.problem.Problem`: `evaluate(genomes, generation)`
  returns one record per genome with "score" = w_acc * calibration accuracy + w_sparsity * layer
  sparsity; identical masks are scored once (cache, `cache_hits`); `records` holds every mask
  scored, in order (without the genome: it can have 10^6 bits).
- Accuracy comes from `LayerEvaluator` (a chunk of masks per forward pass); the model is unchanged.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

import numpy as np

from gaprune.search.layerwise.evaluate import LayerEvaluator


class BitMaskEncoding:
    """Genome layout of one layer's weight mask; random masks keep each weight with `keep_prob`."""

    bit_genome = True
    n_real = 0
    choices = 2
    low, high = 0.0, 1.0

    def __init__(self, size: int, keep_prob: float) -> None:
        self.n_discrete = self.size = int(size)
        self.keep_prob = float(keep_prob)

    def random_genome(self, rng: random.Random) -> np.ndarray:
        return np.random.default_rng(rng.getrandbits(64)).random(self.size) < self.keep_prob

    def full_genome(self) -> np.ndarray:
        return np.ones(self.size, dtype=bool)


def mask_key(bits: np.ndarray) -> bytes:
    return hashlib.sha1(np.packbits(bits).tobytes()).digest()


class LayerProblem:
    """Calibration accuracy and sparsity of masks of one layer, as optimizer records."""

    weights = (1.0,)

    def __init__(self, evaluator: LayerEvaluator, keep_prob: float, w_acc: float, w_sparsity: float) -> None:
        self.evaluator = evaluator
        self.encoding = BitMaskEncoding(evaluator.size, keep_prob)
        self.w_acc, self.w_sparsity = float(w_acc), float(w_sparsity)
        self.records: list[dict[str, Any]] = []
        self._cache: dict[bytes, dict[str, Any]] = {}
        self.cache_hits = 0

    def evaluate(self, genomes: Sequence[Any], generation: int) -> list[dict[str, Any]]:
        bits = [np.asarray(genome, dtype=bool) for genome in genomes]
        keys = [mask_key(b) for b in bits]
        fresh: dict[bytes, int] = {}
        for index, key in enumerate(keys):
            if key not in self._cache and key not in fresh:
                fresh[key] = index
        self.cache_hits += len(keys) - len(fresh)
        if fresh:
            accs = self.evaluator.accuracy(np.stack([bits[i] for i in fresh.values()]))
            for (key, index), acc in zip(fresh.items(), accs):
                self._cache[key] = self._record(bits[index], float(acc), generation)
        return [self._cache[key] for key in keys]

    def record_of(self, genome: Any) -> dict[str, Any]:
        """The record of an already evaluated mask."""
        return self._cache[mask_key(np.asarray(genome, dtype=bool))]

    def _record(self, bits: np.ndarray, acc: float, generation: int) -> dict[str, Any]:
        sparsity = 1.0 - float(bits.mean())
        record = {"id": len(self.records), "generation": generation, "accuracy": acc, "sparsity": sparsity,
                  "kept": int(bits.sum()), "score": self.w_acc * acc + self.w_sparsity * sparsity}
        self.records.append(record)
        return record

    def values(self, record: dict[str, Any]) -> tuple[float, ...]:
        return (record["score"],)
