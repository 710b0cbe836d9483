"""Unit tests of the run's window (``conveyor._engine._window.Window``).

Covers tokens (take, release, full), the low-water mark of ``room_made``, waiting for
room (at once, blocking, re-checking after a wake-up, ``CancelledError`` once closed,
``busy`` while waiting), ``may_proceed`` for the pump and for expansions (including the
ordered-run rule for a sentinel at the front), stall handling (``check_stall``,
``flush_batch``, ``can_drain``, the last resort for generators, ``idle``) and the ``on_wait`` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import pytest

from conveyor import batch_task, single_task
from conveyor._engine._order import OrderList
from conveyor._engine._window import Window


def window(limit: int, tokens: int = 0, busy: int = 0) -> Window:
    w = Window(asyncio.get_running_loop(), limit)
    w.tokens = tokens
    w.busy = busy
    return w


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def start(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


def add_waiter(w: Window, sentinel: Any = None, expansion: bool = False) -> asyncio.Future[bool]:
    future: asyncio.Future[bool] = w.loop.create_future()
    w.waiting.append((future, sentinel, expansion))
    return future


# -- tokens -------------------------------------------------------------------------------


async def test_take_release_full() -> None:
    w = window(3)
    assert not w.full()
    w.take()
    w.take(2)
    assert w.tokens == 3 and w.full()
    w.release()
    assert w.tokens == 2 and not w.full()
    w.release(2)
    assert w.tokens == 0


@pytest.mark.parametrize(("limit", "low_water"), [(1, 0), (8, 7), (16, 14), (1000, 875)])
async def test_low_water(limit: int, low_water: int) -> None:
    assert window(limit).low_water == low_water


async def test_room_made_wakes_only_at_low_water_while_busy() -> None:
    w = window(16, tokens=16, busy=2)  # the pump and one call
    task = start(w.wait_for_room())
    await settle()
    assert not task.done() and w.busy == 1  # the pump no longer counts
    w.release()  # 15 > low water 14: not worth a wake-up yet
    await settle()
    assert not task.done()
    w.release()  # 14
    await settle()
    assert task.done()
    await task
    assert w.busy == 2 and w.waiting == []


async def test_room_made_wakes_above_low_water_when_nothing_is_busy() -> None:
    w = window(16, tokens=16, busy=1)  # only the pump
    task = start(w.wait_for_room())
    await settle()
    assert not task.done() and w.busy == 0
    w.release()  # 15 > 14, but nobody else is working
    await settle()
    assert task.done()
    await task
    assert w.busy == 1


# -- waiting for room ---------------------------------------------------------------------


async def test_wait_for_room_returns_at_once_when_there_is_room() -> None:
    w = window(4, tokens=3, busy=1)
    coro = w.wait_for_room()
    with pytest.raises(StopIteration):
        coro.send(None)  # finished without suspending
    assert w.busy == 1 and w.waiting == []


async def test_wait_for_room_blocks_while_full() -> None:
    w = window(4, tokens=4, busy=2)
    task = start(w.wait_for_room())
    await settle()
    assert not task.done()
    assert len(w.waiting) == 1 and w.busy == 1
    w.tokens = 2  # without release(): nobody wakes the waiter
    await settle()
    assert not task.done()
    await stop(task)
    assert w.waiting == [] and w.busy == 2  # restored on cancellation too


async def test_wait_for_room_when_closed_and_full_raises_cancelled() -> None:
    w = window(4, tokens=4, busy=1)
    w.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(w.wait_for_room(), 5)
    assert w.waiting == [] and w.busy == 1


async def test_woken_waiter_rechecks_and_raises_once_closed() -> None:
    w = window(4, tokens=4, busy=2)
    task = start(w.wait_for_room())
    await settle()
    w.release(2)  # woken (2 <= low water 3)...
    w.take(2)  # ...but the room is gone before it runs, and the run closes
    w.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert w.busy == 2 and w.waiting == []


async def test_woken_waiter_without_room_waits_again() -> None:
    w = window(4, tokens=4, busy=2)
    task = start(w.wait_for_room())
    await settle()
    w.release(2)
    w.take(2)
    await settle()
    assert not task.done()
    assert len(w.waiting) == 1 and w.busy == 1
    w.release(2)
    await settle()
    await task
    assert w.busy == 2


async def test_close_does_not_wake_waiters() -> None:
    w = window(4, tokens=4, busy=2)
    task = start(w.wait_for_room())
    await settle()
    w.close()
    w.wake_waiters()
    w.check_stall()
    await settle()
    assert not task.done()  # the run cancels its tasks itself
    await stop(task)


# -- may_proceed --------------------------------------------------------------------------


async def test_may_proceed_for_the_pump() -> None:
    w = window(4, tokens=3)
    assert w.may_proceed(None, False)
    w.tokens = 4
    assert not w.may_proceed(None, False)
    w.expanding = 2  # does not count for the pump
    assert not w.may_proceed(None, False)


async def test_may_proceed_for_expansions_discounts_their_own_items() -> None:
    w = window(4, tokens=5)
    w.expanding = 2
    assert w.may_proceed(None, True)  # 5 - 2 < 4
    w.tokens = 6
    assert not w.may_proceed(None, True)  # 6 - 2 == 4


async def test_may_proceed_for_a_sentinel_at_the_front_of_an_ordered_run() -> None:
    w = window(4, tokens=10)
    order = OrderList(lambda: None, lambda n: None)
    parent = order.append()
    sentinel = order.open_sentinel(parent)
    assert not w.may_proceed(sentinel, True)  # the parent is still before it
    order.settle()  # the reader unlinks the parent (CLOSED)
    assert sentinel.prev is order.head
    assert w.may_proceed(sentinel, True)
    assert not w.may_proceed(sentinel, False)  # the rule is for expansions only


async def test_sentinel_reaching_the_front_wakes_its_generator() -> None:
    w = window(4, tokens=10, busy=2)
    order = OrderList(lambda: None, lambda n: None)
    sentinel = order.open_sentinel(order.append())
    task = start(w.wait_for_room(sentinel, expansion=True))
    await settle()
    assert not task.done()
    assert sentinel.on_front is not None
    order.settle()  # the reader unlinks the parent and tells the sentinel at the front
    await settle()
    await task
    assert sentinel.on_front is None and w.waiting == [] and w.busy == 2


async def test_wake_waiters_wakes_only_those_who_may_proceed() -> None:
    w = window(4, tokens=5)
    w.expanding = 2
    pump = add_waiter(w)
    generator = add_waiter(w, expansion=True)
    w.wake_waiters()
    assert generator.done() and not pump.done()
    assert [waiter[0] for waiter in w.waiting] == [pump]


async def test_wake_waiters_drops_cancelled_waiters() -> None:
    w = window(4, tokens=0)
    future = add_waiter(w)
    future.cancel()
    w.wake_waiters()
    assert w.waiting == []


# -- stalls -------------------------------------------------------------------------------


async def test_check_stall_flushes_batches_until_there_is_none() -> None:
    w = window(4, tokens=4)
    future = add_waiter(w)
    results = iter([True, True, False, True])
    calls: list[int] = []

    def on_stall() -> bool:
        calls.append(w.tokens)
        return next(results)

    w.flush_batch = on_stall
    w.check_stall()
    assert len(calls) == 3
    assert not future.done()


async def test_check_stall_stops_once_a_waiter_may_proceed() -> None:
    w = window(4, tokens=4)
    future = add_waiter(w)
    calls = 0

    def on_stall() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            w.tokens -= 1  # this flush made room (without release: no wake-up of its own)
        return True

    w.flush_batch = on_stall
    w.check_stall()
    assert calls == 2
    assert future.done() and w.waiting == []


@pytest.mark.parametrize("state", ["busy", "no_waiter", "closed", "may_proceed"])
async def test_check_stall_does_nothing_unless_stalled(state: str) -> None:
    w = window(4, tokens=3 if state == "may_proceed" else 4, busy=int(state == "busy"))
    future = None if state == "no_waiter" else add_waiter(w)
    if state == "closed":
        w.close()
    calls = 0

    def on_stall() -> bool:
        nonlocal calls
        calls += 1
        return True

    w.flush_batch = on_stall
    w.check_stall()
    assert calls == 0
    # A waiter that may proceed is woken instead.
    assert future is None or future.done() == (state == "may_proceed")


async def test_idle_checks_for_a_stall_only_when_nothing_is_busy() -> None:
    w = window(4, tokens=4, busy=1)
    add_waiter(w)
    calls = 0

    def on_stall() -> bool:
        nonlocal calls
        calls += 1
        return False

    w.flush_batch = on_stall
    w.idle()
    assert calls == 0
    w.busy = 0
    w.idle()
    assert calls == 1


async def test_waiting_on_a_stalled_window_flushes() -> None:
    w = window(4, tokens=4, busy=1)  # only the pump works, and it is about to wait
    flushes = 0

    def on_stall() -> bool:
        nonlocal flushes
        flushes += 1
        w.release(2)  # a flushed batch is done at once and gives its tokens back
        return True

    w.flush_batch = on_stall
    await asyncio.wait_for(w.wait_for_room(), 1)
    assert flushes == 1 and w.busy == 1 and w.waiting == []


# -- on_wait ------------------------------------------------------------------------------


async def test_on_wait_is_called_without_waiting() -> None:
    w = window(4, tokens=0)
    waited: list[float] = []
    w.on_wait = waited.append
    await w.wait_for_room()
    assert len(waited) == 1
    assert isinstance(waited[0], float) and waited[0] >= 0


@pytest.mark.looptime
async def test_on_wait_gets_the_seconds_waited() -> None:
    w = window(4, tokens=4, busy=2)
    waited: list[float] = []
    w.on_wait = waited.append
    task = start(w.wait_for_room())
    await asyncio.sleep(5)
    assert waited == []
    w.release(4)
    await task
    assert waited == [pytest.approx(5)]


async def test_no_flush_while_the_consumer_has_results_to_take() -> None:
    # Results waiting for the consumer hold tokens; taking them makes room, so a batch
    # must not be cut short (it used to be: 22 batches of max_size=5 instead of 20).
    w = window(4, tokens=4)
    future = add_waiter(w)
    flushes = 0

    def flush() -> bool:
        nonlocal flushes
        flushes += 1
        return True

    w.flush_batch = flush
    w.can_drain = lambda: True
    w.check_stall()
    assert flushes == 0 and not future.done()
    w.can_drain = lambda: False
    w.flush_batch = lambda: False
    w.check_stall()
    assert not future.done()  # the pump is never let past the window


async def test_last_resort_lets_one_generator_past_the_window() -> None:
    # A generator's item may hold the concurrency slot that the items queued behind it
    # (holding the rest of the window) wait for: one child past the window breaks the tie.
    w = window(2, tokens=2)
    w.expanding = 0
    pump = add_waiter(w)
    first = add_waiter(w, expansion=True)
    second = add_waiter(w, expansion=True)
    w.check_stall()
    assert first.result() is True  # let through
    assert not pump.done() and not second.done()  # one at a time, never the pump
    assert [f for f, _, _ in w.waiting] == [pump, second]


async def test_a_generator_let_through_produces_without_room() -> None:
    w = window(1, tokens=2, busy=1)
    w.expanding = 1  # tokens - expanding == limit: no room for a child
    await asyncio.wait_for(w.wait_for_room(expansion=True), 1)  # stalled: let through
    assert w.busy == 1 and w.waiting == []


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
@pytest.mark.parametrize("sync", [False, True])
async def test_a_generator_feeding_a_batch_stage_keeps_to_the_window(mode: str, sync: bool) -> None:
    """In an ordered run a generator whose children a batch stage had taken counted them
    as gone: with a window of 4 the run held 7,500 items (a bug hunt's find)."""

    async def agen(x: int) -> Any:
        for i in range(5000):
            yield i

    def gen(x: int) -> Any:
        yield from range(5000)

    @batch_task(max_size=2)
    async def slow_save(batch: list[int]) -> int:
        await asyncio.sleep(0)
        return len(batch)

    children = single_task(gen if sync else agen)
    stream = (children | slow_save).with_context(max_in_flight=4, execution_mode=mode)([0])
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            assert stream._run is not None
            peak = max(peak, stream._run.window.tokens)
            await asyncio.sleep(0)

    stream_started = stream.__aiter__()
    watcher = asyncio.create_task(watch())
    try:
        async with asyncio.timeout(30):
            out = [r async for r in stream_started]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert out == [2] * 2500
    assert peak <= 5  # the window, and one generator item past it


async def test_a_run_holding_resources_looks_for_a_stall_when_its_input_ends() -> None:
    """The supervisor of a run with resources waits for the run's end when its input is
    done: if it was the last to work, a generator waiting for room must still be let on
    (it was not: a model property's deadlock, flaky with processes)."""

    async def source() -> Any:
        for i in range(3):
            yield i
        await asyncio.sleep(0.01)  # the generator is waiting for room by now

    @single_task(concurrency_limit=1)
    def five(x: int) -> Any:
        yield from [x] * 5

    @batch_task(max_size=4)
    def group(batch: list[int], *, box: list[int]) -> int:
        return len(batch)

    group = group.with_resources(box=lambda: contextlib.nullcontext([]))
    async with asyncio.timeout(5):
        out = await (five | group).with_context(max_in_flight=1)(source()).collect()
    assert out == [4, 4, 4, 3]
