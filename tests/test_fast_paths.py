"""The engine's fast paths keep the semantics of the slow ones.

* **Fused plain stages**: adjacent plain-function single stages run as one call chain per
  item, in one context copy; errors, retries, queues and odd return values still go
  through each stage's own rules.
* **Calls in real tasks** (eager on 3.12+): each call has a task of its own, with its own
  context, timeout and cancellation.
* **Nodes only for items that wait**: covered for order by the model tests; here, mixed
  fast and slow items.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Pipeline, single_task

var: contextvars.ContextVar[str] = contextvars.ContextVar("conveyor_fast_paths", default="-")


# -- fused plain stages ------------------------------------------------------------------


async def test_fused_plain_stages_share_the_item_context_only() -> None:
    seen: list[tuple[str, str]] = []

    @single_task
    def first(x: int) -> int:
        seen.append(("first", var.get()))
        var.set(f"item {x}")
        return x

    @single_task
    def second(x: int) -> int:
        seen.append(("second", var.get()))
        return x

    assert await (first | second)([1, 2]).collect() == [1, 2]
    # Like second(first(x)) written by hand: the item's value, never the previous item's.
    assert seen == [("first", "-"), ("second", "item 1"), ("first", "-"), ("second", "item 2")]
    assert var.get() == "-"


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_error_in_a_fused_stage_names_that_stage(mode: str) -> None:
    @single_task
    def fine(x: int) -> int:
        return x

    @single_task
    def broken(x: int) -> int:
        if x == 3:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError) as info:
        await (fine | broken | fine).with_execution_mode(mode)(range(5)).collect()
    assert any("task 'broken'" in note for note in info.value.__notes__)


async def test_retry_and_skip_in_fused_stages() -> None:
    attempts: dict[int, int] = {}

    @single_task
    def add(x: int) -> int:
        return x + 10

    @single_task(retry_attempts=3, retry_delay=0)
    def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if x % 2 and attempts[x] < 3:
            raise ConnectionError(x)
        return x

    @single_task(on_error="skip_item")
    def picky(x: int) -> int:
        if x == 14:
            raise ValueError(x)
        return -x

    out = await (add | flaky | picky)(range(6)).collect()
    assert out == [-10, -11, -12, -13, -15]
    assert attempts == {10: 1, 11: 3, 12: 1, 13: 3, 14: 1, 15: 3}


async def test_fused_stage_results_that_are_not_plain_values() -> None:
    async def later(x: int) -> int:
        await asyncio.sleep(0)
        return x * 100

    class AsyncCallable:
        async def __call__(self, x: int) -> int:
            await asyncio.sleep(0)
            return x + 1

    @single_task
    def spread(x: int) -> list[int]:
        return [x, x]

    @single_task
    def drop_odd(x: int) -> int | None:
        return None if x % 2 else x

    @single_task
    def awaitable(x: int) -> Any:
        return later(x)  # a plain function returning a coroutine: it is awaited

    @single_task
    def gen(x: int) -> Iterator[int]:
        yield x
        yield -x

    pipeline: Pipeline[int, Any] = (
        spread | drop_odd | awaitable | single_task(AsyncCallable()) | gen
    )
    assert await pipeline(range(4)).collect() == [1, -1, 1, -1, 201, -201, 201, -201]


async def test_busy_plain_stage_queues_what_a_fused_chain_hands_on() -> None:
    calls: list[int] = []

    @single_task
    def first(x: int) -> int:
        return x

    @single_task(concurrency_limit=1, retry_attempts=2, retry_delay=0.01)
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise ConnectionError  # its retry holds the only slot for a while
        return x

    assert await (first | flaky | first)(range(20)).collect() == list(range(20))
    assert calls == [0, *range(20)]


# -- calls in tasks -------------------------------------------------------------------------


async def test_every_async_call_has_a_real_task_of_its_own() -> None:
    tasks: list[asyncio.Task[Any]] = []

    @single_task
    async def hop(x: int) -> int:
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)
        assert asyncio.current_task() is task
        tasks.append(task)
        return x

    out = await (hop | hop | hop | hop)(range(100)).collect()
    assert out == list(range(100))
    assert len({id(task) for task in tasks}) == 400  # one per call, none shared
    assert all(task.done() for task in tasks)


async def test_chained_async_calls_keep_their_own_context() -> None:
    seen: list[tuple[str, int, str]] = []

    @single_task
    async def first(x: int) -> int:
        var.set(f"first {x}")
        await asyncio.sleep(0)
        seen.append(("first after await", x, var.get()))
        return x

    @single_task
    async def second(x: int) -> int:
        seen.append(("second before", x, var.get()))
        var.set(f"second {x}")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(("second after await", x, var.get()))
        return x

    assert await (first | second)(range(3)).collect() == [0, 1, 2]
    for where, x, value in seen:
        expected = {
            "first after await": f"first {x}",
            "second before": "-",
            "second after await": f"second {x}",
        }[where]
        assert value == expected, (where, x, value)


@pytest.mark.looptime
async def test_chained_async_calls_keep_their_timeout() -> None:
    @single_task
    async def quick(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    @single_task(timeout=0.5, on_error="skip_item")
    async def slow_on_odd(x: int) -> int:
        await asyncio.sleep(10 if x % 2 else 0.1)
        return x

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await (quick | slow_on_odd)(range(6)).collect() == [0, 2, 4]
    assert loop.time() - start == pytest.approx(0.51)


@pytest.mark.looptime
async def test_chained_async_calls_are_cancelled_on_exit() -> None:
    cancelled: list[int] = []

    @single_task
    async def quick(x: int) -> int:
        await asyncio.sleep(0.01 * x)
        return x

    @single_task
    async def stuck(x: int) -> int:
        try:
            await asyncio.sleep(0 if x == 0 else 100)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async with (quick | stuck)(range(5)) as stream:
        assert await stream.__anext__() == 0
        await asyncio.sleep(1)  # every other item is now stuck in the second stage
    assert sorted(cancelled) == [1, 2, 3, 4]


@pytest.mark.looptime
async def test_call_that_ignores_cancellation_starts_nothing_new() -> None:
    started: list[int] = []

    @single_task
    async def stubborn(x: int) -> int:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)  # returns a result anyway: it must start nothing new
        return x

    @single_task
    async def after(x: int) -> int:
        started.append(x)
        await asyncio.sleep(100)
        return x

    stream = (stubborn | after)(range(3))
    task = asyncio.create_task(stream.__anext__())
    await asyncio.sleep(0.5)
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):  # closed from another task: iteration ends
        await task
    assert started == []


# -- items that wait and items that do not -----------------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_fast_items_behind_slow_ones(mode: str) -> None:
    @single_task
    async def sometimes_slow(x: int) -> int:
        if x % 4 == 1:
            await asyncio.sleep(1)
        return x

    @single_task
    def plain(x: int) -> list[int]:
        return [x, x] if x % 3 == 0 else [x]

    out = await (sometimes_slow | plain).with_execution_mode(mode)(range(12)).collect()
    expected = [y for x in range(12) for y in ([x, x] if x % 3 == 0 else [x])]
    if mode == "ordered":
        assert out == expected
    else:
        assert sorted(out) == sorted(expected)
        assert out[-4:] == [1, 5, 9, 9]  # the slow ones come last
