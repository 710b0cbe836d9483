"""Memory scenario child process: ``python -m benchmarks.memory conveyor|aiostream``.

Runs 1 KiB items (made one by one inside an async generator) through an ordered
two-stage pipeline under tracemalloc, and reports the peak growth of traced memory and
the RSS growth: peak RSS during the run (VmHWM, and RSS sampled every 1024 results) minus
RSS before it; tracemalloc is started before the baseline is taken, so its tables are not
counted. Prints one JSON line. A fresh process per measurement keeps RSS meaningful.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

from conveyor import single_task

from . import baselines as bl
from .common import run_on

ITEM_SIZE = 1024


async def source(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"x" * ITEM_SIZE


async def first(item: bytes) -> bytes:
    return item


async def second(item: bytes) -> bytes:
    return item


PIPELINE = single_task(first) | single_task(second)


class RssSampler:
    """Peak RSS, sampled by the consumer every ``every`` items (ru_maxrss is updated
    lazily by Linux, so it can miss a peak that has not been unmapped yet)."""

    def __init__(self, every: int = 1024) -> None:
        self.every = every
        self.count = 0
        self.peak = current_rss()

    def tick(self) -> None:
        self.count += 1
        if self.count % self.every == 0:
            self.peak = max(self.peak, current_rss())


async def run_conveyor(n: int, sampler: RssSampler | None = None) -> int:
    total = 0
    async for item in PIPELINE(source(n)):
        total += len(item)
        if sampler is not None:
            sampler.tick()
    return total


async def run_aiostream(n: int, sampler: RssSampler | None = None) -> int:
    total = 0
    xs = bl.aiostream_chain((first, second), source(n), task_limit=64, ordered=True)
    async with xs.stream() as streamer:
        async for item in streamer:
            total += len(item)
            if sampler is not None:
                sampler.tick()
    return total


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water_rss() -> int:
    """VmHWM: this process's peak RSS since exec. (``ru_maxrss`` is not used: Linux
    carries it over from the parent across fork+exec, so it reports the parent's RSS.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


async def measure(impl: str, n: int) -> dict[str, Any]:
    run = run_conveyor if impl == "conveyor" else run_aiostream
    # tracemalloc starts before the warm-up, so its own tables are in the RSS baseline
    tracemalloc.start()
    await run(1_000)  # warm-up: imports, code paths, allocator pools
    gc.collect()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    rss_before = current_rss()
    hwm_before = high_water_rss()
    sampler = RssSampler()
    start = time.perf_counter()
    total = await run(n, sampler)
    seconds = time.perf_counter() - start
    peak_rss = sampler.peak
    if (hwm_after := high_water_rss()) > hwm_before:  # the process peak was in this run
        peak_rss = max(peak_rss, hwm_after)
    rss_growth = max(0, peak_rss - rss_before)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == n * ITEM_SIZE, (total, n)
    return {
        "impl": impl,
        "items": n,
        "seconds": seconds,
        "peak_growth": peak - base,
        "rss_growth": rss_growth,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("impl", choices=("conveyor", "aiostream"))
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(run_on(args.loop, measure(args.impl, args.items))))


if __name__ == "__main__":
    main()
