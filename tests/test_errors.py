"""Error policies, retries, error handlers, timeouts, and asyncio behaviour inside tasks."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor import (
    ErrorHandler,
    Failure,
    LoggingErrorHandler,
    Pipeline,
    batch_task,
    single_task,
)


class Boom(ValueError):
    pass


def _notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


# -- on_error="fail" ----------------------------------------------------------------------


def _failing_tasks(**options: Any) -> list[Any]:
    """The same failing function as an eager async, a suspending async and a sync task."""

    @single_task(task_name="eager", **options)
    async def eager(x: Any) -> Any:
        if x == "poison":
            raise Boom(f"bad {x}")
        return x

    @single_task(task_name="suspending", **options)
    async def suspending(x: Any) -> Any:
        await asyncio.sleep(0)
        if x == "poison":
            raise Boom(f"bad {x}")
        return x

    @single_task(task_name="plain", **options)
    def plain(x: Any) -> Any:
        if x == "poison":
            raise Boom(f"bad {x}")
        return x

    return [eager, suspending, plain]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["eager", "suspending", "sync"])
@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_fail_reaches_consumer_with_note(index: int, mode: str) -> None:
    task = _failing_tasks()[index]
    pipeline = Pipeline([task]).with_execution_mode(mode)
    with pytest.raises(Boom) as info:
        await pipeline(["a", "b", "poison", "c"]).collect()
    notes = _notes(info.value)
    assert task.task_name in notes
    assert "poison" in notes


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_fail_in_later_stage_reaches_consumer(mode: str) -> None:
    @single_task
    async def first(x: int) -> int:
        await asyncio.sleep(0)
        return x

    @single_task
    def second(x: int) -> int:
        if x == 3:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError) as info:
        async for _ in (first | second).with_execution_mode(mode)(range(10)):
            pass
    assert "'second'" in _notes(info.value)


@pytest.mark.looptime
async def test_fail_is_not_swallowed_while_other_items_are_slow() -> None:
    @single_task
    async def work(x: int) -> int:
        if x == 0:
            await asyncio.sleep(1)
            raise Boom("first item fails late")
        await asyncio.sleep(100)
        return x

    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(Boom):
        await work.as_completed(range(5)).collect()
    assert loop.time() - start == pytest.approx(1)
    start = loop.time()
    with pytest.raises(Boom):
        await work(range(5)).collect()
    assert loop.time() - start == pytest.approx(1)


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_fail_in_batch_task_notes_the_batch(mode: str) -> None:
    @batch_task(max_size=3)
    async def total(batch: list[int]) -> int:
        if 5 in batch:
            raise Boom("five")
        return sum(batch)

    with pytest.raises(Boom) as info:
        await Pipeline([total]).with_execution_mode(mode)(range(1, 10)).collect()
    notes = _notes(info.value)
    assert "'total'" in notes
    assert "batch" in notes


async def test_fail_cancels_the_calls_in_flight() -> None:
    """With on_error="fail" the rest of the run is cancelled: calls get CancelledError."""
    cancelled: list[int] = []

    @single_task
    async def work(x: Any) -> Any:
        if x == "poison":
            raise Boom(x)
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    with pytest.raises(Boom):
        await work([1, 2, 3, "poison"]).collect()
    assert sorted(cancelled) == [1, 2, 3]


async def test_fail_keeps_results_before_the_error() -> None:
    @single_task
    def check(x: int) -> int:
        if x == 3:
            raise Boom(x)
        return x

    got: list[int] = []
    with pytest.raises(Boom):
        async for x in check(range(6)):
            got.append(x)
    assert got == [0, 1, 2][: len(got)]


# -- skip_item and emit -------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 2], ids=["eager", "suspending", "sync"])
async def test_skip_item_drops_only_failing_items(index: int) -> None:
    task = _failing_tasks(on_error="skip_item")[index]
    items = ["a", "poison", "b", "poison", "c"]
    assert await task(items).collect() == ["a", "b", "c"]
    assert sorted(await task.as_completed(items).collect()) == ["a", "b", "c"]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["eager", "suspending", "sync"])
async def test_emit_puts_failure_in_place(index: int) -> None:
    task = _failing_tasks(on_error="emit")[index]
    out = await task(["a", "poison", "b"]).collect()
    assert out[0] == "a"
    assert out[2] == "b"
    failure = out[1]
    assert isinstance(failure, Failure)
    assert failure.item == "poison"
    assert isinstance(failure.exception, Boom)
    assert failure.task_name == task.task_name
    assert failure.attempts == 1


async def test_emit_in_as_completed_mode() -> None:
    task = _failing_tasks(on_error="emit")[1]
    out = await task.as_completed(["a", "poison", "b"]).collect()
    assert sorted(x for x in out if isinstance(x, str)) == ["a", "b"]
    failures = [x for x in out if isinstance(x, Failure)]
    assert len(failures) == 1
    assert failures[0].item == "poison"


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_failure_passes_through_later_tasks_untouched(mode: str) -> None:
    later_calls: list[Any] = []

    @single_task(on_error="emit")
    async def first(x: int) -> int:
        await asyncio.sleep(0)
        if x == 2:
            raise Boom(x)
        return x

    @single_task
    async def second(x: int) -> int:
        later_calls.append(x)
        return x * 10

    @single_task
    def third(x: int) -> int:
        later_calls.append(x)
        return x + 1

    out = await (first | second | third).with_execution_mode(mode)([1, 2, 3]).collect()
    if mode == "ordered":
        assert out[0] == 11
        assert out[2] == 31
        assert isinstance(out[1], Failure)
    failures = [x for x in out if isinstance(x, Failure)]
    assert len(failures) == 1
    assert failures[0].item == 2
    assert failures[0].task_name == "first"
    assert sorted(x for x in out if not isinstance(x, Failure)) == [11, 31]
    assert all(not isinstance(x, Failure) for x in later_calls)
    assert sorted(later_calls) == [1, 3, 10, 30]


async def test_failure_passes_through_a_later_batch_task() -> None:
    batches: list[list[Any]] = []

    @single_task(on_error="emit")
    def first(x: int) -> int:
        if x == 2:
            raise Boom(x)
        return x

    @batch_task(max_size=10)
    def collect(batch: list[int]) -> list[int]:
        batches.append(batch)
        return batch

    out = await (first | collect)([1, 2, 3]).collect()
    assert [x for x in out if not isinstance(x, Failure)] == [1, 3]
    assert [x.item for x in out if isinstance(x, Failure)] == [2]
    assert batches == [[1, 3]]


# -- batch error policies ---------------------------------------------------------------


def _poisoned_batch(poison: set[int], **options: Any) -> Any:
    @batch_task(**options)
    async def tenfold(batch: list[int]) -> list[int]:
        if poison & set(batch):
            raise Boom(f"poison in {batch}")
        return [x * 10 for x in batch]

    return tenfold


async def test_batch_skip_item_splits_the_batch() -> None:
    task = _poisoned_batch({3, 5}, max_size=6, on_error="skip_item")
    assert await task(range(1, 7)).collect() == [10, 20, 40, 60]
    assert sorted(await task.as_completed(range(1, 7)).collect()) == [10, 20, 40, 60]


async def test_batch_skip_item_with_sync_function_and_scalar_result() -> None:
    @batch_task(max_size=4, on_error="skip_item")
    def total(batch: list[int]) -> int:
        if 2 in batch:
            raise Boom(batch)
        return sum(batch)

    # [1, 2, 3, 4] fails; 2 is isolated and dropped, the other items are kept
    assert sum(await total([1, 2, 3, 4]).collect()) == 1 + 3 + 4


async def test_batch_skip_batch_drops_the_whole_batch() -> None:
    task = _poisoned_batch({2}, max_size=3, on_error="skip_batch")
    assert await task(range(1, 7)).collect() == [40, 50, 60]
    assert sorted(await task.as_completed(range(1, 7)).collect()) == [40, 50, 60]


async def test_batch_emit_gives_one_failure_per_item() -> None:
    task = _poisoned_batch({2}, max_size=3, on_error="emit", task_name="tenfold")
    out = await task(range(1, 7)).collect()
    assert out[3:] == [40, 50, 60]
    failures = out[:3]
    assert all(isinstance(f, Failure) for f in failures)
    assert [f.item for f in failures] == [1, 2, 3]
    assert all(isinstance(f.exception, Boom) for f in failures)
    assert all(f.task_name == "tenfold" and f.attempts == 1 for f in failures)


# -- retries ------------------------------------------------------------------------------


def _flaky(
    failures: int, exc_type: type[Exception] = Boom, *, suspend: bool = False, **options: Any
) -> Any:
    """A task failing ``failures`` times per item, then succeeding; records call times."""
    calls: dict[Any, list[float]] = {}

    @single_task(**options)
    async def flaky(x: Any) -> Any:
        times = calls.setdefault(x, [])
        times.append(asyncio.get_running_loop().time())
        if suspend:
            await asyncio.sleep(0)
        if len(times) <= failures:
            raise exc_type(f"attempt {len(times)}")
        return x

    flaky.calls = calls  # type: ignore[attr-defined]
    return flaky


@pytest.mark.parametrize("suspend", [False, True], ids=["eager", "suspending"])
async def test_retry_until_success(suspend: bool) -> None:
    task = _flaky(2, suspend=suspend, retry_attempts=3, retry_jitter=0, retry_delay=0)
    assert await task([1, 2, 3]).collect() == [1, 2, 3]
    assert {x: len(t) for x, t in task.calls.items()} == {1: 3, 2: 3, 3: 3}


async def test_retry_with_sync_function() -> None:
    calls = 0

    @single_task(retry_attempts=3, retry_jitter=0, retry_delay=0)
    def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Boom(calls)
        return x

    assert await flaky([7]).collect() == [7]
    assert calls == 3


async def test_retries_exhausted_then_fail() -> None:
    task = _flaky(5, retry_attempts=3, retry_jitter=0, retry_delay=0)
    with pytest.raises(Boom):
        await task([1]).collect()
    assert len(task.calls[1]) == 3


async def test_retries_exhausted_then_emit_counts_attempts() -> None:
    task = _flaky(5, retry_attempts=3, retry_jitter=0, retry_delay=0, on_error="emit")
    [failure] = await task([1]).collect()
    assert isinstance(failure, Failure)
    assert failure.attempts == 3
    assert str(failure.exception) == "attempt 3"


async def test_retry_on_does_not_retry_other_errors() -> None:
    task = _flaky(2, Boom, retry_attempts=3, retry_jitter=0, retry_delay=0, retry_on=(KeyError,))
    with pytest.raises(Boom):
        await task([1]).collect()
    assert len(task.calls[1]) == 1


async def test_retry_on_retries_matching_errors() -> None:
    task = _flaky(
        2, KeyError, retry_attempts=3, retry_jitter=0, retry_delay=0, retry_on=(KeyError,)
    )
    assert await task([1]).collect() == [1]
    assert len(task.calls[1]) == 3


async def test_retry_on_single_type_and_subclasses() -> None:
    task = _flaky(2, Boom, retry_attempts=3, retry_jitter=0, retry_delay=0, retry_on=ValueError)
    assert await task([1]).collect() == [1]
    assert len(task.calls[1]) == 3


@pytest.mark.looptime
@pytest.mark.parametrize("suspend", [False, True], ids=["eager", "suspending"])
async def test_retry_delays_with_exponential_backoff(suspend: bool) -> None:
    task = _flaky(2, suspend=suspend, retry_attempts=3, retry_jitter=0, retry_delay=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await task([1]).collect() == [1]
    times = [t - start for t in task.calls[1]]
    assert times == [pytest.approx(0), pytest.approx(1), pytest.approx(3)]
    assert loop.time() - start == pytest.approx(3)


@pytest.mark.looptime
async def test_retry_delays_without_backoff() -> None:
    task = _flaky(
        2, retry_attempts=3, retry_jitter=0, retry_delay=1, retry_exponential_backoff=False
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await task([1]).collect() == [1]
    times = [t - start for t in task.calls[1]]
    assert times == [pytest.approx(0), pytest.approx(1), pytest.approx(2)]


@pytest.mark.looptime
async def test_retry_max_delay_caps_the_backoff() -> None:
    task = _flaky(
        9, retry_attempts=5, retry_jitter=0, retry_delay=1, retry_max_delay=3, on_error="emit"
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    [failure] = await task([1]).collect()
    assert isinstance(failure, Failure)
    assert failure.attempts == 5
    times = [t - start for t in task.calls[1]]
    # delays 1, 2, then 4 and 8 capped at 3
    assert times == [pytest.approx(t) for t in (0, 1, 3, 6, 9)]


@pytest.mark.looptime
async def test_retries_of_different_items_run_concurrently() -> None:
    task = _flaky(1, retry_attempts=2, retry_jitter=0, retry_delay=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await task(range(5)).collect() == [0, 1, 2, 3, 4]
    assert loop.time() - start == pytest.approx(1)


async def test_batch_retry() -> None:
    calls: list[list[int]] = []

    @batch_task(max_size=2, retry_attempts=2, retry_jitter=0, retry_delay=0)
    async def total(batch: list[int]) -> int:
        calls.append(batch)
        if len(calls) == 1:
            raise Boom("first call fails")
        return sum(batch)

    assert await total([1, 2, 3]).collect() == [3, 3]
    assert calls == [[1, 2], [1, 2], [3]]


# -- error handlers -----------------------------------------------------------------------


class Recorder(ErrorHandler):
    def __init__(self, decision: tuple[bool, Any]) -> None:
        self.decision = decision
        self.calls: list[tuple[Exception, Any, str, int]] = []

    async def handle_error(
        self, error: Exception, item: Any, task_name: str, attempt: int
    ) -> tuple[bool, Any]:
        self.calls.append((error, item, task_name, attempt))
        return self.decision


@pytest.mark.parametrize("index", [0, 1, 2], ids=["eager", "suspending", "sync"])
async def test_error_handler_replaces_value(index: int) -> None:
    handler = Recorder((True, -1))
    task = _failing_tasks(error_handler=handler)[index]
    assert await task(["a", "poison", "b"]).collect() == ["a", -1, "b"]
    [(error, item, name, attempt)] = handler.calls
    assert isinstance(error, Boom)
    assert item == "poison"
    assert name == task.task_name
    assert attempt == 1


async def test_error_handler_none_drops() -> None:
    handler = Recorder((True, None))
    task = _failing_tasks(error_handler=handler)[1]
    assert await task(["a", "poison", "b"]).collect() == ["a", "b"]
    assert len(handler.calls) == 1


async def test_error_handler_declines_then_on_error_applies() -> None:
    handler = Recorder((False, None))
    skip = _failing_tasks(error_handler=handler, on_error="skip_item")[1]
    assert await skip(["a", "poison", "b"]).collect() == ["a", "b"]

    fail = _failing_tasks(error_handler=handler, on_error="fail")[1]
    with pytest.raises(Boom):
        await fail(["a", "poison", "b"]).collect()

    emit = _failing_tasks(error_handler=handler, on_error="emit")[1]
    out = await emit(["a", "poison", "b"]).collect()
    assert isinstance(out[1], Failure)
    assert out[1].item == "poison"
    assert len(handler.calls) == 3


@pytest.mark.parametrize("suspend", [False, True], ids=["eager", "suspending"])
async def test_error_handler_called_after_retries_are_exhausted(suspend: bool) -> None:
    handler = Recorder((True, "replaced"))
    task = _flaky(
        9,
        suspend=suspend,
        retry_attempts=3,
        retry_jitter=0,
        retry_delay=0,
        error_handler=handler,
        task_name="flaky",
    )
    assert await task(["x"]).collect() == ["replaced"]
    assert len(task.calls["x"]) == 3
    [(error, item, name, attempt)] = handler.calls
    assert isinstance(error, Boom)
    assert str(error) == "attempt 3"
    assert item == "x"
    assert name == "flaky"
    assert attempt == 3


async def test_error_handler_not_called_when_retry_succeeds() -> None:
    handler = Recorder((True, "replaced"))
    task = _flaky(1, retry_attempts=2, retry_jitter=0, retry_delay=0, error_handler=handler)
    assert await task(["x"]).collect() == ["x"]
    assert handler.calls == []


async def test_error_handler_on_batch_gets_the_batch() -> None:
    handler = Recorder((True, [0, 0]))
    task = _poisoned_batch({2}, max_size=2, error_handler=handler, task_name="tenfold")
    assert await task([1, 2, 3, 4]).collect() == [0, 0, 30, 40]
    [(error, item, name, attempt)] = handler.calls
    assert isinstance(error, Boom)
    assert item == [1, 2]
    assert name == "tenfold"
    assert attempt == 1


async def test_logging_error_handler(caplog: pytest.LogCaptureFixture) -> None:
    task = _failing_tasks(error_handler=LoggingErrorHandler(replacement_value=0))[1]
    with caplog.at_level(logging.ERROR, logger="conveyor"):
        assert await task([1, "poison", 2]).collect() == [1, 0, 2]
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.ERROR
    assert "suspending" in record.getMessage()
    assert "bad poison" in record.getMessage()


async def test_logging_error_handler_custom_logger_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.conveyor.custom")
    task = _failing_tasks(error_handler=LoggingErrorHandler(logger))[2]
    with caplog.at_level(logging.ERROR, logger="tests.conveyor.custom"):
        assert await task([1, "poison", 2]).collect() == [1, 2]
    assert [r.name for r in caplog.records] == ["tests.conveyor.custom"]


# -- timeouts -----------------------------------------------------------------------------


def _slow_task(**options: Any) -> Any:
    @single_task(timeout=1, **options)
    async def slow(x: int) -> int:
        await asyncio.sleep(5 if x == 0 else 0.1)
        return x

    return slow


@pytest.mark.looptime
async def test_timeout_fails() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError) as info:
        await _slow_task()([0, 1, 2]).collect()
    assert loop.time() - start == pytest.approx(1)
    assert "'slow'" in _notes(info.value)


@pytest.mark.looptime
async def test_timeout_fails_as_completed() -> None:
    with pytest.raises(TimeoutError):
        await _slow_task().as_completed([1, 0, 2]).collect()


@pytest.mark.looptime
async def test_timeout_skip_item() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await _slow_task(on_error="skip_item")([0, 1, 2]).collect() == [1, 2]
    assert loop.time() - start == pytest.approx(1)


@pytest.mark.looptime
async def test_timeout_emit() -> None:
    [failure, one] = await _slow_task(on_error="emit")([0, 1]).collect()
    assert one == 1
    assert isinstance(failure, Failure)
    assert isinstance(failure.exception, TimeoutError)


@pytest.mark.looptime
async def test_timeout_is_retried() -> None:
    attempts = 0

    @single_task(timeout=1, retry_attempts=3, retry_jitter=0, retry_delay=1)
    async def slow_once(x: int) -> int:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(5 if attempts == 1 else 0.5)
        return x

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await slow_once([7]).collect() == [7]
    assert attempts == 2
    # 1 s until the timeout, 1 s of retry delay, 0.5 s for the second attempt
    assert loop.time() - start == pytest.approx(2.5)


@pytest.mark.looptime
async def test_timeout_on_every_retry() -> None:
    @single_task(timeout=1, retry_attempts=2, retry_jitter=0, retry_delay=1, on_error="emit")
    async def always_slow(x: int) -> int:
        await asyncio.sleep(5)
        return x

    loop = asyncio.get_running_loop()
    start = loop.time()
    [failure] = await always_slow([7]).collect()
    assert isinstance(failure, Failure)
    assert isinstance(failure.exception, TimeoutError)
    assert failure.attempts == 2
    assert loop.time() - start == pytest.approx(3)


@pytest.mark.looptime
async def test_timeout_counts_from_the_start_of_each_call() -> None:
    """Items queued behind a concurrency limit do not use up their timeout waiting."""

    @single_task(timeout=1.5, concurrency_limit=1)
    async def steady(x: int) -> int:
        await asyncio.sleep(1)
        return x

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await steady([1, 2, 3]).collect() == [1, 2, 3]
    assert loop.time() - start == pytest.approx(3)


@pytest.mark.looptime
async def test_timeout_on_batch_task() -> None:
    @batch_task(max_size=2, timeout=1, on_error="skip_batch")
    async def total(batch: list[int]) -> int:
        await asyncio.sleep(5 if 0 in batch else 0)
        return sum(batch)

    assert await total([0, 1, 2, 3]).collect() == [5]


# -- asyncio inside tasks -----------------------------------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize("suspend_first", [False, True], ids=["eager", "after-await"])
async def test_asyncio_timeout_inside_task_is_caught_inside(suspend_first: bool) -> None:
    @single_task
    async def guarded(x: int) -> str:
        if suspend_first:
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(0.5):
                await asyncio.sleep(10)
        except TimeoutError:
            return f"timed out {x}"
        return f"finished {x}"

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await guarded([1, 2]).collect() == ["timed out 1", "timed out 2"]
    assert loop.time() - start == pytest.approx(0.5)


@pytest.mark.looptime
async def test_asyncio_timeout_inside_task_propagates() -> None:
    @single_task
    async def guarded(x: int) -> int:
        async with asyncio.timeout(0.5):
            await asyncio.sleep(10)
        return x

    with pytest.raises(TimeoutError):
        await guarded([1]).collect()


@pytest.mark.looptime
async def test_asyncio_timeout_inside_task_not_reached() -> None:
    @single_task
    async def guarded(x: int) -> int:
        async with asyncio.timeout(5):
            await asyncio.sleep(1)
        async with asyncio.timeout(5):
            pass
        await asyncio.sleep(10)  # a stale timeout must not cancel this later sleep
        return x

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await guarded([1, 2]).collect() == [1, 2]
    assert loop.time() - start == pytest.approx(11)


@pytest.mark.looptime
async def test_asyncio_timeout_inside_task_with_task_timeout() -> None:
    @single_task(timeout=10)
    async def guarded(x: int) -> str:
        try:
            async with asyncio.timeout(0.5):
                await asyncio.sleep(5)
        except TimeoutError:
            await asyncio.sleep(1)  # the task's own timeout still holds afterwards
            return "inner"
        return "finished"

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await guarded([1]).collect() == ["inner"]
    assert loop.time() - start == pytest.approx(1.5)


@pytest.mark.looptime
async def test_asyncio_timeout_inside_task_with_retries() -> None:
    attempts = 0

    @single_task(retry_attempts=2, retry_jitter=0, retry_delay=0)
    async def guarded(x: int) -> int:
        nonlocal attempts
        attempts += 1
        async with asyncio.timeout(0.5):
            await asyncio.sleep(5 if attempts == 1 else 0)
        return x

    assert await guarded([1]).collect() == [1]
    assert attempts == 2


@pytest.mark.looptime
@pytest.mark.parametrize("suspend_first", [False, True], ids=["eager", "after-await"])
async def test_task_group_inside_task(suspend_first: bool) -> None:
    async def part(x: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return x

    @single_task
    async def fan_out(x: int) -> int:
        if suspend_first:
            await asyncio.sleep(0)
        async with asyncio.TaskGroup() as tg:
            a = tg.create_task(part(x, 1))
            b = tg.create_task(part(x * 10, 2))
        return a.result() + b.result()

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await fan_out([1, 2, 3]).collect() == [11, 22, 33]
    assert loop.time() - start == pytest.approx(2)


@pytest.mark.looptime
@pytest.mark.parametrize("suspend_first", [False, True], ids=["eager", "after-await"])
async def test_task_group_failure_inside_task(suspend_first: bool) -> None:
    cancelled: list[int] = []

    async def bad(x: int) -> int:
        await asyncio.sleep(1)
        raise Boom(x)

    async def slow(x: int) -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    @single_task
    async def fan_out(x: int) -> str:
        if suspend_first:
            await asyncio.sleep(0)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(bad(x))
                tg.create_task(slow(x))
        except ExceptionGroup as group:
            assert group.subgroup(Boom) is not None
            await asyncio.sleep(0)  # the call goes on normally after the group
            return f"caught {x}"
        return "no error"

    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await fan_out([1, 2]).collect() == ["caught 1", "caught 2"]
    assert sorted(cancelled) == [1, 2]
    assert loop.time() - start == pytest.approx(1)


@pytest.mark.looptime
async def test_task_group_with_task_timeout() -> None:
    @single_task(timeout=1, on_error="emit")
    async def fan_out(x: int) -> int:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(asyncio.sleep(5))
        return x

    [failure] = await fan_out([1]).collect()
    assert isinstance(failure, Failure)
    assert isinstance(failure.exception, TimeoutError)


async def test_current_task_inside_tasks_is_not_none() -> None:
    seen: list[Any] = []

    @single_task
    async def eager(x: int) -> int:
        seen.append(asyncio.current_task())
        return x

    @single_task
    async def suspending(x: int) -> int:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        return x

    @single_task
    def plain(x: int) -> int:
        seen.append(asyncio.current_task())
        return x

    @single_task
    async def agen(x: int) -> AsyncIterator[int]:
        seen.append(asyncio.current_task())
        yield x

    assert await (eager | suspending | plain | agen)([1, 2]).collect() == [1, 2]
    assert len(seen) == 10
    assert all(task is not None for task in seen)


# -- input errors -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_error_in_input_iterable_reaches_consumer(mode: str) -> None:
    def numbers() -> Iterator[int]:
        yield 1
        yield 2
        raise Boom("input broke")

    @single_task
    async def double(x: int) -> int:
        return x * 2

    got: list[int] = []
    with pytest.raises(Boom, match="input broke"):
        async for x in Pipeline([double]).with_execution_mode(mode)(numbers()):
            got.append(x)
    assert set(got) <= {2, 4}


async def test_error_in_async_input_reaches_consumer() -> None:
    async def numbers() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0)
        yield 2
        raise KeyError("input broke")

    @single_task
    def double(x: int) -> int:
        return x * 2

    with pytest.raises(KeyError):
        await double(numbers()).collect()


async def test_error_in_generator_task() -> None:
    @single_task
    def gen(x: int) -> Iterator[int]:
        yield x
        raise Boom("gen broke")

    with pytest.raises(Boom, match="gen broke"):
        await gen([1, 2]).collect()

    @single_task(on_error="skip_item")
    def gen_skip(x: int) -> Iterator[int]:
        yield x
        raise Boom("gen broke")

    assert await gen_skip([1, 2]).collect() == [1, 2]


# -- contextvars --------------------------------------------------------------------------

var: contextvars.ContextVar[str] = contextvars.ContextVar("conveyor_test_var", default="unset")


def _setting_tasks(seen: list[str]) -> list[Any]:
    @single_task(concurrency_limit=1)
    async def eager(x: int) -> int:
        seen.append(var.get())
        var.set(f"eager {x}")
        return x

    @single_task(concurrency_limit=1)
    async def suspending(x: int) -> int:
        seen.append(var.get())
        var.set(f"suspending {x}")
        await asyncio.sleep(0)
        return x

    @single_task
    def plain(x: int) -> int:
        seen.append(var.get())
        var.set(f"plain {x}")
        return x

    @single_task
    def gen(x: int) -> Iterator[int]:
        seen.append(var.get())
        var.set(f"gen {x}")
        yield x

    return [eager, suspending, plain, gen]


@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=["eager", "suspending", "sync", "gen"])
@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_contextvar_does_not_leak_between_calls(index: int, mode: str) -> None:
    seen: list[str] = []
    task = _setting_tasks(seen)[index]
    out = await Pipeline([task]).with_execution_mode(mode)([1, 2, 3]).collect()
    assert sorted(out) == [1, 2, 3]
    assert seen == ["unset", "unset", "unset"]
    assert var.get() == "unset"


async def test_contextvar_does_not_leak_into_consumer() -> None:
    seen: list[str] = []
    eager, suspending, plain, gen = _setting_tasks(seen)
    async for _ in (eager | suspending | plain | gen)([1, 2]):
        assert var.get() == "unset"
    assert var.get() == "unset"


async def test_contextvar_of_the_caller_is_visible_in_tasks() -> None:
    seen: list[str] = []

    @single_task
    async def read(x: int) -> int:
        await asyncio.sleep(0)
        seen.append(var.get())
        return x

    @single_task
    def read_sync(x: int) -> int:
        seen.append(var.get())
        return x

    token = var.set("caller")
    try:
        await (read | read_sync)([1, 2]).collect()
    finally:
        var.reset(token)
    assert seen == ["caller"] * 4
