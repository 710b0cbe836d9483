"""Regression tests for bugs found by the bug hunt (issue 8), one test (or more) per bug.

Each test states the bug it guards against; where a whole class of bug was found, the
model tests (``test_model``) cover the class too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor import AsyncStream, ErrorHandler, Failure, Pipeline, batch_task, single_task

MODES = ["ordered", "as_completed"]


class Custom(BaseException):
    """A BaseException subclass that is not KeyboardInterrupt or SystemExit."""


@pytest.mark.parametrize("mode", MODES)
async def test_base_exception_after_suspension_reaches_the_consumer(mode: str) -> None:
    # It used to hang the run.
    @single_task
    async def raises_base(x: int) -> int:
        await asyncio.sleep(0)
        if x == 2:
            raise Custom("boom")
        return x

    with pytest.raises(Custom, match="boom") as info:
        await raises_base.with_execution_mode(mode)(range(5)).collect()
    assert info.value.__notes__ == ["conveyor: raised by task 'raises_base' on 2"]


@pytest.mark.parametrize("mode", MODES)
async def test_watchdog_cancelling_a_finished_call_hits_nothing(mode: str) -> None:
    # A call that keeps its task and cancels it later must not hit another call or the run.
    ended: list[asyncio.Task[Any]] = []  # tasks of calls that have returned

    @single_task
    async def first(x: int) -> int:
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0.001 * (x % 3))
        ended.append(task)
        return x

    @single_task
    async def second(x: int) -> int:
        for task in list(ended):  # the watchdog: cancels "its" call's task, too late
            task.cancel()
        await asyncio.sleep(0.001)
        return x

    out = await (first | second).with_execution_mode(mode)(range(20)).collect()
    assert sorted(out) == list(range(20))


@pytest.mark.parametrize("mode", MODES)
async def test_a_call_that_cancels_itself_is_reported_for_its_own_item(mode: str) -> None:
    @single_task
    async def selfish(x: int) -> int:
        await asyncio.sleep(0.001 * (10 - x))
        if x == 7:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(1)
        return x

    with pytest.raises(RuntimeError, match="cancelled from outside") as info:
        await selfish.with_execution_mode(mode)(range(10)).collect()
    assert info.value.__notes__ == ["conveyor: raised by task 'selfish' on 7"]


@pytest.mark.parametrize("how", ["async_with", "aclose"])
async def test_leaving_closes_an_async_input_before_returning(how: str) -> None:
    closed: list[bool] = []

    async def source() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
                await asyncio.sleep(0)
        finally:
            await asyncio.sleep(0)  # a clean-up that awaits
            closed.append(True)

    @single_task
    async def ident(x: int) -> int:
        return x

    stream = ident(source())
    if how == "async_with":
        async with stream:
            async for value in stream:
                if value == 3:
                    break
    else:
        assert await anext(stream) == 0
        await stream.aclose()
    assert closed == [True]  # before async with / aclose returned


async def test_input_whose_aiter_raises_gets_the_input_note() -> None:
    class BadInput:
        def __aiter__(self) -> Any:
            raise KeyError("no iterator")

    @single_task
    async def ident(x: int) -> int:
        return x

    with pytest.raises(KeyError) as info:
        await Pipeline([ident])(BadInput()).collect()
    assert info.value.__notes__ == ["conveyor: raised while reading the pipeline's input"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exc_type", [GeneratorExit, Custom])
async def test_base_exception_in_a_plain_stage_after_an_async_one(
    mode: str, exc_type: type
) -> None:
    # It used to escape the async call's task ("exception was never retrieved") and hang.
    @single_task
    async def first(x: int) -> int:
        await asyncio.sleep(0)
        return x

    @single_task
    def second(x: int) -> int:
        if x == 2:
            raise exc_type()
        return x

    with pytest.raises(exc_type) as info:
        await (first | second).with_execution_mode(mode)(range(5)).collect()
    assert info.value.__notes__ == ["conveyor: raised by task 'second' on 2"]


@pytest.mark.parametrize("mode", MODES)
async def test_batches_are_not_cut_short_while_the_window_has_room(mode: str) -> None:
    @batch_task(max_size=5)
    def sizes(batch: list[int]) -> list[int]:
        return [len(batch)]

    @batch_task(min_size=64)
    def sizes64(batch: list[int]) -> list[int]:
        return [len(batch)]

    pipeline = sizes.with_context(max_in_flight=16, execution_mode=mode)
    assert await pipeline(range(100)).collect() == [5] * 20  # was 22 batches
    out = await sizes64.with_execution_mode(mode)(range(2000)).collect()
    assert out == [64] * 31  # the remainder of 16 (< min_size) is dropped


async def test_a_window_smaller_than_the_batch_is_raised_to_fit_it() -> None:
    """It used to flush partial batches (and, below min_size, lose items to the remainder
    rule): now the run's window has room for a whole batch (issue "Nothing lost")."""

    @batch_task(max_size=5)
    def sizes(batch: list[int]) -> list[int]:
        return [len(batch)]

    stream = sizes.with_context(max_in_flight=3)(range(9))
    assert await stream.collect() == [5, 4]
    assert stream.stats.max_in_flight == 5


