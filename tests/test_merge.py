"""conveyor.merge: several inputs as one, fair, lazy, and closed on every exit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

import conveyor
from conveyor import single_task


@single_task
async def ident(x: int) -> int:
    await asyncio.sleep(0)
    return x


@single_task
def double(x: int) -> int:
    return x * 2


class Source:
    """An async generator input that records how far it was read and whether it closed."""

    def __init__(self, items: list[int], delay: float = 0.0, fail_at: int | None = None):
        self.items = items
        self.delay = delay
        self.fail_at = fail_at
        self.read = 0
        self.closed = False

    async def gen(self) -> AsyncIterator[int]:
        try:
            for index, item in enumerate(self.items):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if index == self.fail_at:
                    raise ValueError(f"source broke at {item}")
                self.read += 1
                yield item
        finally:
            self.closed = True


MODES = ["ordered", "as_completed"]


async def run_all(pipeline: conveyor.Pipeline, source: object, mode: str) -> list[int]:
    if mode == "ordered":
        return await pipeline(source).collect()
    return [x async for x in pipeline.as_completed(source)]


@pytest.mark.parametrize("mode", MODES)
async def test_every_item_of_every_input_each_in_its_own_order(mode: str) -> None:
    a = Source(list(range(0, 50)))
    b = Source(list(range(100, 130)), delay=0.001)

    def plain():  # a generator: read on its turns
        yield from range(200, 240)

    merged = conveyor.merge(a.gen(), b.gen(), plain(), [300, 301])
    results = await run_all(ident | double, merged, mode)
    expected = [2 * x for x in [*range(50), *range(100, 130), *range(200, 240), 300, 301]]
    assert Counter(results) == Counter(expected)
    if mode == "ordered":  # each input's items keep their order
        for low, high in [(0, 50), (100, 130), (200, 240)]:
            own = [x for x in results if 2 * low <= x < 2 * high]
            assert own == sorted(own)
    assert a.closed and b.closed


async def test_inputs_take_turns() -> None:
    merged = conveyor.merge([1, 2, 3], [10, 20, 30], (x for x in [100, 200]))
    assert [x async for x in merged] == [1, 10, 100, 2, 20, 200, 3, 30]


async def test_a_slow_input_does_not_hold_back_the_others() -> None:
    slow = Source([1000, 1001], delay=0.5)
    fast = Source(list(range(20)))
    seen: list[int] = []
    async with conveyor.Pipeline([ident])(conveyor.merge(slow.gen(), fast.gen())) as stream:
        async for x in stream:
            seen.append(x)
            if len(seen) == 20:
                break
    assert sorted(seen) == list(range(20))  # all the fast ones, none waited for the slow
    assert slow.closed and fast.closed


async def test_inputs_are_read_lazily_under_the_window() -> None:
    sources = [Source(list(range(i * 1000, i * 1000 + 500))) for i in range(3)]
    stream = conveyor.Pipeline([ident]).with_context(max_in_flight=4)(
        conveyor.merge(*(s.gen() for s in sources))
    )
    taken = 0
    async with stream:
        async for _ in stream:
            taken += 1
            if taken == 30:
                break
    read = sum(s.read for s in sources)
    # what was taken, the window, and at most one read ahead per input
    assert read <= taken + 4 + len(sources)
    assert all(s.closed for s in sources)


@pytest.mark.parametrize("mode", MODES)
async def test_a_failing_input_fails_the_run_and_closes_the_others(mode: str) -> None:
    good = Source(list(range(100)), delay=0.001)
    bad = Source(list(range(100, 110)), fail_at=5)
    with pytest.raises(ValueError, match="source broke at 105") as info:
        await run_all(conveyor.Pipeline([ident]), conveyor.merge(good.gen(), bad.gen()), mode)
    assert any("conveyor.merge's input 1" in note for note in info.value.__notes__)
    assert good.closed and bad.closed


async def test_a_failing_stage_closes_every_input() -> None:
    @single_task
    def boom(x: int) -> int:
        if x == 7:
            raise RuntimeError("stage failed")
        return x

    sources = [Source(list(range(i * 100, i * 100 + 50)), delay=0.001) for i in range(3)]
    with pytest.raises(RuntimeError, match="stage failed"):
        await conveyor.Pipeline([boom])(conveyor.merge(*(s.gen() for s in sources))).collect()
    assert all(s.closed for s in sources)


async def test_cancelling_the_consumer_closes_every_input() -> None:
    sources = [Source(list(range(1000)), delay=0.01) for _ in range(2)]
    started = asyncio.Event()

    async def consume() -> None:
        async with conveyor.Pipeline([ident])(conveyor.merge(*(s.gen() for s in sources))) as s:
            async for _ in s:
                started.set()

    task = asyncio.ensure_future(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(s.closed for s in sources)


async def test_other_streams_as_inputs() -> None:
    first = conveyor.Pipeline([double])(range(10))
    tail = Source(list(range(1000)))
    second = conveyor.Pipeline([ident])(tail.gen())
    seen = []
    async with conveyor.Pipeline([ident])(conveyor.merge(first, second)) as stream:
        async for x in stream:
            seen.append(x)
            if len(seen) == 15:
                break
    assert len(seen) == 15
    assert tail.closed  # the second stream's run was closed, and with it its input


async def test_an_unread_merge_closes_its_inputs() -> None:
    a = Source([1, 2])
    gen = a.gen()
    await anext(gen)  # (started, so that closing runs its finally)
    merged = conveyor.merge(gen, [3])
    async with conveyor.Pipeline([ident])(merged):
        pass
    assert a.closed


def test_bad_inputs_fail_at_call_time() -> None:
    with pytest.raises(TypeError, match="at least one input"):
        conveyor.merge()
    with pytest.raises(TypeError, match="input 1 is a 'int'"):
        conveyor.merge([1], 5)  # type: ignore[arg-type]


async def test_many_inputs_cost_the_same_per_item() -> None:
    """Each item was served by a scan of every input: 20,000 lists of 3 items took 8
    minutes (the scan, 20,000 inputs for each of 60,000 items); now a line of the inputs
    with an item ready serves each in O(1)."""
    lists = [[i, i] for i in range(10_000)]
    start = time.perf_counter()
    merged = [x async for x in conveyor.merge(*lists)]
    seconds = time.perf_counter() - start
    assert merged == [i for i in range(10_000)] * 2  # (turns: every list's first, then...)
    assert seconds < 10, seconds  # (measured: 0.05 s; the scan took over a minute)


class OldStyleIterable:
    """An iterable whose iterator has ``__next__`` but no ``__iter__`` (``iter()`` takes
    it, ``collections.abc.Iterator`` does not)."""

    class Cursor:
        def __init__(self) -> None:
            self.left = [1, 2, 3]

        def __next__(self) -> int:
            if not self.left:
                raise StopIteration
            return self.left.pop(0)

    def __iter__(self) -> OldStyleIterable.Cursor:
        return self.Cursor()


async def test_an_iterator_that_is_not_an_abc_iterator_is_still_a_plain_input() -> None:
    merged = conveyor.merge(OldStyleIterable(), [10, 20])  # type: ignore[arg-type]
    assert [x async for x in merged] == [1, 10, 2, 20, 3]


async def test_closing_a_merge_ends_a_read_waiting_for_its_inputs() -> None:
    slow = Source([1, 2], delay=10)
    merged = conveyor.merge(slow.gen())
    reader = asyncio.ensure_future(anext(merged))
    await asyncio.sleep(0.01)
    await merged.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 5)
    assert slow.closed


async def test_one_async_iterator_given_twice_is_refused() -> None:
    """Its two reads at once failed in the run: 'anext(): asynchronous generator is
    already running'."""
    source = Source([1, 2])
    gen = source.gen()
    with pytest.raises(TypeError, match="input 2 is input 0 again"):
        conveyor.merge(gen, [5], gen)
    await gen.aclose()
    lists = [1, 2]
    assert [x async for x in conveyor.merge(lists, lists)] == [1, 1, 2, 2]  # (each its own)
