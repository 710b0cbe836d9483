"""The tight loop of fused plain stages (``conveyor._engine._fused``): the same results,
order, contexts, counts and failures as the engine's own path, item by item."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Failure, PipelineContext, single_task
from conveyor._engine._fused import SLICE, TightLoop, tight_loop
from conveyor._engine._input import PUMP_SLICE

var: contextvars.ContextVar[int] = contextvars.ContextVar("conveyor_fused", default=0)


class Box:
    """A result of a type the engine has not seen before (learnt at its first escape)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Box({self.value})"


PERIOD = 28
"""Every kind of result once in this many items (see ``first_fn``): 5 in 28 items, and
one in 23 at the second stage, leave the tight loop; a run where most items leave it
goes on item by item (``ESCAPES_JUDGED``): the test runs both."""


def first_fn(x: int) -> Any:
    """Every kind of result, by the item: the tight loop's escapes, all of them."""
    kind = x % PERIOD
    if kind == 1:
        return None  # dropped
    if kind == 2:
        return [x, x + 1000]  # two items
    if kind == 3:
        return (y for y in (x, x + 2000))  # a generator: two items, lazily
    if kind == 4:
        raise ValueError(x)  # the policy's: skipped, or a Failure
    if kind == 5:
        return Box(x)  # a value of a type not seen before
    return x


def second_fn(x: Any) -> Any:
    if isinstance(x, Box):
        return x.value + 1
    return x + 1 if x % 23 else None


def third_fn(x: int) -> Any:
    return x * 2


def model(items: list[Any], emit: bool) -> list[Any]:
    """The results of the three functions, composed by hand, in input order."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, Failure):
            out.append(("failure", item.item))  # (passed through untouched)
            continue
        try:
            first = first_fn(item)
        except ValueError:
            if emit:
                out.append(("failure", item))
            continue
        if first is None:
            continue
        values = list(first) if not isinstance(first, (int, Box)) else [first]
        for value in values:
            second = second_fn(value)
            if second is not None:
                out.append(third_fn(second))
    return out


def as_plain(results: list[Any]) -> list[Any]:
    return [("failure", r.item) if isinstance(r, Failure) else r for r in results]


@pytest.mark.parametrize("period", [PERIOD, 7])
@pytest.mark.parametrize("statistics", [False, True])
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("emit", [False, True])
async def test_every_kind_of_result_as_by_hand(
    statistics: bool, ordered: bool, emit: bool, period: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "PERIOD", period)
    on_error = "emit" if emit else "skip_item"
    pipeline = (
        single_task(on_error=on_error)(first_fn) | single_task(second_fn) | single_task(third_fn)
    ).with_context(statistics=statistics, max_in_flight=64)
    failure = Failure(item=-1, exception=ValueError("before"), task_name="earlier", attempts=1)
    items: list[Any] = [*range(300), failure, *range(300, 1200)]
    stream = pipeline(items) if ordered else pipeline(items).as_completed()
    async with stream:
        results = [r async for r in stream]
        run = stream._run
        assert run is not None and run.ledger.tokens == 0
    expected = model(items, emit)
    if ordered:
        assert as_plain(results) == expected
    else:
        assert sorted(map(repr, as_plain(results))) == sorted(map(repr, expected))
    if statistics:
        rows = stream.stats.stages
        calls = sum(1 for x in items if not isinstance(x, Failure))
        assert rows[0].items_in == len(items) and rows[0].failures_passed == 1
        assert rows[2].items_out == stream.stats.results == len(results)
        assert rows[0].skipped + rows[0].emitted == sum(1 for x in range(1200) if x % period == 4)
        assert rows[1].items_in == rows[0].items_out
        assert calls == len(items) - 1


async def test_the_run_uses_the_tight_loop_only_when_it_fits() -> None:
    plain = single_task(second_fn) | single_task(third_fn)

    @single_task
    async def later(x: int) -> int:
        return x

    for pipeline, fits in (
        (plain, True),
        (plain | later, False),  # (the chain does not end at the consumer)
        (single_task(concurrency_limit=2)(second_fn) | single_task(third_fn), False),
    ):
        stream = pipeline(range(3))
        async with stream:
            await anext(stream)
            assert stream._run is not None
            assert (tight_loop(stream._run) is not None) is fits


async def test_each_item_has_its_own_context_shared_by_its_fused_calls() -> None:
    def set_it(x: int) -> int:
        assert var.get() == 0, "an earlier item's value leaked into this item's context"
        var.set(x + 1)
        return x

    def read_it(x: int) -> tuple[int, int]:
        return x, var.get()  # set by this item's own first call

    var.set(0)
    results = await (single_task(set_it) | single_task(read_it))(range(1000)).collect()
    assert results == [(x, x + 1) for x in range(1000)]
    assert var.get() == 0


async def test_an_escaped_item_goes_on_in_its_own_context() -> None:
    def set_it(x: int) -> Any:
        var.set(x + 1)
        return Box(x) if x % 2 else [x]  # (both leave the composed chain)

    def read_it(x: Any) -> tuple[int, int]:
        value = x.value if isinstance(x, Box) else x
        return value, var.get()

    var.set(0)
    results = await (single_task(set_it) | single_task(read_it))(range(100)).collect()
    # (a list's items are passed on by the stage's push: each call a context of its own)
    assert results == [(x, x + 1 if x % 2 else 0) for x in range(100)]


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_returned_coroutine_is_awaited_and_later_items_keep_their_order(
    ordered: bool,
) -> None:
    async def later(x: int) -> int:
        await asyncio.sleep(0.001 * (x % 3))
        return x

    def sometimes_later(x: int) -> Any:
        return later(x) if x % 5 == 0 else x  # (a forgotten await: awaited, in a task)

    pipeline = single_task(sometimes_later) | single_task(third_fn)
    stream = pipeline(range(500)) if ordered else pipeline(range(500)).as_completed()
    results = await stream.collect()
    expected = [x * 2 for x in range(500)]
    assert (results if ordered else sorted(results)) == expected


async def test_results_come_early_when_the_calls_are_slow() -> None:
    """The pump yields to the loop every ``PUMP_SLICE`` seconds: a slice of slow calls is
    short, so the consumer gets its first result after a few calls, not a slice's worth."""
    calls = 0

    def slow(x: int) -> int:
        nonlocal calls
        calls += 1
        time.sleep(PUMP_SLICE / 2)
        return x

    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    # (not bounded in bytes: else the first items are weighed, one at a time)
    pipeline = single_task(slow).with_context(max_in_flight=10_000, max_in_flight_bytes=None)
    stream = pipeline(endless())
    async with stream:
        assert await anext(stream) == 0
        assert calls <= 8 < SLICE


