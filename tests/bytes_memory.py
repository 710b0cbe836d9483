"""Child process of tests/test_window_bytes.py's RSS test: ``python bytes_memory.py EXECUTOR``.

Streams 200 items of 8 MiB behind a slow consumer through one task on EXECUTOR
(``inline``, ``thread``, ``process`` or ``batch``) with the default byte bound
(``max_in_flight_bytes``, 64 MiB), and prints one JSON line: the results taken and the
peak RSS growth of this process over its RSS before the run (after a warm-up run). A
fresh process per executor keeps the peak this run's alone. Linux only (it reads /proc).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from frames_memory import Sampler, current_rss, peak_rss, reset_peak_rss

import conveyor
from conveyor import batch_task, single_task

MB = 1 << 20
ITEM = 8 * MB


def blocks(count: int) -> Iterator[bytes]:
    for n in range(count):
        yield bytes([n % 251]) * ITEM  # (written: every page resident)


def stage(executor: str) -> Any:
    if executor == "batch":
        return batch_task(max_size=4)(lambda items: [len(item) for item in items])
    # ``bytes`` returns its argument: on a process, a new copy of the item comes back.
    return single_task(executor=None if executor == "inline" else executor)(bytes)


async def consume(executor: str, count: int) -> int:
    taken = 0
    async for _ in stage(executor)(blocks(count)):
        taken += 1
        await asyncio.sleep(0.02)  # a slow consumer
    return taken


def main() -> dict[str, Any]:
    executor = sys.argv[1]
    conveyor.run(consume(executor, 20))  # warm-up: imports, workers' start, allocator
    before = current_rss()
    reset = reset_peak_rss()
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    taken = conveyor.run(consume(executor, 200))
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    peak = max(sampler.peak, peak_rss()) if reset else sampler.peak
    return {
        "taken": taken,
        "seconds": seconds,
        "peak_growth_mb": max(0, peak - before) / MB,  # (MiB)
        "hwm_reset": reset,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
