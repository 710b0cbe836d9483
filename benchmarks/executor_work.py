"""The functions the executors scenarios send to threads, processes and Dask workers.

They live here, at the top level of an importable module, because a worker process
unpickles a function by name: it imports ``benchmarks.executor_work`` and looks the
function up. (A function of ``__main__`` would not do: each worker would import the main
module again.) Standard library only, so that a worker imports nothing else.
"""

from __future__ import annotations

import time

SLEEP = 0.01
"""Seconds each blocking call sleeps."""


def spin(loops: int) -> int:
    """Pure-Python arithmetic: ``loops`` iterations (CPU-bound, holds the GIL)."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def cpu_work(loops: int, item: int) -> int:
    """Spin ``loops`` times, return the item: the CPU-bound task, used as
    ``functools.partial(cpu_work, loops)`` (a partial pickles by name too; the items stay
    plain ints, which every library passes as one argument)."""
    spin(loops)
    return item


def sleep_item(item: int) -> int:
    """A blocking call: sleep :data:`SLEEP` seconds (releases the GIL)."""
    time.sleep(SLEEP)
    return item


def identity(item: int) -> int:
    """The trivial function: what an executor costs per item, with no work in the way."""
    return item


def loops_for(seconds: float) -> int:
    """How many :func:`spin` loops take ``seconds`` here: a first guess from a probe, then
    corrected once by timing calls of the guessed size (the best of several timings)."""
    guess = max(1, round(20_000 * seconds / _best(20_000, 1)))
    calls = max(1, round(0.02 / seconds))  # ~20 ms a timing
    return max(1, round(guess * seconds / _best(guess, calls)))


def _best(loops: int, calls: int) -> float:
    """Seconds per call of ``spin(loops)``: the best of 7 timings of ``calls`` calls."""
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(calls):
            spin(loops)
        best = min(best, (time.perf_counter() - started) / calls)
    return best
