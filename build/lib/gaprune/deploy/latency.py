"""Measured inference latency of a model on a device (`torch.utils.benchmark`).

Invariants:
- a measurement is `warmup` untimed calls, then `repeats` timed blocks of `number` calls each
  (`number` chosen so one block lasts about `min_block_s`); the reported time is the median of
  the per-call block means, in seconds; the model runs in eval mode under `torch.inference_mode`
  on a seeded random input of the example's shape with the asked batch size;
- `torch.utils.benchmark.Timer` synchronises CUDA (any accelerator) around each block, and runs
  with `threads` = `torch.get_num_threads()` (its own default is 1 thread), recorded in the result;
  `clock="cpu"` (CPU only) times the thread's CPU time on 1 thread instead of wall time, which
  does not count time lost to other processes on a shared machine;
- the model's train/eval mode and device are restored afterwards; weights are never changed.
`time_interleaved` times many callables against each other on a shared machine: round-robin
blocks (a fresh random order per round), so a slow spell hits one round of every callable, not all
rounds of one; callers reduce the per-round samples (the minimum: the least disturbed block).
`latency_fields` turns two measurements (batch 1 and a throughput batch) into the results-table
fields; `speedup_fields` compares them with the baseline's as ratios (> 1 means faster).
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.utils.errors import GapruneError


CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class LatencySettings:
    """The `finetune.latency` group: what the results table measures for every row."""

    enabled: bool = True
    batch: int = 1
    throughput_batch: int = 64
    warmup: int = 3
    repeats: int = 5  # median of this many timed blocks
    min_block_s: float = 0.01  # one timed block lasts about this long (many calls for tiny models)
    clock: str = "wall"  # wall | cpu (thread CPU time, 1 thread: robust on a machine shared with other jobs)

    def __post_init__(self) -> None:
        if int(self.batch) < 1 or int(self.throughput_batch) < 1:
            raise GapruneError(f"finetune.latency batch={self.batch} / throughput_batch={self.throughput_batch} "
                               "must be >= 1")
        if int(self.repeats) < 1 or int(self.warmup) < 0:
            raise GapruneError(f"finetune.latency repeats={self.repeats} must be >= 1 and warmup={self.warmup} >= 0")
        if self.clock not in CLOCKS:
            raise GapruneError(f"finetune.latency clock={self.clock!r} unknown; use one of {', '.join(CLOCKS)}")

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "LatencySettings | None":
        """None (no latency columns) when `params` is None or `enabled: false`."""
        if params is None:
            return None
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise GapruneError(f"finetune.latency has no option(s) {', '.join(sorted(unknown))}; options: "
                               f"{', '.join(cls.__dataclass_fields__)}")
        settings = cls(**params)
        return settings if settings.enabled else None


@dataclass(frozen=True)
class Timing:
    seconds: float  # median per-call time
    batch: int
    threads: int
    device: str
    number: int  # calls per timed block
    repeats: int
    clock: str = "wall"
    spread: float = 0.0  # (slowest - fastest block) / the reported time: how noisy the machine was

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_name(device: torch.device | str) -> str:
    """A readable device tag: `cpu` or the CUDA device's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def clock_threads(clock: str = "wall") -> int:
    """Threads a measurement runs with: torch's setting on the wall clock, 1 on the CPU clock."""
    return 1 if clock == "cpu" else torch.get_num_threads()


