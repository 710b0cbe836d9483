"""``executor="process"`` / ``"process:N"`` and a user's process pool: chunked calls.

The functions live in ``tests/workers.py`` (workers import them by name). Every test
checks, through the ``no_children`` fixture, that no worker process outlives its run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import multiprocessing
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import workers

from conveyor import Failure, batch_task, single_task
from conveyor._engine._chunks import Chunker


@pytest.fixture(autouse=True)
def no_children() -> Any:
    yield
    assert multiprocessing.active_children() == []  # (joins the exited ones)


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_results_match_inline_in_both_modes(mode: str) -> None:
    inline = single_task(workers.square)
    on_processes = single_task(executor="process:2")(workers.square)
    expected = await inline(range(500)).collect()
    out = await on_processes.with_execution_mode(mode)(range(500)).collect()
    assert (out if mode == "ordered" else sorted(out)) == expected


async def test_work_runs_in_other_processes_on_every_worker() -> None:
    import os

    # 20 ms items: long enough for the second worker to start (on demand) and take some.
    spread = single_task(executor="process:2", chunk_size=1)(workers.spin).with_inputs(0.02)
    pids = single_task(executor="process:2", chunk_size=1)(workers.pid)
    out = await (spread | pids)(range(40)).collect()
    assert os.getpid() not in out
    assert len(set(out)) == 2  # both workers had work


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip_item", [1, 2, 4, 5, 7, 8]),
        ("emit", ["F0", 1, 2, "F3", 4, 5, "F6", 7, 8]),
    ],
)
async def test_a_failing_item_fails_alone_under_the_policy(
    policy: str, expected: list[Any]
) -> None:
    task = single_task(executor="process:2", on_error=policy, chunk_size=9)(
        workers.fail_on_multiples_of_three
    )
    out = await task(range(9)).collect()
    shown = [f"F{r.item}" if isinstance(r, Failure) else r for r in out]
    assert shown == expected
    for failure in out:
        if isinstance(failure, Failure):
            assert isinstance(failure.exception, ValueError)
            notes = "\n".join(failure.exception.__notes__)
            assert "in a worker process" in notes and "fail_on_multiples_of_three" in notes


async def test_a_failure_raises_with_its_type_annotated_with_task_and_item() -> None:
    """The run fails with the first failure to come back (not the first in input order:
    on 2 workers, item 6's chunk may be answered before item 3's), annotated with its
    own task and item."""
    task = single_task(executor="process:2")(workers.fail_on_multiples_of_three)
    with pytest.raises(ValueError, match=r"^bad item [36]\b") as caught:
        await task(range(1, 9)).collect()
    item = str(caught.value).removeprefix("bad item ")
    assert f"conveyor: raised by task 'fail_on_multiples_of_three' on {item}" in (
        caught.value.__notes__
    )


async def test_retries_send_a_failed_item_again(tmp_path: Path) -> None:
    task = single_task(executor="process:2", retry_attempts=2, retry_delay=0)(
        functools.partial(workers.fail_once, folder=str(tmp_path))
    )
    assert await task(range(20)).collect() == list(range(20))


async def test_an_exception_that_cannot_travel_becomes_a_runtime_error() -> None:
    task = single_task(executor="process:1", on_error="emit")(workers.raises_unpicklable)
    [failure] = await task([7]).collect()
    assert isinstance(failure, Failure) and isinstance(failure.exception, RuntimeError)
    assert "Unpicklable: 7/7" in str(failure.exception)


async def test_batches_generators_and_side_inputs_travel() -> None:
    batches = batch_task(max_size=4, executor="process:2")(workers.total)
    assert await batches(range(8)).collect() == [6, 6, 6, 6, 22, 22, 22, 22]
    expand = single_task(executor="process:2")(workers.up_to)
    assert await expand([2, 3]).collect() == [0, 1, 0, 1, 2]
    slow = single_task(executor="process:2")(workers.spin).with_inputs(0.0001)
    assert await slow(range(5)).collect() == list(range(5))


async def test_a_timeout_fails_the_item_under_the_policy() -> None:
    task = single_task(executor="process:2", timeout=0.2, on_error="emit")(workers.nap)
    out = await task.with_inputs(1.0)([1]).collect()
    assert isinstance(out[0], Failure) and isinstance(out[0].exception, TimeoutError)


async def test_mixed_with_async_stages_and_threads() -> None:
    @single_task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    squares = single_task(executor="process:2")(workers.square)
    slept = single_task(executor="thread:8")(workers.nap).with_inputs(0.001)
    out = await (double | squares | slept)(range(30)).collect()
    assert out == [(2 * x) ** 2 for x in range(30)]


def test_the_synchronous_front_door() -> None:
    task = single_task(executor="process:2")(workers.square)
    assert task.run(range(10)) == [x * x for x in range(10)]
    assert list(task.iter(range(5))) == [0, 1, 4, 9, 16]


# -- clear errors ---------------------------------------------------------------------------


def test_async_functions_are_refused_at_decoration() -> None:
    async def fetch(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"task 'fetch' is an async function.*plain def"):
        single_task(executor="process")(fetch)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: single_task(executor="process:1")(lambda x: x), "is a lambda"),
        (lambda: single_task(executor="process:1")(_local()), "defined inside _local()"),
        (
            lambda: single_task(executor="process:1")(workers.nap).with_inputs(threading.Lock()),
            "side input #1, lock",
        ),
    ],
)
async def test_what_cannot_be_pickled_is_named_with_the_fix(make: Any, why: str) -> None:
    with pytest.raises(TypeError, match="cannot run on executor 'process:1'") as caught:
        await make()([1]).collect()
    message = str(caught.value)
    assert why in message
    assert "top level of an importable module" in message and "executor='thread'" in message


def _local() -> Any:
    def inner(x: int) -> int:
        return x

    return inner


async def test_a_resource_cannot_go_to_a_process() -> None:
    class Session:
        async def __aenter__(self) -> Session:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

    task = single_task(executor="process:1")(workers.square)
    with pytest.raises(TypeError, match=r"resource 'session'.*cannot be sent to a worker"):
        task.with_resources(session=Session)  # (refused when the task is made)


async def test_an_item_or_result_that_cannot_be_pickled_fails_alone() -> None:
    task = single_task(executor="process:1", on_error="emit")(workers.square)
    out = await task([1, threading.Lock(), 3]).collect()
    assert out[0] == 1 and out[2] == 9
    assert isinstance(out[1], Failure) and "cannot be pickled to be sent" in str(out[1].exception)
    back = single_task(executor="process:1", on_error="emit")(workers.returns_a_lock)
    [failure] = await back([1]).collect()
    assert isinstance(failure, Failure) and "cannot be pickled to be sent back" in str(
        failure.exception
    )


def test_chunk_size_is_checked() -> None:
    with pytest.raises(ValueError, match="chunk_size applies to work sent to other processes"):
        single_task(chunk_size=10)(workers.square)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        single_task(executor="process", chunk_size=0)(workers.square)


# -- dead workers ---------------------------------------------------------------------------


@pytest.mark.parametrize("at", [0, 17, 63])
async def test_a_killed_worker_is_retried_with_every_item_once(tmp_path: Path, at: int) -> None:
    task = single_task(executor="process:2", retry_attempts=3, retry_delay=0)(
        functools.partial(workers.die_once, folder=str(tmp_path), at=at)
    )
    out = await task(range(80)).collect()
    assert out == list(range(80))  # each item once, in order
    assert (tmp_path / "died").exists()


async def test_a_killed_worker_without_retries_fails_only_its_item(tmp_path: Path) -> None:
    task = single_task(executor="process:2", on_error="emit")(
        functools.partial(workers.die_once, folder=str(tmp_path), at=30)
    )
    out = await task.with_execution_mode("as_completed")(range(200)).collect()
    seen = Counter(r.item if isinstance(r, Failure) else r for r in out)
    assert seen == Counter(range(200))  # every item accounted for, exactly once
    [failed] = [r for r in out if isinstance(r, Failure)]  # the culprit alone
    assert failed.item == 30
    assert isinstance(failed.exception, concurrent.futures.process.BrokenProcessPool)
    assert "the worker process running item 30 died (killed by SIGKILL)" in str(failed.exception)


# -- ownership ------------------------------------------------------------------------------


async def test_no_worker_outlives_an_early_exit() -> None:
    task = single_task(executor="process:2")(workers.nap).with_inputs(0.05)
    async with task(range(100)) as stream:
        async for _ in stream:
            break
    assert multiprocessing.active_children() == []


async def test_no_worker_outlives_cancellation() -> None:
    task = single_task(executor="process:2")(workers.nap).with_inputs(0.05)
    consumer = asyncio.ensure_future(task(range(100)).collect())
    await asyncio.sleep(0.3)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert multiprocessing.active_children() == []


async def test_a_users_pool_is_used_chunked_and_never_shut_down() -> None:
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        task = single_task(executor=pool)(workers.square)
        assert await task(range(50)).collect() == [x * x for x in range(50)]
        assert await task(range(3)).collect() == [0, 1, 4]  # still open
        assert pool.submit(workers.square, 3).result() == 9


async def test_the_input_stays_lazy() -> None:
    pulled = 0

    def numbers() -> Any:
        nonlocal pulled
        for x in range(10_000):
            pulled += 1
            yield x

    task = single_task(executor="process:2")(workers.square)
    stream = task.with_context(max_in_flight=50)(numbers())
    async with stream:
        async for x in stream:
            if x == 100:
                break
    assert pulled <= 11 + 50 + 10  # what was consumed, the window, and a little slack


# -- chunk sizes ----------------------------------------------------------------------------


def test_chunk_sizes_follow_the_measured_cost() -> None:
    loop = asyncio.new_event_loop()
    try:
        chunker = Chunker(loop, b"", None, None, 2, None)  # type: ignore[arg-type]
        # An idle round trip of 1 ms above the work: 20 ms, under the floor of 100 ms.
        chunker.measure(1, round_trip=0.002, work=0.001, cpu=0.001, pickling=0.0, idle=True)
        assert chunker.size == 100
        # Calls become ten times dearer: the size follows (a moving average).
        for _ in range(30):
            chunker.measure(100, round_trip=1.01, work=1.0, cpu=1.0, pickling=0.0, idle=False)
        assert chunker.size == 10
        # A dear transfer (50 ms of pickling per chunk) buys bigger chunks, up to 250 ms.
        chunker.measure(10, round_trip=0.2, work=0.1, cpu=0.1, pickling=0.05, idle=False)
        assert 0.2 <= chunker.size * chunker.per_item <= 0.25
        fixed = Chunker(loop, b"", None, None, 2, 7)  # type: ignore[arg-type]
        fixed.measure(1, round_trip=0.002, work=0.001, cpu=0.001, pickling=0.0, idle=True)
        assert fixed.size == 7
    finally:
        loop.close()


def test_a_function_decorated_in_place_travels() -> None:
    assert workers.decorated_cube.run(range(5)) == [0, 1, 8, 27, 64]
