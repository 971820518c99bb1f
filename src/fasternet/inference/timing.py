"""Wall-clock timing that is right on GPUs too: every timed call waits for the work it queued.

One place for it, so that the benchmark, the runners' autotuning, the fused-kernel stage choice
and the per-layer profile all time the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["interleaved", "median_seconds", "synchronize"]


def synchronize() -> None:
    """Wait for queued GPU work; a no-op in a process that has not used CUDA."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(
    calls: dict[Any, Callable[[], Any]], *, rounds: int, per_round: int, warmup: int, settle: int = 3
) -> dict[Any, list[float]]:
    """Seconds of each timed call, per key; each round times every call a few times in turn.

    Interleaving makes slow drifts of a shared machine (turbo, neighbours) hit every
    configuration alike; ``settle`` untimed calls before each turn let the previous engine's
    threads go idle and wake this one's.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
        synchronize()
    times: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            for _ in range(settle):
                call()
            synchronize()
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                synchronize()
                times[key].append(time.perf_counter() - start)
    return times


def median_seconds(call: Callable[[], Any], *, repeats: int = 10, warmup: int = 3) -> float:
    """Median seconds of ``call()`` over ``repeats`` timed calls after ``warmup`` untimed ones."""
    return statistics.median(interleaved({0: call}, rounds=1, per_round=repeats, warmup=warmup, settle=0)[0])