def timer_for(fn: Callable[[], Any], clock: str):
    """A torch.utils.benchmark Timer of `fn()` (imported here: importing it costs ~1.5 s). Importing
    it imports `torch.utils.cpp_extension`, which warns "No CUDA runtime is found" on a machine with a
    CUDA toolkit but no driver: nothing here compiles extensions, so that logger is quietened."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    extra = {"timer": time.thread_time} if clock == "cpu" else {}
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=clock_threads(clock), **extra)


def time_callable(fn: Callable[[], Any], warmup: int = 3, repeats: int = 7, min_block_s: float = 0.01,
                  clock: str = "wall", stat: str = "median") -> tuple[float, int]:
    """(median seconds per call, calls per block) of `fn` with torch.utils.benchmark; `clock=cpu`
    times the calling thread's CPU time on 1 thread (time lost to other processes is not counted);
    `stat=min` takes the fastest block instead of the median (benchmarks on a noisy machine)."""
    means, number = block_means(fn, warmup, repeats, min_block_s, clock)
    return float(min(means) if stat == "min" else statistics.median(means)), number


def block_means(fn: Callable[[], Any], warmup: int = 3, repeats: int = 7, min_block_s: float = 0.01,
                clock: str = "wall") -> tuple[list[float], int]:
    """(seconds per call of each of `repeats` timed blocks, calls per block) of `fn`."""
    timer = timer_for(fn, clock)
    for _ in range(max(0, warmup)):
        fn()
    first = timer.timeit(1).mean
    number = max(1, int(min_block_s / max(first, 1e-7)))
    return [float(timer.timeit(number).mean) for _ in range(max(1, repeats))], number


def inference_call(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """`module(x)` under `torch.inference_mode`, as a callable to time."""
    def forward() -> Any:
        with torch.inference_mode():
            return module(x)

    return forward


def time_interleaved(fns: Sequence[Callable[[], Any]], repeats: int = 15, min_block_s: float = 0.001,
                     clock: str = "wall", warmup: int = 2, seed: int = 0) -> np.ndarray:
    """Seconds per call, shape (repeats, len(fns)): round r times one block of every callable (about
    `min_block_s` each, at least one call) in a seeded random order; `Timer.timeit` runs untimed
    warm-up calls of the same callable before each block, so a block times it warm after the others."""
    timers, numbers = [], []
    for fn in fns:
        timer = timer_for(fn, clock)
        for _ in range(max(0, warmup)):
            fn()
        timers.append(timer)
        numbers.append(max(1, int(min_block_s / max(timer.timeit(1).mean, 1e-7))))
    order, rng = list(range(len(fns))), random.Random(seed)
    samples = np.empty((max(1, int(repeats)), len(fns)))
    for row in samples:
        rng.shuffle(order)
        for index in order:
            row[index] = timers[index].timeit(numbers[index]).mean
    return samples


def measure_latency(model: nn.Module, example: torch.Tensor, batch: int, device: torch.device | str,
                    warmup: int = 3, repeats: int = 7, min_block_s: float = 0.01, clock: str = "wall",
                    stat: str = "median") -> Timing:
    """Median per-forward time of `model` on `batch` inputs shaped like `example`, on `device`."""
    device = torch.device(device)
    was_training = model.training
    try:
        first = next(model.parameters())
        old_device = first.device
    except StopIteration:
        old_device = device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((int(batch), *example.shape[1:]), generator=generator).to(device)
    model.eval().to(device)
    try:
        means, number = block_means(inference_call(model, x), warmup, repeats, min_block_s, clock)
    finally:
        model.train(was_training).to(old_device)
    seconds = float(min(means) if stat == "min" else statistics.median(means))
    spread = (max(means) - min(means)) / seconds if seconds > 0 else 0.0
    return Timing(seconds, int(batch), clock_threads(clock), device_name(device), number, int(repeats), clock, spread)


def latency_fields(model: nn.Module, example: torch.Tensor, device, settings: LatencySettings) -> dict[str, Any]:
    """The table's latency fields of one model: batch latency (ms), throughput batch latency (ms)
    and images/s, threads and device."""
    kwargs = dict(warmup=settings.warmup, repeats=settings.repeats, min_block_s=settings.min_block_s,
                  clock=settings.clock)
    single = measure_latency(model, example, settings.batch, device, **kwargs)
    many = measure_latency(model, example, settings.throughput_batch, device, **kwargs)
    return {
        "latency_ms": 1e3 * single.seconds,
        "latency_batch": single.batch,
        "throughput_latency_ms": 1e3 * many.seconds,
        "throughput_batch": many.batch,
        "throughput": many.batch / many.seconds,
        "threads": single.threads,
        "latency_device": single.device,
        "latency_clock": single.clock,
        "latency_spread": single.spread,
        "throughput_spread": many.spread,
    }


def speedup_fields(pruned: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """Baseline time / pruned time at batch 1 and at the throughput batch."""
    return {"speedup": baseline["latency_ms"] / pruned["latency_ms"],
            "throughput_speedup": baseline["throughput_latency_ms"] / pruned["throughput_latency_ms"]}
