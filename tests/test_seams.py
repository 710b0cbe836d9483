"""The engine's seams: executors and observers, and the rule of public asyncio API only.

* **Executor seam**: whatever an executor's per-item call returns -- a value, a coroutine,
  an asyncio Future, a ``concurrent.futures.Future`` -- is handled by the one engine, with
  ordering, error policies, retries and timeouts as for inline calls.
* **Observer seam**: an observed run reports items in and out, calls, latencies, failures,
  retries and waits for room, per stage; an unobserved run has none of that code in its
  path, and both give the same results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import Failure, batch_task, single_task
from conveyor._spec import StageSpec

# -- executors -------------------------------------------------------------------------


class FutureExecutor:
    """A test executor: every call's result arrives later through an asyncio Future."""

    def __init__(self, delay: Callable[[Any], float] = lambda item: 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def call(item: Any) -> asyncio.Future[Any]:
            self.calls += 1
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Any] = loop.create_future()

            def settle() -> None:
                try:
                    future.set_result(invoke(item))
                except Exception as exc:
                    future.set_exception(exc)

            loop.call_later(self.delay(item), settle)
            return future

        return call


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_executor_returning_asyncio_futures(mode: str) -> None:
    executor = FutureExecutor(delay=lambda x: 0.001 * (10 - x))

    @single_task(executor=executor)
    def square(x: int) -> int:
        return x * x

    @single_task
    async def plus_one(x: int) -> int:
        return x + 1

    stream = (square | plus_one).with_execution_mode(mode)(range(10))
    out = await stream.collect()
    expected = [x * x + 1 for x in range(10)]
    assert (out if mode == "ordered" else sorted(out)) == expected
    if mode == "as_completed":
        assert out != expected  # later items were settled first
    assert executor.calls == 10


async def test_executor_futures_go_through_the_error_policy() -> None:
    executor = FutureExecutor()
    attempts: Counter[int] = Counter()

    @single_task(executor=executor, retry_attempts=3, retry_delay=0, on_error="emit")
    def flaky(x: int) -> int:
        attempts[x] += 1
        if x == 2 or (x == 1 and attempts[x] < 3):
            raise ValueError(x)
        return x

    out = await flaky(range(4)).collect()
    assert out[0] == 0 and out[1] == 1 and out[3] == 3
    assert isinstance(out[2], Failure) and isinstance(out[2].exception, ValueError)
    assert attempts == {0: 1, 1: 3, 2: 3, 3: 1}


async def test_executor_futures_keep_the_timeout() -> None:
    executor = FutureExecutor(delay=lambda x: 5.0 if x == 1 else 0.0)

    @single_task(executor=executor, timeout=0.05, on_error="skip_item")
    def ident(x: int) -> int:
        return x

    assert await ident(range(3)).collect() == [0, 2]


async def test_user_thread_pool_runs_calls_in_threads_and_stays_open() -> None:
    main = threading.get_ident()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:

        @single_task(executor=pool)
        def where(x: int) -> tuple[int, bool]:
            return x, threading.get_ident() != main

        @batch_task(max_size=3, executor=pool)
        def total(batch: list[tuple[int, bool]]) -> int:
            assert all(off_loop for _, off_loop in batch)
            return sum(x for x, _ in batch)

        assert await (where | total)(range(7)).collect() == [3, 12, 6]
        assert pool.submit(lambda: 1).result() == 1  # never shut down by conveyor


def test_bad_executor_is_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match="executor must be"):
        single_task(executor=object())


# -- observers -------------------------------------------------------------------------


class StageCounts:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []

    def items_in(self, n: int) -> None:
        self.counts["in"] += n

    def items_out(self, n: int) -> None:
        self.counts["out"] += n

    def call_started(self) -> None:
        self.counts["started"] += 1

    def call_ended(self, seconds: float, error: BaseException | None) -> None:
        self.counts["ended"] += 1
        self.latencies.append(seconds)
        if error is not None:
            self.errors.append(error)

    def retried(self, error: BaseException, attempt: int) -> None:
        self.counts["retried"] += 1


class Recorder:
    def __init__(self) -> None:
        self.stages: dict[str, StageCounts] = {}
        self.waits: list[float] = []

    def stage(self, index: int, spec: StageSpec) -> StageCounts:
        return self.stages.setdefault(f"{index}:{spec.name}", StageCounts())

    def waited_for_room(self, seconds: float) -> None:
        self.waits.append(seconds)


@single_task
def keep_even(x: int) -> int | None:
    return x if x % 2 == 0 else None


@single_task(retry_attempts=2, retry_delay=0, on_error="skip_item")
async def slow_half(x: int) -> int:
    await asyncio.sleep(0.01)
    if x == 4:
        raise ValueError(x)
    return x // 2


@batch_task(max_size=2)
def pairs(batch: list[int]) -> list[int]:
    return [sum(batch)]


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_observed_run_counts_every_stage(mode: str) -> None:
    pipeline = (keep_even | slow_half | pairs).with_execution_mode(mode)
    plain = await pipeline(range(20)).collect()
    recorder = Recorder()
    observed = await pipeline(range(20)).observe(recorder).collect()
    assert sorted(observed) == sorted(plain)
    keep, half, pair = (recorder.stages[k] for k in ("0:keep_even", "1:slow_half", "2:pairs"))
    assert keep.counts == {"in": 20, "out": 10, "started": 20, "ended": 20}
    # item 4 fails twice (one retry), then is skipped
    assert half.counts == {"in": 10, "out": 9, "started": 11, "ended": 11, "retried": 1}
    assert [type(e) for e in half.errors] == [ValueError, ValueError]
    # (a loop's timer may fire a little early, uvloop's by up to a millisecond)
    assert all(seconds >= 0.005 for seconds in half.latencies), half.latencies
    assert pair.counts == {"in": 9, "out": 5, "started": 5, "ended": 5}


async def test_observer_sees_waits_for_room() -> None:
    recorder = Recorder()

    @single_task
    async def slow(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    pipeline = slow.with_context(max_in_flight=4)
    assert await pipeline(range(40)).observe(recorder).collect() == list(range(40))
    assert recorder.waits and all(seconds >= 0 for seconds in recorder.waits)


async def test_observer_must_be_attached_before_iteration() -> None:
    stream = keep_even(range(4))
    assert await anext(stream) == 0
    with pytest.raises(RuntimeError, match="before iteration"):
        stream.observe(Recorder())
    await stream.aclose()


# -- public asyncio API only -----------------------------------------------------------

PRIVATE_ASYNCIO = re.compile(
    r"_current_tasks|_enter_task|_leave_task|_swap_current_task|_register_task|"
    r"_unregister_task|asyncio\.tasks\._|asyncio\.events\._|_asyncio\b|_PyTask|_CTask|"
    r"_get_running_loop|_set_running_loop|_step\b|__step|_fut_waiter|_must_cancel"
)


def test_no_private_asyncio_attributes_in_the_package() -> None:
    package = Path(__file__).resolve().parent.parent / "conveyor"
    found = [
        f"{path.relative_to(package.parent)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_ASYNCIO.search(line)
    ]
    assert not found, "private asyncio API used:\n" + "\n".join(found)


def test_the_private_api_check_can_fail() -> None:
    assert PRIVATE_ASYNCIO.search("current = asyncio.tasks._current_tasks[loop]")
    assert PRIVATE_ASYNCIO.search("from asyncio import _enter_task")
    assert not PRIVATE_ASYNCIO.search("task = asyncio.current_task()")
