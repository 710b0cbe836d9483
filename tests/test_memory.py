"""Memory stays flat: it depends on the window, not on the length of the input."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import batch_task, single_task


@single_task
async def add_one(x: int) -> int:
    return x + 1


@single_task
async def maybe_wait(x: int) -> int:
    if x % 1000 == 0:
        await asyncio.sleep(0)  # some calls suspend, so both paths of the engine run
    return x * 2


@batch_task(max_size=64)
def batch_sum(batch: list[int]) -> int:
    return sum(batch)


async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def peak_growth(n: int, *, as_completed: bool = False, batched: bool = False) -> int:
    """Peak traced memory (bytes) above the starting point while streaming n items."""
    pipeline = add_one | maybe_wait
    if batched:
        pipeline = pipeline | batch_sum
    if as_completed:
        pipeline = pipeline.with_execution_mode("as_completed")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        count = 0
        async for _ in pipeline(numbers(n)):
            count += 1
        assert count == (n + 63) // 64 if batched else n
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_million_items_stream_in_constant_memory() -> None:
    growth = await peak_growth(1_000_000)
    # 1M ints held at once would take > 28 MB; the window (1000 items) takes well under 1.
    assert growth < 5 * 2**20, f"peak grew by {growth / 2**20:.1f} MiB"


_MEASURE = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import test_memory
async def main():
    for n in (20_000, 200_000):
        print(await test_memory.peak_growth(n, as_completed={as_completed}, batched={batched}))
asyncio.run(main())
"""


@pytest.mark.parametrize("as_completed", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_memory_does_not_grow_with_input_length(as_completed: bool, batched: bool) -> None:
    """Ten times the input, about the same peak (allowing for allocator noise).

    Measured in a process of its own: what earlier tests leave in the suite's process
    changes when the garbage collector runs. (After mypy had run in it, the batched
    ordered case's peak doubled with the input's length, 1.1 and 2.1 MB: each call the
    statistics timed left a reference cycle, freed by full collections only, which a
    process holding many objects makes rare. Now none does: the test below.)"""
    code = _MEASURE.format(
        tests=str(Path(__file__).parent), as_completed=as_completed, batched=batched
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True
    ).stdout.split()
    small, large = int(out[0]), int(out[1])
    assert large < small * 1.5 + 256 * 1024, (small, large)


@single_task(on_error="skip_item", retry_attempts=2, retry_delay=0)
def flaky(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(x)
    return x


def _cyclic_garbage(pipeline: Any, n: int) -> int:
    """Objects a run of ``n`` items leaves in reference cycles (found by a collection)."""

    async def run() -> None:
        async for _ in pipeline(numbers(n)):
            pass

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        asyncio.run(run())
        gc.collect()
        return len(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


@pytest.mark.parametrize(
    "shape",
    ["plain", "batched", "as_completed", "retried"],
)
def test_a_run_leaves_no_reference_cycles_per_item(shape: str) -> None:
    """Ten times the input, no more cyclic garbage: the engine's objects for an item
    (its call, a call the statistics time, a retry's error) are freed by reference
    counting as the item goes, not left for the garbage collector. (Each timed call
    left a cycle of ~20 objects; each retried item one of ~12.)"""
    pipeline: Any = add_one | maybe_wait
    if shape == "batched":
        pipeline = pipeline | batch_sum
    elif shape == "as_completed":
        pipeline = pipeline.with_execution_mode("as_completed")
    elif shape == "retried":
        pipeline = pipeline | flaky
    logging.getLogger("conveyor").disabled = True  # (a warning per retried item)
    try:
        _cyclic_garbage(pipeline, 100)  # (what a first run sets up once)
        small = _cyclic_garbage(pipeline, 2_000)
        large = _cyclic_garbage(pipeline, 20_000)
    finally:
        logging.getLogger("conveyor").disabled = False
    assert large <= small + 30, (small, large)
