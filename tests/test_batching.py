"""Batch stages (``conveyor._engine._batch``), through small pipelines.

Covers what tests/test_tasks.py and tests/test_errors.py do not: a full batch is sent
before the input ends; ``max_wait`` flushes only with ``min_size`` items, and its timer
starts with each batch's first item; the remainder rule in both execution modes; batches
composed in input order (ordered) or arrival order (as-completed) when earlier stages
finish out of order; ``concurrency_limit``; a window smaller than ``max_size``; every
kind of batch result; ``Failure`` records passing a batch stage without joining a batch.
Timing tests run on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor import Failure, Pipeline, batch_task, single_task

MODES = ["ordered", "as_completed"]


def in_mode(task: Any, mode: str) -> Pipeline[Any, Any]:
    return Pipeline([task]).with_execution_mode(mode)


async def timed_input(schedule: list[tuple[float, int]]) -> AsyncIterator[int]:
    """Yield each item at its (virtual) time, relative to the start."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, item in schedule:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        yield item


# -- when batches are flushed -------------------------------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize("mode", MODES)
async def test_full_batch_is_sent_before_the_input_ends(mode: str) -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, list[int]]] = []

    @batch_task(max_size=3)
    def record(batch: list[int]) -> list[int]:
        calls.append((loop.time(), batch))
        return batch

    start = loop.time()
    source = timed_input([(0, 0), (0, 1), (0, 2), (10, 3)])
    assert await in_mode(record, mode)(source).collect() == [0, 1, 2, 3]
    assert [(round(t - start, 6), b) for t, b in calls] == [(0, [0, 1, 2]), (10, [3])]


@pytest.mark.looptime
@pytest.mark.parametrize("mode", MODES)
async def test_max_wait_does_not_flush_below_min_size(mode: str) -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, list[int]]] = []

    @batch_task(min_size=3, max_size=10, max_wait=1)
    def record(batch: list[int]) -> list[int]:
        calls.append((loop.time(), batch))
        return batch

    start = loop.time()
    # At 1 s the batch holds 2 < min_size items: it waits for a third, then goes at once
    # (its time is up); the remainder [4] is below min_size and is dropped.
    source = timed_input([(0, 1), (0, 2), (10, 3), (10, 4), (20, 5)])
    assert await in_mode(record, mode)(source).collect() == [1, 2, 3, 4, 5][:3]
    assert [(round(t - start, 6), b) for t, b in calls] == [(10, [1, 2, 3])]


@pytest.mark.looptime
async def test_max_wait_counts_from_each_batchs_first_item() -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, list[int]]] = []

    @batch_task(max_size=10, max_wait=1)
    def record(batch: list[int]) -> list[int]:
        calls.append((loop.time(), batch))
        return batch

    start = loop.time()
    source = timed_input([(0, 1), (0.5, 2), (3, 3), (3.5, 4), (10, 5)])
    assert await record(source).collect() == [1, 2, 3, 4, 5]
    flushed = [(round(t - start, 6), b) for t, b in calls]
    assert flushed == [(1, [1, 2]), (4, [3, 4]), (10, [5])]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("count", "expected"),
    [(5, [[0, 1, 2], [3, 4]]), (4, [[0, 1, 2]]), (3, [[0, 1, 2]]), (1, [])],
)
async def test_remainder_rule(mode: str, count: int, expected: list[list[int]]) -> None:
    batches: list[list[int]] = []

    @batch_task(min_size=2, max_size=3)
    def record(batch: list[int]) -> int:
        batches.append(batch)
        return len(batch)

    out = await in_mode(record, mode)(range(count)).collect()
    assert batches == expected
    assert out == [len(b) for b in expected]


@pytest.mark.looptime
@pytest.mark.parametrize("mode", MODES)
async def test_remainder_rule_with_max_wait(mode: str) -> None:
    batches: list[list[int]] = []

    @batch_task(min_size=2, max_size=3, max_wait=100)
    def record(batch: list[int]) -> None:
        batches.append(batch)

    await in_mode(record, mode)(range(7)).collect()
    assert batches == [[0, 1, 2], [3, 4, 5]]  # [6] is dropped, timer or not


# -- composition order --------------------------------------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("mode", "expected"),
    [("ordered", [[0, 1, 2], [3, 4, 5]]), ("as_completed", [[5, 4, 3], [2, 1, 0]])],
)
async def test_batches_composed_in_input_or_arrival_order(
    mode: str, expected: list[list[int]]
) -> None:
    batches: list[list[int]] = []

    @single_task
    async def slower_first(x: int) -> int:
        await asyncio.sleep(6 - x)  # finish in reverse order
        return x

    @batch_task(max_size=3)
    def record(batch: list[int]) -> list[int]:
        batches.append(batch)
        return batch

    out = await (slower_first | record).with_execution_mode(mode)(range(6)).collect()
    assert batches == expected
    assert out == [x for b in expected for x in b]