async def test_skip_item_isolation_calls_a_failing_item_alone_once() -> None:
    calls: list[list[int]] = []

    @batch_task(max_size=4, on_error="skip_item")
    def bad(batch: list[int]) -> list[int]:
        calls.append(list(batch))
        if 2 in batch:
            raise ValueError(batch)
        return batch

    assert await bad(range(4)).collect() == [0, 1, 3]
    assert calls.count([2]) == 1  # was called twice


@pytest.mark.parametrize(("value", "expected"), [([100, 101], [1, 100, 101]), ([], [1])])
async def test_handler_value_for_a_failed_generator_follows_the_result_rules(
    value: list[int], expected: list[int]
) -> None:
    class Handler(ErrorHandler):
        async def handle_error(self, error: Exception, item: Any, name: str, n: int) -> Any:
            return True, value

    @single_task(error_handler=Handler())
    def broken(x: int) -> Iterator[int]:
        yield x
        raise ValueError

    assert await broken([1]).collect() == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["async_gen", "gen", "batch_gen"])
async def test_concurrency_limit_holds_for_generator_tasks(mode: str, kind: str) -> None:
    running = peak = 0

    async def agen(x: Any) -> AsyncIterator[Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.002)
            yield x
            await asyncio.sleep(0.002)
        finally:
            running -= 1

    def gen(x: Any) -> Iterator[Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            yield x
        finally:
            running -= 1

    if kind == "batch_gen":
        task: Any = batch_task(max_size=2, concurrency_limit=2)(agen)
    else:
        task = single_task(concurrency_limit=2)(agen if kind == "async_gen" else gen)

    @single_task
    async def slow_consumer_stage(x: Any) -> Any:
        await asyncio.sleep(0.001)
        return x

    out = await (task | slow_consumer_stage).with_execution_mode(mode)(range(12)).collect()
    assert sorted(out) == list(range(12))  # (a batch list returned downstream is split)
    assert peak <= 2, peak  # was 12


@pytest.mark.looptime
async def test_timeout_bounds_each_item_of_an_async_generator() -> None:
    @single_task(timeout=0.5, on_error="emit")
    async def pages(x: int) -> AsyncIterator[int]:
        for page in range(3):
            await asyncio.sleep(0.4)  # each page in time: 1.2 s in all is fine
            yield x * 10 + page
        await asyncio.sleep(1)  # one page too slow
        yield -1

    loop = asyncio.get_running_loop()
    start = loop.time()
    out = await pages([1]).collect()
    assert out[:3] == [10, 11, 12]
    assert isinstance(out[3], Failure) and isinstance(out[3].exception, TimeoutError)
    assert loop.time() - start == pytest.approx(1.7)  # was: the whole second, no timeout


@contextlib.asynccontextmanager
async def heartbeat_lags() -> AsyncIterator[list[float]]:
    """A 1 ms heartbeat on the loop while the block runs; the list of its lags."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = False

    async def beat() -> None:
        while not done:
            before = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - before - 0.001)

    task = asyncio.create_task(beat())
    try:
        yield lags
    finally:
        done = True
        await task


async def test_a_fast_generator_yields_to_the_loop_in_as_completed_mode() -> None:
    @single_task
    def many(x: int) -> Iterator[int]:
        yield from range(200_000)

    loop = asyncio.get_running_loop()
    first_at = None
    start = loop.time()
    count = 0
    async with heartbeat_lags() as lags:
        async for _ in many.as_completed([1]):
            if first_at is None:
                first_at = loop.time() - start
            count += 1
    assert count == 200_000
    assert first_at is not None and first_at < 0.05  # not at the generator's end
    assert max(lags) < 0.05, max(lags)  # was blocked for 0.22 s


async def test_one_rule_for_returned_coroutines_they_are_awaited() -> None:
    async def later(x: int) -> int:
        await asyncio.sleep(0)
        return x * 10

    @single_task
    async def forgot_await(x: int) -> Any:
        return later(x)  # a forgotten await: the coroutine is awaited, not passed on

    @single_task
    def plain(x: int) -> Any:
        return later(x)

    assert await (forgot_await | plain)([1, 2]).collect() == [100, 200]


async def test_async_def_on_a_thread_pool_is_awaited_on_the_loop() -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:

        @single_task(executor=pool)
        async def coro_task(x: int) -> int:
            await asyncio.sleep(0)
            return x + 1

        assert await coro_task([1, 2]).collect() == [2, 3]


async def test_a_bad_error_handler_result_names_handler_task_and_shape() -> None:
    class Sloppy(ErrorHandler):
        async def handle_error(self, error: Exception, item: Any, name: str, n: int) -> Any:
            return "skip it"

    @single_task(error_handler=Sloppy())
    def fails(x: int) -> int:
        raise ValueError(x)

    with pytest.raises(
        TypeError, match=r"Sloppy\.handle_error returned 'skip it' for task"
    ) as info:
        await fails([1]).collect()
    assert "(bool, value)" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


async def test_a_task_called_without_an_item_says_so() -> None:
    @single_task
    async def double(x: int) -> int:
        return x * 2

    with pytest.raises(TypeError) as info:
        await double().collect()
    assert info.value.__notes__ == [
        "conveyor: raised by task 'double' on no item (the pipeline was called without "
        "input: pipeline())"
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_a_failure_comes_where_its_items_result_would_be(mode: str) -> None:
    @single_task(on_error="emit")
    def parse(text: str) -> int:
        return int(text)

    @batch_task(max_size=2)
    def save(batch: list[int]) -> list[int]:
        return batch

    out = await (parse | save).with_execution_mode(mode)(["1", "x", "3", "4"]).collect()
    values = [v for v in out if not isinstance(v, Failure)]
    assert sorted(values) == [1, 3, 4]
    if mode == "ordered":  # after [1, 3], the batch open when it came; it came first before
        assert out[:2] == [1, 3] and isinstance(out[2], Failure) and out[3] == 4


def test_unknown_context_keys_fail_with_the_valid_ones() -> None:
    @single_task
    def ident(x: int) -> int:
        return x

    with pytest.raises(
        TypeError, match=r"unknown key 'max_inflight': did you mean 'max_in_flight'"
    ):
        Pipeline([ident]).with_context(max_inflight=5)
    with pytest.raises(TypeError, match=r"data=\{'user': \.\.\.\}"):
        ident.with_context(user="ann")
    pipeline = ident.with_context(data={"a": 1}).with_context(data={"b": 2}, max_in_flight=5)
    assert pipeline.context.data == {"a": 1, "b": 2} and pipeline.context.max_in_flight == 5


def test_retry_delays_have_jitter_by_default_within_the_documented_bounds() -> None:
    @single_task(retry_attempts=4, retry_delay=1.0, retry_max_delay=3.0)
    def flaky(x: int) -> int:
        return x

    config = flaky.retry_config
    firsts = {config.delay_after(1) for _ in range(200)}
    assert len(firsts) > 100  # spread, not one value
    assert all(0.9 <= d <= 1.1 for d in firsts)
    assert all(1.8 <= config.delay_after(2) <= 2.2 for _ in range(200))
    assert all(config.delay_after(3) <= 3.0 for _ in range(200))  # capped
    with pytest.raises(ValueError, match="retry_jitter must be a fraction"):
        single_task(retry_jitter=2)


async def test_retry_if_selects_what_is_retried() -> None:
    calls: list[str] = []

    @single_task(retry_attempts=3, retry_delay=0, retry_if=lambda exc: "transient" in str(exc))
    async def call(kind: str) -> str:
        calls.append(kind)
        raise RuntimeError(kind)

    for kind in ("transient", "permanent"):
        with pytest.raises(RuntimeError):
            await call([kind]).collect()
    assert calls == ["transient"] * 3 + ["permanent"]
    with pytest.raises(TypeError, match="retry_if must be a function"):
        single_task(retry_if=True)


async def test_closing_a_run_with_timeouts_leaves_no_stray_coroutines() -> None:
    # "coroutine ... was never awaited" used to follow (pyproject makes it an error here).
    import gc

    @single_task(timeout=5)
    async def slow(x: int) -> int:
        await asyncio.sleep(1)
        return x

    @single_task(timeout=5)
    async def after(x: int) -> int:
        await asyncio.sleep(0)
        return x

    for mode in MODES:
        stream = (slow | after).with_execution_mode(mode)(range(200))
        task = asyncio.create_task(stream.collect())
        await asyncio.sleep(0.01)  # 200 calls in flight (on 3.11, some not started yet)
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    gc.collect()


async def test_async_stream_wraps_any_async_iterable_and_a_task_runs_on_it() -> None:
    async def numbers() -> AsyncIterator[int]:
        for n in range(4):
            yield n

    assert await AsyncStream(numbers()).collect() == [0, 1, 2, 3]

    @single_task
    async def double(x: int) -> int:
        return x * 2

    assert await double(AsyncStream(numbers())).collect() == [0, 2, 4, 6]


async def test_a_fast_sync_input_never_holds_up_the_loop() -> None:
    # The pump reads in bursts of at most a window or ~5 ms, then yields (see
    # docs/performance.md): a 1 ms heartbeat keeps its beat while 300k items go through.
    @single_task
    def inc(x: int) -> int:
        return x + 1

    count = 0
    async with heartbeat_lags() as lags:
        async for _ in inc(range(300_000)):
            count += 1
    assert count == 300_000 and len(lags) > 10
    # Before the fix the loop froze for seconds; 30 ms leaves room for a busy machine.
    assert sorted(lags)[-2] < 0.030, max(lags)  # (the worst one may be a GC pause)


@pytest.mark.parametrize("bad", [-1, 0, 0.0, -0.5])
def test_timeout_has_one_rule_and_one_message(bad: float) -> None:
    # -1 used to say ">= 0", then 0 was refused with "> 0".
    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds > 0 "):
        single_task(timeout=bad)
    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds > 0 "):
        batch_task(max_size=2, timeout=bad)


def test_composing_with_a_plain_function_says_to_decorate_it() -> None:
    @single_task
    def ident(x: int) -> int:
        return x

    def shout(text: str) -> str:
        return text.upper()

    for compose in (lambda: ident | shout, lambda: shout | ident, lambda: (ident | ident) | shout):
        with pytest.raises(TypeError, match=r"'shout' is a plain function.*@single_task"):
            compose()


@pytest.mark.parametrize("how", ["async_with", "aclose"])
async def test_leaving_closes_the_iterator_made_from_an_async_iterable(how: str) -> None:
    # An async iterable (not an iterator): the run makes its iterator, so the run must
    # close it before async with / aclose return (the input keeps it alive here, so
    # garbage collection cannot do it instead).
    closed: list[bool] = []

    class Feed:
        def __init__(self) -> None:
            self.made: list[Any] = []

        def __aiter__(self) -> AsyncIterator[int]:
            iterator = self.numbers()
            self.made.append(iterator)
            return iterator

        async def numbers(self) -> AsyncIterator[int]:
            try:
                for i in range(100):
                    yield i
            finally:
                await asyncio.sleep(0)
                closed.append(True)

    @single_task
    async def ident(x: int) -> int:
        return x

    feed = Feed()
    stream = ident.with_context(max_in_flight=2)(feed)  # the pump waits for room
    if how == "async_with":
        async with stream:
            async for value in stream:
                if value == 3:
                    break
    else:
        assert await anext(stream) == 0
        await stream.aclose()
    assert closed == [True]


async def test_a_batch_left_out_whole_is_the_policys_drop_while_other_batches_split() -> None:
    """Two batches isolated at once under ``skip_item``: one loses every item, the other
    one of two. The first passed nothing on by the policy's doing, not its function's: a
    count that compared the stage's skipped items before and after its isolation saw the
    other batch's skip too, and called it a drop by the function (found by Hypothesis)."""
    started = asyncio.Event()
    calls = 0

    @batch_task(max_size=2, concurrency_limit=2, on_error="skip_item")
    async def poisoned(batch: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 2:
            started.set()
        await started.wait()  # (both batches under way before either is isolated)
        await asyncio.sleep(0.001 * batch[0])
        if any(x % 3 == 1 for x in batch):
            raise ValueError(batch)
        return batch

    stream = poisoned([1, 1, 0, 1])
    assert await stream.collect() == [0]
    [stage] = stream.stats.stages
    assert (stage.skipped, stage.dropped) == (3, 0)
