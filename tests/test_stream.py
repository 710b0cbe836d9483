"""AsyncStream: consuming a run once, choosing its mode, and cleaning up."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import leftover_tasks, settle

import conveyor
from conveyor import AsyncStream, single_task


@single_task
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@single_task
async def sleepy(x: int) -> int:
    await asyncio.sleep(3 - x)
    return x


# -- consuming ----------------------------------------------------------------------------


async def test_async_for() -> None:
    got = [x async for x in double([1, 2, 3])]
    assert got == [2, 4, 6]


async def test_collect() -> None:
    assert await double([1, 2, 3]).collect() == [2, 4, 6]


async def test_anext() -> None:
    stream = double([1, 2])
    async with stream:
        assert await anext(stream) == 2
        assert await anext(stream) == 4
        with pytest.raises(StopAsyncIteration):
            await anext(stream)


async def test_empty_input() -> None:
    assert await double([]).collect() == []


@pytest.mark.looptime
async def test_as_completed_before_iteration_switches_mode() -> None:
    stream = sleepy(range(3))
    assert stream.as_completed() is stream
    assert await stream.collect() == [2, 1, 0]


@pytest.mark.looptime
async def test_ordered_before_iteration_switches_mode_back() -> None:
    stream = sleepy.as_completed(range(3))
    assert stream.ordered() is stream
    assert await stream.collect() == [0, 1, 2]


async def test_as_completed_after_iteration_started_raises() -> None:
    stream = double([1, 2, 3])
    async with stream:
        assert await anext(stream) == 2
        with pytest.raises(RuntimeError):
            stream.as_completed()
        with pytest.raises(RuntimeError):
            stream.ordered()


@pytest.mark.looptime
async def test_as_completed_does_not_change_the_pipeline() -> None:
    pipeline = double | sleepy
    stream = pipeline([0])
    stream.as_completed()
    assert pipeline.context.execution_mode == "ordered"
    await stream.collect()


async def test_an_ended_stream_yields_nothing_more() -> None:
    # The iterator protocol: a stream that has ended stays ended (it used to raise).
    stream = double([1, 2])
    assert [x async for x in stream] == [2, 4]
    assert [x async for x in stream] == []
    assert await stream.collect() == []
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_reading_on_after_anext() -> None:
    stream = double([1, 2, 3, 4])
    assert await anext(stream) == 2
    assert [x async for x in stream] == [4, 6, 8]  # async for goes on where anext left
    stream = double([1, 2, 3])
    assert await anext(stream) == 2
    assert await stream.collect() == [4, 6]


async def test_collect_after_leaving_async_for_is_empty() -> None:
    stream = double([1, 2])
    async with stream:
        async for _ in stream:
            break
    assert await stream.collect() == []  # closed: over


async def test_await_or_iterate_a_stream_by_mistake_says_what_to_write() -> None:
    stream = double([1, 2])
    with pytest.raises(TypeError, match=r"\.collect\(\)"):
        await stream
    with pytest.raises(TypeError, match="async for"):
        list(stream)
    with pytest.raises(TypeError, match="async for"):
        for _ in stream:
            pass
    await stream.aclose()


# -- clean-up -----------------------------------------------------------------------------


async def test_async_with_and_break_cleans_up() -> None:
    started: list[int] = []
    cleaned: list[int] = []
    cancelled: list[int] = []

    @single_task
    async def slow(x: int) -> int:
        started.append(x)
        try:
            if x:
                await asyncio.sleep(100)
        except asyncio.CancelledError:  # the clean-up cancels calls in flight
            cancelled.append(x)
            raise
        finally:
            cleaned.append(x)
        return x

    async with slow(range(5)) as stream:
        async for x in stream:
            assert x == 0
            break
    assert leftover_tasks() == []
    assert sorted(cleaned) == sorted(started)
    assert cancelled == [x for x in started if x]


async def test_break_cleans_up_calls_that_await_in_finally() -> None:
    """Calls cancelled by the clean-up get CancelledError, so async clean-up can run."""
    cleaned: list[int] = []

    @single_task
    async def slow(x: int) -> int:
        if x:  # item 0 is ready at once; the others wait
            try:
                await asyncio.sleep(100)
            finally:
                await asyncio.sleep(0)  # async clean-up, e.g. closing a connection
                cleaned.append(x)
        return x

    async with slow(range(4)) as stream:
        async for x in stream:
            assert x == 0
            break
    assert leftover_tasks() == []
    assert sorted(cleaned) == [1, 2, 3]


async def test_break_cleans_up_calls_that_were_started() -> None:
    cancelled: list[int] = []

    @single_task
    async def slow(x: int) -> int:
        await asyncio.sleep(0)
        try:
            await asyncio.sleep(100 if x else 0)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async with slow(range(4)) as stream:
        async for x in stream:
            assert x == 0
            break
    assert leftover_tasks() == []
    assert sorted(cancelled) == [1, 2, 3]


async def test_async_with_closes_a_generator_input() -> None:
    closed = False

    def numbers() -> Iterator[int]:
        nonlocal closed
        try:
            yield from range(1000)
        finally:
            closed = True

    async with double(numbers()) as stream:
        async for _ in stream:
            break
    assert closed


async def test_async_with_closes_an_async_generator_input() -> None:
    closed = False

    async def numbers() -> AsyncIterator[int]:
        nonlocal closed
        try:
            for i in range(1000):
                await asyncio.sleep(0)
                yield i
        finally:
            closed = True

    async with double(numbers()) as stream:
        async for _ in stream:
            break
    assert closed
    assert leftover_tasks() == []


async def test_aclose_on_never_started_stream() -> None:
    closed = False

    def numbers() -> Iterator[int]:
        nonlocal closed
        try:
            yield from range(3)
        finally:
            closed = True

    gen = numbers()
    next(gen)  # started, so closing it runs its finally
    stream = double(gen)
    await stream.aclose()
    assert closed
    with pytest.raises(StopAsyncIteration):  # closed before it ran: over, like any other
        await anext(stream)
    assert await stream.collect() == []


async def test_aclose_twice_is_harmless() -> None:
    stream = double([1, 2, 3])
    async with stream:
        await anext(stream)
    await stream.aclose()
    assert leftover_tasks() == []


async def test_closed_stream_is_exhausted() -> None:
    stream = double(range(100))
    assert await anext(stream) == 0
    await asyncio.sleep(0.01)  # more results are ready by now
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_aclose_from_another_task_ends_a_waiting_consumer() -> None:
    stream = single_task(asyncio.sleep)([10])
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await waiting


async def test_error_is_raised_once_then_the_stream_is_over() -> None:
    @single_task
    def fail_on_two(x: int) -> int:
        if x == 2:
            raise ValueError(x)
        return x

    stream = fail_on_two(range(5))
    assert [await anext(stream), await anext(stream)] == [0, 1]  # before the failure
    with pytest.raises(ValueError):
        await anext(stream)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_break_without_async_with_cancels_the_run() -> None:
    cancelled: list[int] = []

    @single_task
    async def slow(x: int) -> int:
        try:
            await asyncio.sleep(100 if x else 0)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    stream = slow(range(3))
    async for _ in stream:
        break
    del stream
    gc.collect()
    await settle()
    assert leftover_tasks() == []
    assert sorted(cancelled) == [1, 2]


async def test_cancelling_the_consumer_cancels_the_run() -> None:
    @single_task
    async def forever(x: int) -> int:
        await asyncio.sleep(1000)
        return x

    stream = forever([1, 2, 3])

    async def consume() -> list[int]:
        return [x async for x in stream]

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await stream.aclose()
    assert leftover_tasks() == []


# -- wrapping and running ------------------------------------------------------------------


async def test_async_stream_wraps_async_iterable() -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    stream: AsyncStream[int] = AsyncStream(agen())
    assert await stream.collect() == [0, 1, 2]


async def test_async_stream_wrapper_as_pipeline_input() -> None:
    async def agen() -> AsyncIterator[int]:
        yield 1
        yield 2

    assert await double(AsyncStream(agen())).collect() == [2, 4]


async def test_async_stream_wrapper_async_for() -> None:
    async def agen() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    assert [x async for x in AsyncStream(agen())] == ["a", "b"]


def test_run_returns_the_coroutines_result() -> None:
    async def main() -> list[int]:
        return await double([1, 2, 3]).collect()

    assert conveyor.run(main()) == [2, 4, 6]


def test_run_propagates_exceptions() -> None:
    async def main() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        conveyor.run(main())


async def test_a_failed_stream_raises_its_error_once_then_yields_nothing() -> None:
    """As docs/api.md says: a stream that has ended -- here by failing -- yields nothing
    when iterated again (no RuntimeError)."""

    @single_task
    def fails(x: int) -> int:
        raise ValueError(x)

    stream = fails([1, 2])
    with pytest.raises(ValueError):
        await stream.collect()
    assert await stream.collect() == []
    assert [x async for x in stream] == []