@pytest.mark.looptime
async def test_ordered_batches_after_a_batch_stage_finishing_out_of_order() -> None:
    seen: list[list[int]] = []
    finished: list[list[int]] = []

    @batch_task(max_size=2, concurrency_limit=4)
    async def pairs(batch: list[int]) -> list[int]:
        await asyncio.sleep(10 - batch[0])  # later batches are done first
        finished.append(batch)
        return batch

    @batch_task(max_size=3)
    def triples(batch: list[int]) -> list[int]:
        seen.append(batch)
        return batch

    out = await (pairs | triples)(range(8)).collect()
    assert finished[0] == [6, 7]  # the first stage did finish out of order
    assert seen == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert out == list(range(8))


# -- concurrency --------------------------------------------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize(("limit", "expected"), [(None, 1), (1, 1), (3, 3)])
async def test_concurrency_limit_bounds_concurrent_batch_calls(
    limit: int | None, expected: int
) -> None:
    running = peak = 0
    options: dict[str, Any] = {} if limit is None else {"concurrency_limit": limit}

    @batch_task(max_size=2, **options)
    async def slow(batch: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(1)
        running -= 1
        return batch

    assert await slow(range(20)).collect() == list(range(20))
    assert peak == expected


# -- a window smaller than a batch --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("before", [False, True])
async def test_window_smaller_than_max_size_is_raised_to_fit_the_batch(
    mode: str, is_async: bool, before: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A window of 2 under batches of 5: the run's window is raised to 5 (logged, and in
    the statistics), so batches are whole and only the input's remainder is short."""
    batches: list[list[int]] = []

    @single_task
    async def passing(x: int) -> int:
        await asyncio.sleep(0)
        return x

    def record(batch: list[int]) -> list[int]:
        batches.append(batch)
        return batch

    async def record_async(batch: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return record(batch)

    task = batch_task(max_size=5)(record_async if is_async else record)
    pipeline = (passing | task) if before else Pipeline([task])
    stream = pipeline.with_context(max_in_flight=2, execution_mode=mode)(range(12))
    with caplog.at_level(logging.INFO, logger="conveyor"):
        async with asyncio.timeout(10):  # a deadlock fails instead of hanging
            out = await stream.collect()
    assert sorted(out) == list(range(12))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert stream.stats.max_in_flight == 5
    assert "max_in_flight=2) is raised to 5" in caplog.text
    if mode == "ordered":
        assert out == list(range(12))
        assert [x for b in batches for x in b] == list(range(12))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("window", [5, 9, 10, 11, 19, 20, 1000])
async def test_windows_around_the_batch_size_lose_nothing(mode: str, window: int) -> None:
    """The issue's case: min_size = max_size = 10 gave batches of 9 (window 10), or of 8
    and then a remainder dropped (window 9): items lost silently. Now every batch is whole,
    whatever the window."""

    @batch_task(min_size=10, max_size=10)
    def ten(batch: list[int]) -> list[int]:
        return [len(batch)]

    stream = ten.with_context(max_in_flight=window, execution_mode=mode)(range(100))
    assert await stream.collect() == [10] * 10
    stage = stream.stats.stages[0]
    assert (stage.items_in, stage.batches, stage.remainder_dropped) == (100, 10, 0)


@pytest.mark.parametrize("mode", MODES)
async def test_two_batch_stages_get_room_for_both(mode: str) -> None:
    """A window of a batch's size is not room for two batch stages: the run's window is
    their sum, so both compose whole batches (the first's sums, in batches of 3)."""
    sizes: list[int] = []

    @batch_task(min_size=4, max_size=4)
    def four(batch: list[int]) -> int:
        return sum(batch)

    @batch_task(min_size=3, max_size=3)
    def three(batch: list[int]) -> int:
        sizes.append(len(batch))
        return sum(batch)

    stream = (four | three).with_context(max_in_flight=4, execution_mode=mode)(range(48))
    out = await stream.collect()
    assert sum(out) == sum(range(48)) and sizes == [3, 3, 3, 3]
    assert stream.stats.max_in_flight == 7
    if mode == "ordered":
        expected = [sum(range(12 * i, 12 * i + 12)) for i in range(4)]
        assert out == expected


@pytest.mark.parametrize("mode", MODES)
async def test_the_remainder_rule_drops_only_the_true_remainder_and_counts_it(mode: str) -> None:
    @batch_task(min_size=1000, max_size=1000)
    def big(batch: list[int]) -> int:
        return len(batch)

    stream = big.with_context(execution_mode=mode)(range(100_500))
    assert await stream.collect() == [1000] * 100
    stage = stream.stats.stages[0]
    assert (stage.items_in, stage.batches, stage.remainder_dropped) == (100_500, 100, 500)
    assert "500 dropped as the remainder" in str(stream.stats)


# -- what a batch call returns ------------------------------------------------------------


def as_tuple(batch: list[int]) -> tuple[int, ...]:
    return tuple(batch)


async def as_tuple_async(batch: list[int]) -> tuple[int, ...]:
    await asyncio.sleep(0)
    return tuple(batch)


def each(batch: list[int]) -> Iterator[int]:
    yield from batch


async def each_async(batch: list[int]) -> AsyncIterator[int]:
    for x in batch:
        await asyncio.sleep(0)
        yield x


async def nothing(batch: list[int]) -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (as_tuple, [(0, 1), (2, 3), (4,)]),
        (as_tuple_async, [(0, 1), (2, 3), (4,)]),
        (each, [0, 1, 2, 3]),
        (each_async, [0, 1, 2, 3]),
        (nothing, []),
    ],
)
async def test_batch_result_kinds(mode: str, func: Any, expected: list[Any]) -> None:
    count = len(sum(expected, ())) if expected and type(expected[0]) is tuple else 4
    stream = in_mode(batch_task(max_size=2)(func), mode)(range(count))
    async with asyncio.timeout(10):
        out = await stream.collect()
    if mode == "ordered":
        assert out == expected
    else:
        assert sorted(out) == sorted(expected)


