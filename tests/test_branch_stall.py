"""A branch stage's calls wait for its branches without counting as work: the run's stall
check may look while only branches work (``conveyor._engine._branch``). It must leave
them alone while they work (a batch in a branch is never cut short by timing), and when
they are idle with the run stalled — the byte bound admitting fewer items than a
branch's batch holds — flush a branch's partial batch rather than wait forever."""

from __future__ import annotations

import asyncio

import pytest

import conveyor
from conveyor import batch_task, parallel, route, single_task


@single_task
async def slow(x: object) -> object:
    await asyncio.sleep(0.001)
    return x


def sizes_of(max_size: int) -> tuple[list[int], conveyor.BatchTask[int, int]]:
    sizes: list[int] = []

    @batch_task(max_size=max_size)
    def batch(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return [x * 2 for x in xs]

    return sizes, batch


@pytest.mark.parametrize("window", [1, 4, 8, 9, 16])
@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_a_branch_batch_is_never_cut_short_while_the_other_branch_works(
    window: int, mode: str
) -> None:
    sizes, batch = sizes_of(8)
    pipeline = parallel(slow, batch).with_context(max_in_flight=window, execution_mode=mode)
    results = await pipeline(range(20)).collect()
    assert sorted(results) == [(x, 2 * x) for x in range(20)]
    assert sizes == [8, 8, 4]


@pytest.mark.parametrize("kind", ["parallel", "route"])
async def test_the_byte_bound_with_a_branch_batch_does_not_wait_forever(kind: str) -> None:
    """Items of ~1 kB under a 3 kB bound: at most 3 in the run, a batch of 8 in a branch.
    A plain run flushes its partial batch when stalled; a branch's is flushed too."""
    sizes, batch = sizes_of(8)
    stage = parallel(slow, batch) if kind == "parallel" else route(lambda x: 0, {0: batch})
    pipeline = stage.with_context(max_in_flight_bytes=3000, item_weight=len)
    items = [bytes(1000) + bytes([i]) for i in range(20)]
    results = await asyncio.wait_for(pipeline(items).collect(), 30)
    assert len(results) == 20
    assert sum(sizes) == 20 and max(sizes) <= 3
