"""Executors that conveyor owns: ``executor="thread"`` / ``"thread:N"``.

A pool is opened per run, shared by the tasks of the run that ask for the same size,
and closed when the run ends -- normally, on an error, on early exit, on cancellation --
once its threads have exited: no thread outlives the run.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest

from conveyor import batch_task, single_task

var: contextvars.ContextVar[str] = contextvars.ContextVar("conveyor_executors", default="-")


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conveyor-")]


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_blocking_calls_run_on_a_thread_pool_in_parallel(mode: str) -> None:
    main = threading.get_ident()

    @single_task(executor="thread:32")
    def blocking(x: int) -> tuple[int, bool]:
        time.sleep(0.02)  # a blocking client call
        return x, threading.get_ident() != main

    loop = asyncio.get_running_loop()
    start = loop.time()
    out = await blocking.with_execution_mode(mode)(range(64)).collect()
    elapsed = loop.time() - start
    assert sorted(x for x, _ in out) == list(range(64))
    assert all(off_loop for _, off_loop in out)
    if mode == "ordered":
        assert [x for x, _ in out] == list(range(64))
    assert elapsed < 64 * 0.02 / 4  # 1.28 s inline; about 0.04 s on 32 threads
    assert pool_threads() == []  # closed with the run


async def test_threads_see_the_calls_context_and_errors_keep_their_policy() -> None:
    @single_task
    async def tag(x: int) -> int:
        var.set(f"item {x}")
        return x

    @single_task(executor="thread", retry_attempts=2, retry_delay=0, on_error="emit")
    def check(x: int) -> str:
        if x == 3:
            raise ValueError(x)
        return var.get()

    out = await (tag | check)(range(5)).collect()
    assert out[:3] == ["-", "-", "-"] and out[4] == "-"  # a plain stage's own context copy
    assert type(out[3]).__name__ == "Failure" and out[3].attempts == 2


async def test_one_pool_per_size_is_shared_by_the_tasks_of_a_run() -> None:
    names: dict[str, set[str]] = {"a": set(), "b": set(), "c": set()}

    def record(stage: str) -> Any:
        def call(x: int) -> int:
            names[stage].add(threading.current_thread().name.rpartition("_")[0])
            return x

        return call

    pipeline = (
        single_task(executor="thread:4")(record("a"))
        | single_task(executor="thread:4")(record("b"))
        | batch_task(max_size=3, executor="thread:2")(record("c"))
    )
    await pipeline(range(12)).collect()
    assert len(names["a"]) == 1 and names["a"] == names["b"]  # the same pool
    assert names["c"] and names["c"] != names["a"]  # another size: another pool
    assert pool_threads() == []


@pytest.mark.parametrize("how", ["error", "break", "cancel"])
async def test_no_thread_outlives_the_run(how: str) -> None:
    @single_task(executor="thread:8")
    def slow(x: int) -> int:
        time.sleep(0.01)
        if x == 5 and how == "error":
            raise KeyError(x)
        return x

    stream = slow(range(1000))
    if how == "error":
        with pytest.raises(KeyError):
            await stream.collect()
    elif how == "break":
        async with stream:
            async for x in stream:
                if x == 3:
                    break
    else:
        consumer = asyncio.create_task(stream.collect())
        await asyncio.sleep(0.05)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await stream.aclose()
    assert pool_threads() == []


def test_executor_names_are_checked_at_decoration() -> None:
    for bad in ("thread:0", "thread:x", "threads", "gpu", "process:0", "process:", "auto:1"):
        with pytest.raises(ValueError, match="executor must be 'inline', 'thread'"):
            single_task(executor=bad)
    for good in ("thread", "thread:3", "process", "process:32", "auto"):
        single_task(executor=good)
