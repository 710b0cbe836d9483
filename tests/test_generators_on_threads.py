"""A generator task on a thread pool is stepped there (issue 17, item 6.6).

Only the call that created the generator used to go to the pool: its body ran on the
event loop, so ``time.sleep`` between values blocked it. Each ``next()`` is now a job of
the pool (conveyor's ``"thread"``/``"thread:N"``, a user's ``ThreadPoolExecutor``):
lazy, paced by the window, values before an error kept with the same Failure as inline,
and the generator closed on a pool thread when the run ends early.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor import Failure, single_task

EXECUTORS = ["thread", "thread:1", "user-pool"]


@pytest.fixture
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "user-pool":
        pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="users")
        yield pool
        pool.shutdown(wait=True)
    else:
        yield request.param


def on_pool(name: str) -> bool:
    return name.startswith(("conveyor-", "users"))


@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
async def test_a_sleeping_generator_does_not_block_the_loop(executor: Any) -> None:
    """A heartbeat on the loop keeps ticking while the generator sleeps between values
    (before: the loop was blocked for the whole 0.4 s and it ticked about once)."""
    threads: set[str] = set()

    @single_task(executor=executor)
    def slow(n: int) -> Iterator[int]:
        for i in range(n):
            threads.add(threading.current_thread().name)
            time.sleep(0.05)
            yield i

    ticks = 0
    stop = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    try:
        assert await slow([8]).collect() == list(range(8))
    finally:
        stop.set()
        await beat
    assert threads and all(on_pool(name) for name in threads), threads
    assert ticks >= 5  # ~40 expected in 0.4 s (blocked: about 1); generous for a loaded machine


def numbers(n: int) -> Iterator[int | None]:
    for i in range(n):
        yield None if i % 3 == 1 else i * 10


def fails_midway(n: int) -> Iterator[int]:
    for i in range(n):
        if i == 2:
            raise ValueError(f"boom at {i}")
        yield i


async def outcomes(pipeline: Any, items: list[int]) -> Any:
    try:
        return ("ok", await pipeline(items).collect())
    except Exception as exc:
        return ("raised", type(exc), str(exc), getattr(exc, "__notes__", None))


def comparable(result: Any) -> Any:
    """Failures compared by what they say (their exception objects differ)."""
    if result[0] != "ok":
        return result
    return [
        (value.item, repr(value.exception), value.task_name, value.attempts)
        if isinstance(value, Failure)
        else value
        for value in result[1]
    ]


@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
@pytest.mark.parametrize("on_error", ["emit", "skip_item", "fail"])
@pytest.mark.parametrize("function", [numbers, fails_midway])
async def test_results_and_errors_equal_inline(
    executor: Any, mode: str, on_error: str, function: Any
) -> None:
    def after(x: int) -> int:
        return x + 1

    def build(where: Any) -> Any:
        gen = single_task(function, executor=where, on_error=on_error, task_name="gen")
        return (gen | single_task(after)).with_execution_mode(mode).with_context(max_in_flight=4)

    items = [5, 0, 7]
    inline = await outcomes(build("inline"), items)
    threaded = await outcomes(build(executor), items)
    if mode == "as_completed" and inline[0] == "ok":  # (several generators at once)
        inline = ("ok", sorted(inline[1], key=repr))
        threaded = ("ok", sorted(threaded[1], key=repr))
    assert comparable(threaded) == comparable(inline)
    if function is fails_midway and on_error == "emit":
        failures = [value for value in threaded[1] if isinstance(value, Failure)]
        assert {failure.item for failure in failures} == {"<output 2 of a generator>"}


@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
async def test_lazy_and_paced_by_the_window(executor: Any) -> None:
    """The generator runs at most about a window ahead of the consumer, as inline."""
    produced = 0
    window = 4

    @single_task(executor=executor)
    def count(n: int) -> Iterator[int]:
        nonlocal produced
        for i in range(n):
            produced += 1
            yield i

    taken = 0
    lead = 0
    async with count.with_context(max_in_flight=window)([50]) as stream:
        async for _ in stream:
            taken += 1
            lead = max(lead, produced - taken)
            await asyncio.sleep(0.002)
    assert taken == 50
    assert lead <= window + 2


@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
async def test_an_early_exit_closes_the_generator_on_a_pool_thread(executor: Any) -> None:
    closed: list[str] = []

    @single_task(executor=executor)
    def endless(_: int) -> Iterator[int]:
        try:
            i = 0
            while True:
                time.sleep(0.01)
                yield i
                i += 1
        finally:
            closed.append(threading.current_thread().name)

    async with endless([0]) as stream:
        async for value in stream:
            if value == 3:
                break
    assert len(closed) == 1 and on_pool(closed[0]), closed


@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
async def test_a_failing_run_closes_a_generator_that_is_mid_step(executor: Any) -> None:
    """The run fails while a step sleeps on its thread: the close waits for that step,
    then runs on a pool thread, before the run's error reaches the consumer."""
    closed: list[str] = []
    in_step = threading.Event()

    @single_task(executor=executor)
    def slow(_: int) -> Iterator[int]:
        try:
            yield 0
            in_step.set()
            time.sleep(0.2)
            yield 1
        finally:
            closed.append(threading.current_thread().name)

    @single_task
    async def boom(x: int) -> int:
        if x == 0:
            while not in_step.is_set():
                await asyncio.sleep(0.005)
            raise RuntimeError("stop")
        return x

    with pytest.raises(RuntimeError, match="stop"):
        await (slow | boom).with_execution_mode("as_completed")([0]).collect()
    assert len(closed) == 1 and on_pool(closed[0]), closed


VAR: contextvars.ContextVar[int] = contextvars.ContextVar("VAR", default=0)


@pytest.mark.parametrize("executor", ["inline", *EXECUTORS], indirect=True)
async def test_steps_share_one_context_as_on_the_loop(executor: Any) -> None:
    @single_task(executor=executor)
    def counting(n: int) -> Iterator[int]:
        for _ in range(n):
            VAR.set(VAR.get() + 1)
            yield VAR.get()

    assert await counting([4]).collect() == [1, 2, 3, 4]
    assert VAR.get() == 0
