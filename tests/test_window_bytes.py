"""``max_in_flight_bytes``: large items bound the input by their weight, not their count."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conveyor import PipelineContext, batch_task, single_task
from conveyor._engine._weight import PROBE, weight_of

MB = 1 << 20


class Reader:
    """An input that records how far it was read ahead of the consumer."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.made = self.taken = self.ahead = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.made += 1
            yield item

    async def __aiter__(self) -> AsyncIterator[Any]:
        for item in self.items:
            self.made += 1
            await asyncio.sleep(0)
            yield item

    def took(self) -> None:
        self.taken += 1
        self.ahead = max(self.ahead, self.made - self.taken)


@single_task
async def size(chunk: Any) -> int:
    return len(chunk)


@pytest.mark.parametrize("source", ["sync", "async"])
async def test_a_slow_consumer_holds_a_few_large_chunks(source: str) -> None:
    reader = Reader(list(range(40)))
    pipeline = single_task(lambda i: i).with_context(
        max_in_flight_bytes=64 * MB, item_weight=lambda _: 10 * MB
    )
    stream = pipeline(reader if source == "sync" else reader.__aiter__())
    async for _ in stream:
        reader.took()
        await asyncio.sleep(0.001)
    assert reader.taken == 40
    assert reader.ahead <= 6  # 64 MB / 10 MB
    assert stream.stats.input_admitted_at_once == 6
    assert stream.stats.input_item_bytes == 10 * MB


async def test_real_bytes_keep_memory_flat() -> None:
    reader = Reader([])

    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            reader.made += 1
            yield bytes(4 * MB)

    tracemalloc.start()
    try:
        stream = size.with_context(max_in_flight_bytes=16 * MB)(chunks())
        async for n in stream:
            assert n == 4 * MB
            reader.took()
            await asyncio.sleep(0.001)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reader.ahead <= 4
    assert peak < 40 * MB, peak / MB  # 120 MB read in all; the default window held all


async def test_without_a_byte_bound_the_count_is_the_bound() -> None:
    reader = Reader(list(range(40)))
    stream = single_task(lambda i: i).with_context(
        max_in_flight_bytes=None, item_weight=lambda _: 10 * MB, max_in_flight=30
    )(reader)
    async for _ in stream:
        reader.took()
        await asyncio.sleep(0.001)
    assert reader.ahead > 20 and stream.stats.input_item_bytes is None


async def test_the_mean_weight_follows_a_change_of_size() -> None:
    admitted: list[int | None] = []

    def weight(i: int) -> int:
        admitted.append(stream.stats.input_admitted_at_once)  # (before this item's)
        return MB if i < 20 else 16 * MB

    stream = single_task(lambda i: i).with_context(max_in_flight_bytes=64 * MB, item_weight=weight)(
        range(40)
    )
    async for _ in stream:
        await asyncio.sleep(0)
    assert admitted[20] == 64 and admitted[-1] is not None and admitted[-1] <= 5


async def test_light_or_weightless_items_are_not_weighed_for_long() -> None:
    for items in (list(range(100)), [f"url-{i}" for i in range(100)]):
        stream = single_task(lambda x: x)(items)
        await stream.collect()
        assert stream._run is not None and stream._run.weigher is not None
        assert not stream._run.weigher.active and stream._run.weigher.probed == PROBE
        assert stream.stats.input_admitted_at_once == 1000


async def test_expansions_are_bounded_by_the_count_only() -> None:
    @single_task
    def lines(chunk: int) -> Iterator[int]:
        yield from range(chunk * 100, chunk * 100 + 100)

    stream = lines.with_context(max_in_flight_bytes=MB, item_weight=lambda _: 4 * MB)(range(5))
    assert await stream.collect() == list(range(500))
    assert stream.stats.input_admitted_at_once == 1


async def test_a_batch_stage_behind_a_tight_budget_still_finishes() -> None:
    @batch_task(max_size=4)
    def group(items: list[int]) -> list[int]:
        return [sum(items)]

    stream = group.with_context(max_in_flight_bytes=2 * MB, item_weight=lambda _: MB)(range(8))
    # Only 2 items may be in the run: batches of 4 cannot fill, so partial ones are
    # flushed (as when max_in_flight is smaller than a batch).
    assert sum(await stream.collect()) == sum(range(8))


def test_what_weighs() -> None:
    frame = pd.DataFrame({"a": np.arange(1000), "s": [f"row-{i}" for i in range(1000)]})
    assert weight_of(frame) == int(frame.memory_usage(deep=True, index=True).sum())
    assert weight_of(frame["s"]) == int(frame["s"].memory_usage(deep=True, index=True))
    assert weight_of(np.zeros(1000)) == 8000
    assert weight_of(b"abc") == 3 and weight_of(bytearray(5)) == 5 and weight_of("hey") == 3
    assert weight_of(memoryview(b"12345")) == 5
    assert weight_of(12) is None and weight_of([b"a"]) is None


async def test_bad_settings_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"max_in_flight_bytes must be an int >= 1 .* or None"):
        PipelineContext(max_in_flight_bytes=0)
    with pytest.raises(TypeError, match="item_weight must be a function"):
        PipelineContext(item_weight=5)  # type: ignore[arg-type]
    stream = size.with_context(item_weight=lambda _: "big")([b"x"])
    with pytest.raises(TypeError, match="item_weight must return a number of bytes"):
        await stream.collect()


# -- process stages: the pickled copies count toward the bound -----------------------------


async def test_a_process_stage_counts_its_pickled_copies() -> None:
    """A chunk's pickled copy of its items (held by the pool until the answer is in) and
    the answers in transit are memory too: they count toward ``max_in_flight_bytes``."""

    def blocks() -> Iterator[bytes]:
        for n in range(80):
            yield bytes([n]) * MB  # (written: every byte is a real copy)

    tracemalloc.start()
    try:
        stream = single_task(executor="process:2")(bytes).with_context(max_in_flight_bytes=16 * MB)(
            blocks()
        )
        taken = 0
        async for block in stream:
            assert len(block) == MB
            taken += 1
            await asyncio.sleep(0.005)  # a slow consumer
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert taken == 80
    assert stream.stats.input_admitted_at_once == 16
    # Items, copies and answers in transit within twice the bound.
    assert peak < 2 * 16 * MB, peak / MB


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
@pytest.mark.parametrize("executor", ["inline", "thread", "process", "batch"])
def test_peak_rss_stays_within_twice_the_bound(executor: str) -> None:
    """200 items of 8 MiB behind a slow consumer, the default bound (64 MiB), in a fresh
    process (``bytes_memory.py``). Measured growth: inline and thread +72 MiB, batch +32;
    process +145-187 MiB before its copies were counted, +96-104 MiB after."""
    child = Path(__file__).with_name("bytes_memory.py")
    out = subprocess.run(
        [sys.executable, str(child), executor],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
        timeout=300,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["taken"] == 200
    assert result["peak_growth_mb"] <= 2 * 64, result  # (MiB)
