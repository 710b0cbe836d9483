"""The documented streaming timeline, on a virtual clock.

Eight items take 0.1, 0.2, 0.3, 0.4, 0.5, 2.0, 0.7, 0.8 s. An ordered run yields results
1-5 at 0.1-0.5 s (each as soon as it is ready) and 6-8 together at 2.0 s, when item 6 is
done; an as-completed run yields each one when it is ready.
"""

from __future__ import annotations

import asyncio

import pytest

from conveyor import batch_task, single_task

DURATIONS = [0.1, 0.2, 0.3, 0.4, 0.5, 2.0, 0.7, 0.8]


@single_task
async def work(i: int) -> int:
    await asyncio.sleep(DURATIONS[i])
    return i + 1


async def arrivals(stream) -> list[tuple[int, float]]:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    start = loop.time()
    return [(value, round(loop.time() - start, 6)) async for value in stream]


@pytest.mark.looptime
async def test_ordered_timeline() -> None:
    got = await arrivals(work(range(8)))
    assert got == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
        (4, 0.4),
        (5, 0.5),
        (6, 2.0),
        (7, 2.0),
        (8, 2.0),
    ]


@pytest.mark.looptime
async def test_as_completed_timeline() -> None:
    got = await arrivals(work.as_completed(range(8)))
    assert got == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
        (4, 0.4),
        (5, 0.5),
        (7, 0.7),
        (8, 0.8),
        (6, 2.0),
    ]


@pytest.mark.looptime
async def test_next_stage_starts_as_soon_as_an_item_leaves_the_previous_one() -> None:
    @single_task
    async def second(x: int) -> int:
        await asyncio.sleep(1.0)
        return x

    got = await arrivals((work | second)(range(8)))
    # Item 1 leaves stage one at 0.1 s and stage two at 1.1 s; item 6 at 2.0 + 1.0.
    assert got[:5] == [(1, 1.1), (2, 1.2), (3, 1.3), (4, 1.4), (5, 1.5)]
    assert got[5:] == [(6, 3.0), (7, 3.0), (8, 3.0)]


@pytest.mark.looptime
async def test_batches_wait_at_most_max_wait() -> None:
    @batch_task(max_size=100, max_wait=0.25)
    async def gather(batch: list[int]) -> list[int]:
        return batch

    got = await arrivals((work | gather)(range(8)))
    # The first batch opens at 0.1 s and is flushed 0.25 s later with items 1-3.
    assert got[:3] == [(1, 0.35), (2, 0.35), (3, 0.35)]
    assert [value for value, _ in got] == [1, 2, 3, 4, 5, 6, 7, 8]
