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


# -- calls that wait on a Future, without a task of their own (_waiting) ---------------------


async def test_thread_calls_wait_without_a_task_each() -> None:
    release = threading.Event()
    started: list[int] = []
    failed: list[int] = []

    @single_task(executor="thread:8", retry_attempts=2, retry_delay=0)
    def held(x: int) -> int:
        started.append(x)
        release.wait(timeout=10)
        if x == 7 and not failed:
            failed.append(x)
            raise OSError(x)  # retried: the policy awaits, in a task
        return x

    before = len(asyncio.all_tasks())
    consumer = asyncio.create_task(held(range(200)).collect())
    while len(started) < 8:  # every thread busy, the other 192 calls queued in the pool
        await asyncio.sleep(0.001)
    tasks = len(asyncio.all_tasks()) - before
    release.set()
    assert await consumer == list(range(200))
    assert tasks < 10  # the consumer and the run's own; a task per call would be 200 more


@pytest.mark.parametrize("pool", ["thread:32", "ThreadPoolExecutor(32)"])
async def test_completions_in_threads_wake_the_loop_once_for_many(
    pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import concurrent.futures

    from conveyor._engine._threads import ThreadPool
    from conveyor._engine._waiting import Completions

    # What the loop runs when threads wake it: conveyor's pool answers its own Futures;
    # a user's pool completes concurrent.futures Futures, which the run collects.
    owner, method = (ThreadPool, "_answer") if pool == "thread:32" else (Completions, "_drain")
    wakes = 0
    wake = getattr(owner, method)

    def counting(self: Any) -> None:
        nonlocal wakes
        wakes += 1
        wake(self)

    monkeypatch.setattr(owner, method, counting)
    together = threading.Barrier(32)  # 32 calls end at the same moment

    def meet(x: int) -> int:
        together.wait(timeout=10)
        return x

    with concurrent.futures.ThreadPoolExecutor(32) as users:
        executor = "thread:32" if pool == "thread:32" else users
        assert await single_task(executor=executor)(meet)(range(32)).collect() == list(range(32))
    assert 1 <= wakes <= 16  # one wake per item would be 32


async def test_a_future_cancelled_outside_the_pipeline_fails_the_run() -> None:
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)

    @single_task(executor=pool)
    def first_cancels_the_rest(x: int) -> int:
        if x == 0:
            time.sleep(0.05)  # the other calls are queued behind this one
            pool.shutdown(wait=False, cancel_futures=True)
        return x

    with pytest.raises(RuntimeError, match="cancelled from outside") as caught:
        await first_cancels_the_rest(range(10)).collect()
    assert "first_cancels_the_rest" in "".join(caught.value.__notes__)
    pool.shutdown()


@pytest.mark.parametrize("pool", ["thread:2", "ThreadPoolExecutor(2)"])
async def test_early_exit_cancels_calls_queued_in_a_pool(pool: str) -> None:
    import concurrent.futures

    ran: list[int] = []

    def slow(x: int) -> int:
        time.sleep(0.01)
        ran.append(x)
        return x

    with concurrent.futures.ThreadPoolExecutor(2) as users:
        executor = "thread:2" if pool == "thread:2" else users
        async with single_task(executor=executor)(slow)(range(200)) as stream:
            async for _ in stream:
                break
        await asyncio.sleep(0.05)
        assert len(ran) < 10  # the rest never ran: cancelled in the pool's queue
        assert users.submit(int, "7").result() == 7  # a user's pool stays open
    assert pool_threads() == []


@pytest.mark.parametrize("executor", ["inline", "thread:2"])
async def test_stop_iteration_in_a_call_is_an_error_like_any_other(executor: str) -> None:
    def stop_at_3(x: int) -> int:
        if x == 3:
            raise StopIteration(x)  # must not read as the end of the stream
        return x

    task = single_task(executor=executor)(stop_at_3)
    with pytest.raises(RuntimeError, match="StopIteration"):
        await task(range(6)).collect()
    skipping = single_task(executor=executor, on_error="skip_item")(stop_at_3)
    assert await skipping(range(6)).collect() == [0, 1, 2, 4, 5]