async def test_the_window_holds_results_until_taken() -> None:
    pipeline = (single_task(second_fn) | single_task(third_fn)).with_context(max_in_flight=40)
    stream = pipeline(range(1, 10_000))
    async with stream:
        await anext(stream)
        await asyncio.sleep(0.01)
        run = stream._run
        assert run is not None
        # (what the consumer has not taken holds its tokens: the pump waits for room)
        assert run.ledger.tokens == len(run.ready) <= 40


@single_task
async def held_a_moment(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


@pytest.mark.looptime
@pytest.mark.parametrize("window", [4, 8, 10, 16, 64])
async def test_the_input_is_never_read_past_the_window_when_the_tight_loop_hands_over(
    window: int,
) -> None:
    """The tight loop hands the rest of the input to the item-by-item pump once a third
    of its items escape (here every one: coroutines); it did so with the window full,
    and the pump read an item before waiting for room: one more than the window read
    from the input and not yet delivered (windows 4, 8, 16 here, on the virtual clock;
    the docs' window example 1 time in 15 on uvloop)."""
    state = {"read": 0, "delivered": 0, "most": 0}

    def readings() -> Iterator[int]:
        for n in range(300):
            state["read"] += 1
            state["most"] = max(state["most"], state["read"] - state["delivered"])
            yield n

    pipeline = (held_a_moment | held_a_moment).with_context(max_in_flight=window)
    async for _ in pipeline(readings()):
        state["delivered"] += 1
    assert state["delivered"] == 300
    assert state["most"] <= window, state


async def test_a_crash_in_the_tight_loop_fails_the_run_after_earlier_results() -> None:
    def breaks(x: int) -> int:
        if x == 500:
            raise asyncio.CancelledError  # a BaseException: fails the run
        return x

    stream = (single_task(breaks) | single_task(third_fn))(range(1000))
    got: list[int] = []
    with pytest.raises(RuntimeError, match="cancelled from outside"):
        async with stream:
            async for value in stream:
                got.append(value)
    assert got == [x * 2 for x in range(500)]


async def test_a_statistics_timed_call_is_made_and_counted() -> None:
    pipeline = (single_task(second_fn) | single_task(third_fn)).with_context(
        statistics=True, max_in_flight=16
    )
    stream = pipeline(range(1, 50_000))
    async with stream:
        n = 0
        async for _ in stream:
            n += 1
            if n % 1000 == 0:
                await asyncio.sleep(0.003)  # (the sampler ticks, and arms each stage)
    rows = stream.stats.stages
    assert rows[0].items_in == 49_999 and rows[1].items_in == rows[0].items_out == n
    assert rows[0].latency.samples > 0 and rows[1].latency.samples > 0


def test_the_tight_loop_is_composed_per_run() -> None:
    assert "settle" in TightLoop.__dict__  # (the one writer of the loop's accounting)
    assert PipelineContext().statistics  # (statistics on: the default the loop keeps fast)


async def test_the_chain_is_generated_once_per_shape_not_per_run() -> None:
    """Generating the chain's code cost ~200 µs per run (a 100-item run took three times
    as long): it is generated once per shape, and each run closes over its functions."""
    from conveyor._engine import _fused

    pipeline = single_task(second_fn) | single_task(third_fn)
    await pipeline(range(1, 40)).collect()
    shapes = dict(_fused._MAKERS)
    for _ in range(3):
        results = await pipeline(range(1, 100)).collect()
        assert results == [third_fn(second_fn(x)) for x in range(1, 100) if second_fn(x)]
    assert shapes == _fused._MAKERS and (2, 0) in shapes  # (the same makers, reused)