# Used to hang: the end of a batch's expansion never looked at the remainder (issue 8).
@pytest.mark.looptime  # the hang is detected by a (virtual) timeout
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("func", "min_size"), [(each, 1), (each_async, 1), (each, 2)])
async def test_generator_batch_result_then_a_remainder(mode: str, func: Any, min_size: int) -> None:
    task = batch_task(max_size=2, min_size=min_size)(func)
    async with asyncio.timeout(60):
        out = await in_mode(task, mode)(range(5)).collect()
    expected = [0, 1, 2, 3, 4] if min_size == 1 else [0, 1, 2, 3]
    assert sorted(out) == expected


async def test_mixed_batch_results_keep_their_order() -> None:
    async def agen(batch: list[int]) -> AsyncIterator[int]:
        for x in batch:
            await asyncio.sleep(0.001 * (10 - x))
            yield x

    def gen(batch: list[int]) -> Iterator[int]:
        yield from batch

    @batch_task(max_size=2)
    def mixed(batch: list[int]) -> Any:
        return {0: batch, 2: tuple(batch), 4: None, 6: gen(batch), 8: agen(batch)}[batch[0]]

    out = await mixed(range(10)).collect()
    assert out == [0, 1, (2, 3), 6, 7, 8, 9]


# -- Failure records ----------------------------------------------------------------------


class Boom(Exception):
    pass


@single_task(on_error="emit")
async def fails_on_three(x: int) -> int:
    await asyncio.sleep(0)
    if x == 3:
        raise Boom(x)
    return x


@pytest.mark.parametrize("mode", MODES)
async def test_failure_passes_a_batch_stage_without_joining_a_batch(mode: str) -> None:
    batches: list[list[int]] = []

    @batch_task(max_size=2)
    def pair_sum(batch: list[int]) -> int:
        batches.append(batch)
        return sum(batch)

    pipeline = (fails_on_three | pair_sum).with_execution_mode(mode)
    out = await pipeline([1, 2, 3, 4, 5]).collect()
    assert sorted(batches) == [[1, 2], [4, 5]]
    failures = [x for x in out if type(x) is Failure]
    assert [(f.item, f.task_name, type(f.exception)) for f in failures] == [
        (3, "fails_on_three", Boom)
    ]
    if mode == "ordered":
        # In its place: after the batch flushed before it, before the one after it.
        assert out == [3, failures[0], 9]
    else:
        assert sorted(x for x in out if type(x) is not Failure) == [3, 9]


async def test_failure_passes_several_batch_stages_unchanged() -> None:
    @batch_task(max_size=2)
    def first(batch: list[int]) -> list[int]:
        return batch

    @batch_task(max_size=3)
    def second(batch: list[int]) -> list[int]:
        assert not any(type(x) is Failure for x in batch)
        return [x * 10 for x in batch]

    out = await (fails_on_three | first | second)(range(6)).collect()
    # A Failure comes where its item's result would be: after the result of the batch
    # that was accumulating when it arrived (in `first`, [2, 4]; in `second`, [4, 5]), as
    # in tests/pipeline_model.reference. (It used to overtake them and come first.)
    assert len(out) == 6
    assert out[:5] == [0, 10, 20, 40, 50]
    failure = out[5]
    assert type(failure) is Failure and failure.item == 3
