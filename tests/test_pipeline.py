"""Pipelines: composition, inputs, execution modes, context and concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor import (
    AsyncStream,
    ContextManager,
    ExecutionMode,
    Pipeline,
    PipelineContext,
    batch_task,
    get_current_context,
    single_task,
    with_context,
)


@single_task
async def double(x: int) -> int:
    return x * 2


@single_task
def add_one(x: int) -> int:
    return x + 1


@single_task
async def square(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


@batch_task(max_size=2)
def pair_sums(batch: list[int]) -> int:
    return sum(batch)


# -- composition --------------------------------------------------------------------------


async def test_task_or_task() -> None:
    pipeline = double | add_one
    assert isinstance(pipeline, Pipeline)
    assert pipeline.stages == [double, add_one]
    assert await pipeline([1, 2, 3]).collect() == [3, 5, 7]


async def test_pipeline_or_task() -> None:
    pipeline = (double | add_one) | square
    assert pipeline.stages == [double, add_one, square]
    assert await pipeline([1, 2]).collect() == [9, 25]


async def test_task_or_pipeline() -> None:
    pipeline = square | (double | add_one)
    assert pipeline.stages == [square, double, add_one]
    assert await pipeline([1, 2]).collect() == [3, 9]


async def test_pipeline_or_pipeline() -> None:
    pipeline = (double | add_one) | (square | pair_sums)
    assert pipeline.stages == [double, add_one, square, pair_sums]
    assert await pipeline([1, 2, 3]).collect() == [9 + 25, 49]


async def test_add_mutates_and_returns_self() -> None:
    pipeline = Pipeline()
    result = pipeline.add(double, add_one)
    assert result is pipeline
    assert pipeline.stages == [double, add_one]
    pipeline.add(square | pair_sums)
    assert pipeline.stages == [double, add_one, square, pair_sums]
    assert await Pipeline().add(double, add_one)([1, 2]).collect() == [3, 5]


def test_or_never_mutates_operands() -> None:
    left = double | add_one
    right = square | pair_sums
    combined = left | right
    assert len(left.stages) == 2
    assert len(right.stages) == 2
    assert len(combined.stages) == 4
    extended = left | square
    assert len(left.stages) == 2
    assert len(extended.stages) == 3
    prefixed = double | right
    assert len(right.stages) == 2
    assert len(prefixed.stages) == 3


def test_pipeline_from_list_of_tasks() -> None:
    pipeline = Pipeline([double, add_one])
    assert pipeline.stages == [double, add_one]


def test_len() -> None:
    assert len(Pipeline()) == 0
    assert len(double | add_one) == 2
    assert len(double | add_one | square | pair_sums) == 4


async def test_empty_pipeline_passes_items_through() -> None:
    assert await Pipeline()([1, 2, 3]).collect() == [1, 2, 3]
    assert sorted(await Pipeline().as_completed([3, 1, 2]).collect()) == [1, 2, 3]


async def test_pipeline_can_run_many_times() -> None:
    pipeline = double | add_one
    assert await pipeline([1]).collect() == [3]
    assert await pipeline([2]).collect() == [5]


# -- inputs -------------------------------------------------------------------------------


async def test_input_list_tuple_range() -> None:
    pipeline = double | add_one
    assert await pipeline([1, 2]).collect() == [3, 5]
    assert await pipeline((1, 2)).collect() == [3, 5]
    assert await pipeline(range(3)).collect() == [1, 3, 5]


async def test_input_set() -> None:
    assert sorted(await (double | add_one)({1, 2, 3}).collect()) == [3, 5, 7]


async def test_input_generator_and_iterator() -> None:
    def gen() -> Iterator[int]:
        yield from (1, 2, 3)

    assert await double(gen()).collect() == [2, 4, 6]
    assert await double(iter([1, 2, 3])).collect() == [2, 4, 6]


async def test_input_async_generator() -> None:
    async def agen() -> AsyncIterator[int]:
        for i in (1, 2, 3):
            await asyncio.sleep(0)
            yield i

    assert await (double | add_one)(agen()).collect() == [3, 5, 7]


async def test_input_another_pipelines_stream() -> None:
    first = double | add_one
    second = square | pair_sums
    assert await second(first([1, 2, 3])).collect() == [9 + 25, 49]


async def test_input_dict_iterates_keys() -> None:
    @single_task
    def upper(key: str) -> str:
        return key.upper()

    assert await upper({"a": 1, "b": 2}).collect() == ["A", "B"]


async def test_input_is_pulled_lazily() -> None:
    pulled = 0

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    pipeline = (double | add_one).with_context(max_in_flight=10)
    got = []
    async with pipeline(numbers()) as stream:
        async for x in stream:
            got.append(x)
            if len(got) == 3:
                break
    assert got == [1, 3, 5]
    assert pulled <= 10 + 3 + 5


async def test_input_is_pulled_lazily_as_completed() -> None:
    pulled = 0

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    pipeline = (square | add_one).with_context(max_in_flight=10)
    got = []
    async with pipeline.as_completed(numbers()) as stream:
        async for x in stream:
            got.append(x)
            if len(got) == 3:
                break
    assert len(got) == 3
    assert pulled <= 10 + 3 + 5


async def test_async_input_is_pulled_lazily() -> None:
    pulled = 0

    async def numbers() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    pipeline = (square | add_one).with_context(max_in_flight=10)
    got = []
    async with pipeline(numbers()) as stream:
        async for x in stream:
            got.append(x)
            if len(got) == 3:
                break
    assert got == [1, 2, 5]
    assert pulled <= 10 + 3 + 5


async def test_no_input_calls_first_task_once_as_a_source() -> None:
    calls = 0

    @single_task
    async def pages() -> AsyncIterator[int]:
        nonlocal calls
        calls += 1
        yield 1
        yield 2
        yield 3

    assert await (pages | double)().collect() == [2, 4, 6]
    assert calls == 1
    assert sorted(await (pages | double).as_completed().collect()) == [2, 4, 6]
    assert calls == 2


async def test_no_input_with_plain_source_function() -> None:
    @single_task
    def seed() -> list[int]:
        return [5, 6]

    assert await (seed | add_one)().collect() == [6, 7]


# -- execution modes ----------------------------------------------------------------------


@single_task
async def sleepy(x: int) -> int:
    await asyncio.sleep(3 - x)
    return x


@pytest.mark.looptime
async def test_ordered_by_default() -> None:
    assert await (sleepy | add_one)(range(3)).collect() == [1, 2, 3]


@pytest.mark.looptime
async def test_with_execution_mode_as_completed() -> None:
    pipeline = (sleepy | add_one).with_execution_mode("as_completed")
    assert pipeline.context.execution_mode is ExecutionMode.AS_COMPLETED
    assert await pipeline(range(3)).collect() == [3, 2, 1]
    back = pipeline.with_execution_mode(ExecutionMode.ORDERED)
    assert await back(range(3)).collect() == [1, 2, 3]


@pytest.mark.looptime
async def test_as_completed_method() -> None:
    pipeline = Pipeline([sleepy])
    assert await pipeline.as_completed(range(3)).collect() == [2, 1, 0]
    assert await sleepy.as_completed(range(3)).collect() == [2, 1, 0]
    assert await pipeline(range(3)).collect() == [0, 1, 2]


@pytest.mark.looptime
async def test_as_completed_yields_each_result_when_ready() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: list[tuple[int, float]] = []
    async for x in sleepy.as_completed(range(3)):
        seen.append((x, loop.time() - start))
    assert seen == [(2, pytest.approx(1)), (1, pytest.approx(2)), (0, pytest.approx(3))]


@pytest.mark.looptime
async def test_ordered_yields_each_result_as_soon_as_its_turn_comes() -> None:
    @single_task
    async def wait(x: int) -> int:
        await asyncio.sleep(x)
        return x

    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: list[tuple[int, float]] = []
    async for x in wait([1, 3, 2]):
        seen.append((x, loop.time() - start))
    assert seen == [(1, pytest.approx(1)), (3, pytest.approx(3)), (2, pytest.approx(3))]


# -- context ------------------------------------------------------------------------------


def test_with_context_sets_fields_and_data() -> None:
    base = double | add_one
    pipeline = base.with_context(
        execution_mode="as_completed", max_in_flight=7, data={"user": "ann"}
    )
    assert pipeline.context.execution_mode is ExecutionMode.AS_COMPLETED
    assert pipeline.context.max_in_flight == 7
    assert pipeline.context.data == {"user": "ann"}
    # the original is untouched
    assert base.context.execution_mode is ExecutionMode.ORDERED
    assert base.context.data == {}
    assert pipeline.stages == base.stages


def test_pipeline_with_explicit_context() -> None:
    ctx = PipelineContext(max_in_flight=3, data={"k": 1})
    pipeline = Pipeline([double], ctx)
    assert pipeline.context.max_in_flight == 3
    assert pipeline.context.data == {"k": 1}
    assert Pipeline(ctx).context.max_in_flight == 3


async def test_get_current_context_in_async_and_sync_tasks() -> None:
    seen: list[Any] = []

    @single_task
    async def probe_async(x: int) -> int:
        await asyncio.sleep(0)
        seen.append(("async", get_current_context()))
        return x

    @single_task
    def probe_sync(x: int) -> int:
        seen.append(("sync", get_current_context()))
        return x

    @single_task
    async def probe_eager(x: int) -> int:
        seen.append(("eager", get_current_context()))
        return x

    pipeline = (probe_async | probe_sync | probe_eager).with_context(data={"user": "ann"})
    assert await pipeline([1, 2]).collect() == [1, 2]
    assert len(seen) == 6
    contexts = [ctx for _, ctx in seen]
    assert all(isinstance(ctx, PipelineContext) for ctx in contexts)
    assert all(ctx is contexts[0] for ctx in contexts)
    assert contexts[0].data == {"user": "ann"}
    assert isinstance(contexts[0].pipeline_id, str)
    assert probe_sync.get_context() is None


async def test_get_current_context_in_batch_and_generator_tasks() -> None:
    seen: list[Any] = []

    @batch_task(max_size=2)
    def batch(items: list[int]) -> list[int]:
        seen.append(get_current_context())
        return items

    @single_task
    async def agen(x: int) -> AsyncIterator[int]:
        seen.append(get_current_context())
        yield x

    pipeline = (batch | agen).with_context(data={"user": "ann"})
    assert await pipeline([1, 2, 3]).collect() == [1, 2, 3]
    assert len(seen) == 5
    assert all(isinstance(ctx, PipelineContext) for ctx in seen)
    assert all(ctx.data == {"user": "ann"} for ctx in seen)
    assert len({ctx.pipeline_id for ctx in seen}) == 1


async def test_get_current_context_outside_a_run_is_none() -> None:
    assert get_current_context() is None
    await (double | add_one)([1]).collect()
    assert get_current_context() is None


def test_get_current_context_outside_a_loop_is_none() -> None:
    assert get_current_context() is None


async def test_pipeline_id_is_unique_per_run() -> None:
    ids: list[str | None] = []

    @single_task
    def probe(x: int) -> int:
        ctx = get_current_context()
        assert ctx is not None
        ids.append(ctx.pipeline_id)
        return x

    pipeline = probe | add_one
    await pipeline([1, 2]).collect()
    await pipeline([1]).collect()
    await pipeline.as_completed([1]).collect()
    assert all(isinstance(i, str) and i for i in ids)
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3
    assert pipeline.context.pipeline_id is None


async def test_context_data_is_copied_per_run() -> None:
    seen: list[dict[str, Any]] = []

    @single_task
    async def mutate(x: int) -> int:
        ctx = get_current_context()
        assert ctx is not None
        seen.append(dict(ctx.data))
        ctx.data["touched"] = ctx.data.get("touched", 0) + 1
        return x

    pipeline = Pipeline([mutate]).with_context(data={"user": "ann"})
    await pipeline([1]).collect()
    await pipeline([1]).collect()
    assert seen == [{"user": "ann"}, {"user": "ann"}]
    assert pipeline.context.data == {"user": "ann"}


async def test_concurrent_runs_get_their_own_context() -> None:
    seen: dict[int, set[str | None]] = {1: set(), 2: set()}

    @single_task
    async def probe(x: int) -> int:
        await asyncio.sleep(0)
        ctx = get_current_context()
        assert ctx is not None
        seen[x].add(ctx.pipeline_id)
        return x

    pipeline = Pipeline([probe])
    a, b = await asyncio.gather(pipeline([1, 1, 1]).collect(), pipeline([2, 2]).collect())
    assert a == [1, 1, 1]
    assert b == [2, 2]
    assert len(seen[1]) == 1
    assert len(seen[2]) == 1
    assert seen[1] != seen[2]


def test_context_manager_installs_and_restores() -> None:
    outer = PipelineContext(data={"n": 1})
    inner = PipelineContext(data={"n": 2})
    assert get_current_context() is None
    with ContextManager(outer) as entered:
        assert entered is outer
        assert get_current_context() is outer
        with ContextManager(inner):
            assert get_current_context() is inner
        assert get_current_context() is outer
    assert get_current_context() is None


async def test_with_context_helper() -> None:
    ctx = PipelineContext(data={"user": "bob"})

    async def read() -> PipelineContext | None:
        await asyncio.sleep(0)
        return get_current_context()

    assert await with_context(ctx, read()) is ctx
    assert get_current_context() is None


# -- concurrency --------------------------------------------------------------------------


def _concurrency_probe(**options: Any) -> tuple[Any, dict[str, int]]:
    stats = {"now": 0, "max": 0, "calls": 0}

    @single_task(**options)
    async def work(x: int) -> int:
        stats["now"] += 1
        stats["calls"] += 1
        stats["max"] = max(stats["max"], stats["now"])
        try:
            await asyncio.sleep(1)
        finally:
            stats["now"] -= 1
        return x

    return work, stats


@pytest.mark.looptime
async def test_concurrency_limit() -> None:
    work, stats = _concurrency_probe(concurrency_limit=2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await work(range(10)).collect() == list(range(10))
    assert loop.time() - start == pytest.approx(5)
    assert stats["max"] == 2
    assert stats["calls"] == 10


@pytest.mark.looptime
async def test_concurrency_limit_as_completed() -> None:
    work, stats = _concurrency_probe(concurrency_limit=3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert sorted(await work.as_completed(range(10)).collect()) == list(range(10))
    assert loop.time() - start == pytest.approx(4)
    assert stats["max"] == 3


@pytest.mark.looptime
async def test_unlimited_concurrency() -> None:
    work, stats = _concurrency_probe()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await work(range(10)).collect() == list(range(10))
    assert loop.time() - start == pytest.approx(1)
    assert stats["max"] == 10


@pytest.mark.looptime
async def test_max_parallelism_caps_single_tasks_without_limit() -> None:
    work, stats = _concurrency_probe()
    pipeline = Pipeline([work], PipelineContext(max_parallelism=3))
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await pipeline(range(9)).collect() == list(range(9))
    assert loop.time() - start == pytest.approx(3)
    assert stats["max"] == 3


@pytest.mark.looptime
async def test_max_parallelism_via_with_context() -> None:
    work, stats = _concurrency_probe()
    pipeline = Pipeline([work]).with_context(max_parallelism=3)
    assert await pipeline(range(9)).collect() == list(range(9))
    assert stats["max"] == 3


@pytest.mark.looptime
async def test_own_concurrency_limit_wins_over_max_parallelism() -> None:
    work, stats = _concurrency_probe(concurrency_limit=5)
    pipeline = Pipeline([work], PipelineContext(max_parallelism=2))
    assert await pipeline(range(10)).collect() == list(range(10))
    assert stats["max"] == 5


@pytest.mark.looptime
async def test_max_in_flight_bounds_concurrency() -> None:
    work, stats = _concurrency_probe()
    pipeline = Pipeline([work]).with_context(max_in_flight=4)
    assert await pipeline(range(12)).collect() == list(range(12))
    assert stats["max"] <= 4


@pytest.mark.looptime
async def test_stages_overlap() -> None:
    @single_task
    async def first(x: int) -> int:
        await asyncio.sleep(1)
        return x + 1

    @single_task
    async def second(x: int) -> int:
        await asyncio.sleep(1)
        return x * 10

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await (first | second)(range(5)).collect() == [10, 20, 30, 40, 50]
    assert loop.time() - start == pytest.approx(2)
    start = loop.time()
    assert sorted(await (first | second).as_completed(range(5)).collect()) == [10, 20, 30, 40, 50]
    assert loop.time() - start == pytest.approx(2)


@pytest.mark.looptime
async def test_stages_overlap_with_limits() -> None:
    @single_task(concurrency_limit=1)
    async def first(x: int) -> int:
        await asyncio.sleep(1)
        return x

    @single_task(concurrency_limit=1)
    async def second(x: int) -> int:
        await asyncio.sleep(1)
        return x

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await (first | second)(range(5)).collect() == [0, 1, 2, 3, 4]
    # a two-stage assembly line: 5 steps for the first stage, plus one for the last item
    assert loop.time() - start == pytest.approx(6)


async def test_stream_of_pipeline_is_async_stream() -> None:
    stream = (double | add_one)([1])
    assert isinstance(stream, AsyncStream)
    assert await stream.collect() == [3]
