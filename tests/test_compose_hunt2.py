"""Bugs found in a second hunt on issue 22's composition features (keyed batches,
``route`` with a whole-batch result, ``with_items()``, checkpoints, timed calls): each
test failed before its fix."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import conveyor
from conveyor import batch_task, route, single_task


@single_task
def same(x: int) -> int:
    return x


async def _stop_after(pipeline: conveyor.Pipeline[Any, Any], items: list[Any], k: int) -> list[Any]:
    """The first ``k`` pairs of a run of ``pipeline``, then the consumer leaves (after a
    pause in which every batch sent off is answered)."""
    got: list[Any] = []
    stream = pipeline(items)
    async with stream:
        async for pair in stream:
            got.append(pair)
            if len(got) == k:
                await asyncio.sleep(0.2)
                break
    return got


@pytest.mark.parametrize("nested", [False, True])
async def test_a_routed_batch_result_taken_leaves_its_other_items_done(
    nested: bool, tmp_path: Any
) -> None:
    """Ordered: the batch's result goes at its first item's place and stands for its
    other items too, whose own calls end with nothing; but their empty places, behind
    items not taken yet, held them in the run until the reader passed them. A run left
    after the result was taken, then resumed, did those items again: their part of the
    result was delivered twice (item 2, here, in a batch of its own)."""

    @batch_task(max_size=2)
    def count(xs: list[int]) -> int:
        return -len(xs)

    stage: Any = route(lambda x: x % 2, {0: count}, default=same)
    if nested:
        stage = route(lambda x: x < 10, {True: stage})
    pipeline = (
        conveyor.Pipeline([stage])
        .with_checkpoint(conveyor.Checkpoint(str(tmp_path / "run.db")))
        .with_items()
    )
    items = [0, 1, 2, 3]
    first = await _stop_after(pipeline, items, 1)
    assert first == [([0, 2], -2)]
    assert await pipeline(items).collect() == [(1, 1), (3, 3)]
