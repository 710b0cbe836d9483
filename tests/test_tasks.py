"""Tasks: the decorators, the kinds of functions they accept, and what results become."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor import BatchTask, Pipeline, SingleTask, batch_task, single_task

# -- decorators and attributes -----------------------------------------------------------


def test_single_task_bare() -> None:
    async def double(x: int) -> int:
        return x * 2

    task = single_task(double)
    assert isinstance(task, SingleTask)
    assert task.func is double
    assert task.task_name == "double"


def test_single_task_with_options() -> None:
    @single_task(on_error="skip_item", concurrency_limit=3, timeout=2.5, task_name="renamed")
    async def double(x: int) -> int:
        return x * 2

    assert isinstance(double, SingleTask)
    assert double.task_name == "renamed"
    assert double.concurrency_limit == 3
    assert double.timeout == 2.5
    assert double.on_error == "skip_item"


def test_single_task_with_empty_options() -> None:
    @single_task()
    def inc(x: int) -> int:
        return x + 1

    assert isinstance(inc, SingleTask)
    assert inc.task_name == "inc"


def test_batch_task_options() -> None:
    def total(batch: list[int]) -> int:
        return sum(batch)

    task = batch_task(max_size=5, min_size=2, max_wait=0.5)(total)
    assert isinstance(task, BatchTask)
    assert task.func is total
    assert task.task_name == "total"
    assert task.min_size == 2
    assert task.max_size == 5
    assert task.max_wait == 0.5


def test_batch_task_defaults() -> None:
    @batch_task(max_size=4)
    async def total(batch: list[int]) -> int:
        return sum(batch)

    assert total.min_size == 1
    assert total.max_size == 4
    assert total.max_wait is None


def test_batch_task_max_size_defaults_to_min_size() -> None:
    @batch_task(min_size=3)
    async def total(batch: list[int]) -> int:
        return sum(batch)

    assert total.min_size == 3
    assert total.max_size == 3


def test_batch_task_task_name_override() -> None:
    @batch_task(max_size=2, task_name="summer")
    async def total(batch: list[int]) -> int:
        return sum(batch)

    assert total.task_name == "summer"


def test_bare_batch_task_raises_type_error() -> None:
    with pytest.raises(TypeError, match="batch_task"):

        @batch_task  # type: ignore[misc, call-overload]
        async def total(batch: list[int]) -> int:
            return sum(batch)


# -- function kinds in single tasks -------------------------------------------------------


async def test_async_function() -> None:
    @single_task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert await double([1, 2, 3]).collect() == [2, 4, 6]


async def test_async_function_that_never_suspends() -> None:
    @single_task
    async def double(x: int) -> int:
        return x * 2

    assert await double([1, 2, 3]).collect() == [2, 4, 6]


async def test_sync_function() -> None:
    @single_task
    def double(x: int) -> int:
        return x * 2

    assert await double([1, 2, 3]).collect() == [2, 4, 6]


async def test_generator_function() -> None:
    @single_task
    def twice(x: int) -> Iterator[int]:
        yield x
        yield x * 10

    assert await twice([1, 2, 3]).collect() == [1, 10, 2, 20, 3, 30]


async def test_async_generator_function() -> None:
    @single_task
    async def twice(x: int) -> AsyncIterator[int]:
        yield x
        await asyncio.sleep(0)
        yield x * 10

    assert await twice([1, 2, 3]).collect() == [1, 10, 2, 20, 3, 30]


async def test_sync_function_returning_coroutine_is_awaited() -> None:
    async def work(x: int) -> int:
        await asyncio.sleep(0)
        return x + 100

    @single_task
    def indirect(x: int) -> Any:
        return work(x)

    assert await indirect([1, 2]).collect() == [101, 102]


async def test_sync_function_returning_non_suspending_coroutine_is_awaited() -> None:
    async def work(x: int) -> int:
        return x + 100

    @single_task
    def indirect(x: int) -> Any:
        return work(x)

    assert await indirect([1, 2]).collect() == [101, 102]


async def test_all_kinds_in_one_pipeline() -> None:
    @single_task
    async def a(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @single_task
    def b(x: int) -> int:
        return x * 2

    @single_task
    def c(x: int) -> Iterator[int]:
        yield x
        yield -x

    @single_task
    async def d(x: int) -> AsyncIterator[str]:
        yield f"<{x}>"

    assert await (a | b | c | d)([0, 1]).collect() == ["<2>", "<-2>", "<4>", "<-4>"]


# -- return values ------------------------------------------------------------------------


async def test_none_drops_the_item() -> None:
    @single_task
    async def evens(x: int) -> int | None:
        return x if x % 2 == 0 else None

    assert await evens(range(7)).collect() == [0, 2, 4, 6]
    assert sorted(await evens.as_completed(range(7)).collect()) == [0, 2, 4, 6]


async def test_list_becomes_several_items() -> None:
    @single_task
    def repeat(x: int) -> list[int]:
        return [x] * x

    assert await repeat([1, 2, 3]).collect() == [1, 2, 2, 3, 3, 3]
    assert sorted(await repeat.as_completed([1, 2, 3]).collect()) == [1, 2, 2, 3, 3, 3]


async def test_empty_list_drops_the_item() -> None:
    @single_task
    def maybe(x: int) -> list[int]:
        return [] if x == 2 else [x]

    assert await maybe([1, 2, 3]).collect() == [1, 3]


async def test_tuple_is_one_item() -> None:
    @single_task
    def pair(x: int) -> tuple[int, int]:
        return (x, x * x)

    assert await pair([1, 2, 3]).collect() == [(1, 1), (2, 4), (3, 9)]


async def test_list_items_flow_to_the_next_task() -> None:
    @single_task
    def split(x: int) -> list[int]:
        return [x, x + 100]

    @single_task
    async def neg(x: int) -> int:
        return -x

    assert await (split | neg)([1, 2]).collect() == [-1, -101, -2, -102]


async def test_generator_yielded_none_is_dropped() -> None:
    @single_task
    def gen(x: int) -> Iterator[int | None]:
        yield x
        yield None
        yield x + 1

    @single_task
    async def agen(x: int) -> AsyncIterator[int | None]:
        yield None
        yield x

    assert await gen([1, 10]).collect() == [1, 2, 10, 11]
    assert await agen([1, 10]).collect() == [1, 10]


async def test_generator_values_are_pulled_lazily() -> None:
    produced = 0

    @single_task
    def numbers(_: Any) -> Iterator[int]:
        nonlocal produced
        i = 0
        while True:  # endless: only lazy pulling can work
            produced += 1
            yield i
            i += 1

    pipeline = Pipeline([numbers]).with_context(max_in_flight=5)
    got = []
    async with pipeline([None]) as stream:
        async for x in stream:
            got.append(x)
            if len(got) == 3:
                break
    assert got == [0, 1, 2]
    assert produced <= 5 + 3 + 3


async def test_async_generator_values_are_pulled_lazily() -> None:
    produced = 0

    @single_task
    async def numbers(_: Any) -> AsyncIterator[int]:
        nonlocal produced
        i = 0
        while True:
            produced += 1
            yield i
            i += 1

    pipeline = Pipeline([numbers]).with_context(max_in_flight=5)
    got = []
    async with pipeline.as_completed([None]) as stream:
        async for x in stream:
            got.append(x)
            if len(got) == 3:
                break
    assert got == [0, 1, 2]
    assert produced <= 5 + 3 + 3


# -- batch tasks --------------------------------------------------------------------------


async def test_batch_async_function_returning_scalar() -> None:
    @batch_task(max_size=3)
    async def total(batch: list[int]) -> int:
        await asyncio.sleep(0)
        return sum(batch)

    assert await total(range(1, 8)).collect() == [6, 15, 7]


async def test_batch_sync_function_returning_scalar() -> None:
    @batch_task(max_size=3)
    def total(batch: list[int]) -> int:
        return sum(batch)

    assert await total(range(1, 8)).collect() == [6, 15, 7]


async def test_batch_receives_lists_of_at_most_max_size() -> None:
    seen: list[list[int]] = []

    @batch_task(max_size=4)
    def record(batch: list[int]) -> None:
        seen.append(batch)

    assert await record(range(10)).collect() == []
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(type(batch) is list for batch in seen)


async def test_batch_returning_list_gives_one_item_per_element() -> None:
    @batch_task(max_size=2)
    async def tenfold(batch: list[int]) -> list[int]:
        return [x * 10 for x in batch]

    @batch_task(max_size=2)
    def tenfold_sync(batch: list[int]) -> list[int]:
        return [x * 10 for x in batch]

    assert await tenfold([1, 2, 3, 4, 5]).collect() == [10, 20, 30, 40, 50]
    assert await tenfold_sync([1, 2, 3, 4, 5]).collect() == [10, 20, 30, 40, 50]


async def test_batch_returning_none_gives_nothing() -> None:
    calls = 0

    @batch_task(max_size=2)
    async def sink(batch: list[int]) -> None:
        nonlocal calls
        calls += 1

    assert await sink([1, 2, 3, 4, 5]).collect() == []
    assert calls == 3


async def test_batch_between_single_tasks() -> None:
    @single_task
    async def double(x: int) -> int:
        return x * 2

    @batch_task(max_size=3)
    async def sum_batch(batch: list[int]) -> int:
        return sum(batch)

    @single_task
    def add_ten(x: int) -> int:
        return x + 10

    pipeline = double | sum_batch | add_ten
    assert await pipeline(range(1, 8)).collect() == [22, 40, 24]


async def test_batch_remainder_below_min_size_is_dropped() -> None:
    @batch_task(min_size=3, max_size=3)
    def total(batch: list[int]) -> int:
        return sum(batch)

    assert await total([1, 2, 3, 4, 5]).collect() == [6]


@pytest.mark.looptime
async def test_batch_max_wait_flushes_a_partial_batch() -> None:
    loop = asyncio.get_running_loop()
    flushed_at: list[tuple[float, list[int]]] = []

    async def slow_input() -> AsyncIterator[int]:
        yield 1
        yield 2
        await asyncio.sleep(10)
        yield 3

    @batch_task(max_size=100, max_wait=1)
    def record(batch: list[int]) -> list[int]:
        flushed_at.append((loop.time() - start, batch))
        return batch

    start = loop.time()
    assert await record(slow_input()).collect() == [1, 2, 3]
    assert flushed_at[0] == (pytest.approx(1), [1, 2])
    assert flushed_at[1][1] == [3]


# -- methods ------------------------------------------------------------------------------


class Scaler:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @single_task
    async def scale(self, x: int) -> int:
        return x * self.factor

    @single_task
    def scale_sync(self, x: int) -> int:
        return x * self.factor


@single_task
def plus_one(x: int) -> int:
    return x + 1


async def test_method_task_binds_to_instance() -> None:
    a = Scaler(2)
    b = Scaler(3)
    assert await a.scale([1, 2, 3]).collect() == [2, 4, 6]
    assert await b.scale([1, 2, 3]).collect() == [3, 6, 9]
    assert await a.scale_sync([1, 2]).collect() == [2, 4]


def test_method_task_is_one_object_per_instance() -> None:
    a = Scaler(2)
    b = Scaler(3)
    assert isinstance(a.scale, SingleTask)
    assert a.scale is a.scale
    assert a.scale is not b.scale
    assert isinstance(Scaler.scale, SingleTask)
    assert Scaler.scale is Scaler.scale
    assert a.scale.task_name == "scale"


async def test_method_task_in_a_pipeline() -> None:
    a = Scaler(10)
    pipeline = a.scale | plus_one
    assert await pipeline([1, 2]).collect() == [11, 21]
    pipeline2 = plus_one | a.scale_sync
    assert await pipeline2([1, 2]).collect() == [20, 30]


# -- repr ---------------------------------------------------------------------------------


def test_pipeline_repr() -> None:
    @single_task
    async def double(x: int) -> int:
        return x * 2

    @batch_task(max_size=3)
    async def sum_batch(batch: list[int]) -> int:
        return sum(batch)

    @single_task
    def add_ten(x: int) -> int:
        return x + 10

    assert repr(double | sum_batch | add_ten) == "double | sum_batch(max_size=3) | add_ten"
    assert repr(double) == "double"
    assert repr(sum_batch) == "sum_batch(max_size=3)"
