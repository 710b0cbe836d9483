"""Run-scoped resources (``task.with_resources``) and the options declared once.

A resource is opened before the run's first call and closed when the run ends -- at the
end, on an error, on early exit, on cancellation -- after every call of the run has
ended. A factory shared by several tasks is opened once per run. Each run opens its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import time
import typing
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from http_server import serve

from conveyor import SingleTask, single_task
from conveyor._spec import FIELDS, BatchTaskOptions, TaskOptions


class Tracked:
    """A factory of async context managers that records what happens to them."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.count = 0

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[str]:
        self.count += 1
        name = f"res{self.count}"
        self.events.append(f"open {name}")
        try:
            yield name
        finally:
            await asyncio.sleep(0)  # closing may await, as a session's does
            self.events.append(f"close {name}")


async def test_resource_opens_before_the_first_call_and_closes_after_the_last() -> None:
    tracked = Tracked()

    @single_task
    async def use(x: int, *, conn: str) -> str:
        tracked.events.append(f"call {x}")
        await asyncio.sleep(0.001 * (3 - x))
        tracked.events.append(f"done {x}")
        return f"{conn}:{x}"

    task = use.with_resources(conn=tracked)
    assert await task(range(3)).collect() == ["res1:0", "res1:1", "res1:2"]
    assert tracked.events[0] == "open res1"
    assert tracked.events[-1] == "close res1"
    assert sorted(tracked.events[1:-1]) == sorted(
        [f"call {x}" for x in range(3)] + [f"done {x}" for x in range(3)]
    )
    # every run opens its own
    assert await task(range(1)).collect() == ["res2:0"]
    assert tracked.events[-1] == "close res2"


async def test_one_factory_shared_by_two_tasks_opens_once_per_run() -> None:
    tracked = Tracked()

    @single_task
    def first(x: int, *, conn: str) -> tuple[str, int]:
        return conn, x

    @single_task
    async def second(pair: tuple[str, int], *, conn: str) -> bool:
        return pair[0] == conn

    pipeline = first.with_resources(conn=tracked) | second.with_resources(conn=tracked)
    assert await pipeline(range(3)).collect() == [True, True, True]
    assert tracked.events == ["open res1", "close res1"]


@contextlib.contextmanager
def sync_resource(events: list[str]) -> Iterator[str]:
    events.append("open")
    yield "sync"
    events.append("close")


async def test_plain_context_manager_and_factory() -> None:
    events: list[str] = []

    @single_task
    def tag(x: int, *, res: str) -> str:
        return f"{res}{x}"

    task = tag.with_resources(res=lambda: sync_resource(events))
    assert await task([1]).collect() == ["sync1"]
    assert events == ["open", "close"]


@pytest.mark.parametrize("exit_how", ["error", "break", "aclose", "cancel"])
async def test_resource_closes_on_every_kind_of_exit(exit_how: str) -> None:
    tracked = Tracked()
    in_call = asyncio.Event()

    @single_task
    async def work(x: int, *, conn: str) -> int:
        if x == 3 and exit_how == "error":
            raise KeyError(x)
        if x >= 3:
            in_call.set()
            await asyncio.sleep(10)
        return x

    stream = work.with_resources(conn=tracked)(range(100))
    if exit_how == "error":
        with pytest.raises(KeyError):
            await stream.collect()
    elif exit_how == "break":
        async with stream:
            async for x in stream:
                if x == 2:
                    break
    elif exit_how == "aclose":
        assert await anext(stream) == 0
        await in_call.wait()
        await stream.aclose()
    else:
        consumer = asyncio.create_task(stream.collect())
        await in_call.wait()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        for _ in range(10):  # (a cancelled consumer leaves the run to unwind on its own)
            await asyncio.sleep(0)
    assert tracked.events == ["open res1", "close res1"]


async def test_resource_that_fails_to_open_reaches_the_consumer_and_closes_the_input() -> None:
    def source() -> Iterator[int]:
        yield from range(3)

    def broken() -> Any:
        raise ConnectionRefusedError("database is down")

    @single_task
    def use(x: int, *, db: Any) -> int:
        return x

    items = source()
    with pytest.raises(ConnectionRefusedError, match="database is down"):
        await use.with_resources(db=broken)(items).collect()
    assert inspect.getgeneratorstate(items) == inspect.GEN_CLOSED


async def test_a_value_that_is_not_a_context_manager_is_refused_with_the_fix() -> None:
    @single_task
    def use(x: int, *, db: Any) -> int:
        return x

    with pytest.raises(TypeError, match="resource 'db' of task 'use' must be a context"):
        await use.with_resources(db=42)([1]).collect()


async def test_with_inputs_refuses_a_context_manager_and_names_with_resources() -> None:
    @single_task
    def use(x: int, session: Any) -> int:
        return x

    async with aiohttp.ClientSession() as session:
        with pytest.raises(TypeError, match=r"with_resources\(name=factory\)"):
            use.with_inputs(session)


async def test_aiohttp_session_as_a_run_scoped_resource() -> None:
    sessions: list[aiohttp.ClientSession] = []
    async with serve() as server:

        @single_task(concurrency_limit=8)
        async def fetch(n: int, *, session: aiohttp.ClientSession) -> int:
            sessions.append(session)
            async with session.get(f"{server.url}/item/{n}") as response:
                response.raise_for_status()
                return int((await response.json())["n"])

        task = fetch.with_resources(session=aiohttp.ClientSession)
        assert await task(range(20)).collect() == list(range(20))
        assert len(set(map(id, sessions))) == 1 and sessions[0].closed

        # leaving early closes the session too, after the calls in flight are cancelled
        async with task(range(1000)) as stream:
            async for n in stream:
                if n == 5:
                    break
        assert sessions[-1].closed and len(set(map(id, sessions))) == 2
        assert await server.wait_idle() == 0


# -- options are declared once -----------------------------------------------------------


def test_task_options_are_declared_once() -> None:
    typed = set(typing.get_type_hints(BatchTaskOptions))
    assert typed == set(FIELDS), "TaskOptions and the decorators' TypedDicts disagree"


def test_direct_construction_takes_the_decorators_defaults() -> None:
    def f(x: int) -> int:
        return x

    assert SingleTask(f).options == TaskOptions()
    assert single_task(f).options == SingleTask(f).options
    with pytest.raises(TypeError, match="unknown option 'max_inflight'"):
        single_task(max_inflight=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="option of @batch_task"):
        SingleTask(f, max_size=3)


async def test_a_call_still_running_on_a_users_pool_ends_before_its_resource_closes() -> None:
    """The run fails while a call runs on the user's ThreadPoolExecutor (which cannot be
    cancelled): the resource closes only after that call ended, and the call's late
    error is dropped quietly (the loop reports nothing)."""
    import concurrent.futures
    import threading

    events: list[str] = []
    running = threading.Event()

    @contextlib.contextmanager
    def resource() -> Iterator[str]:
        yield "r"
        events.append("closed")

    def slow(x: int, *, res: str) -> int:
        if x == 0:
            running.set()
            time.sleep(0.2)
            events.append("call ended")
            raise ValueError("too late to matter")
        return x

    @single_task
    async def fails(x: int) -> int:
        await asyncio.to_thread(running.wait, 5)
        raise KeyError(x)

    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = single_task(slow, executor=pool).with_resources(res=resource)
            with pytest.raises(KeyError):
                await (first | fails)([0, 1]).collect()
        gc.collect()  # ("never retrieved" is reported when a Future is collected)
    finally:
        loop.set_exception_handler(previous)
    assert events == ["call ended", "closed"]
    assert reported == []


def _record(x: int, *, box: list[int]) -> int:
    box.append(x)
    return x


@pytest.mark.parametrize("kind", ["process", "process:2", "ProcessPoolExecutor", "dask"])
def test_a_resource_on_a_task_sent_to_other_processes_is_refused_when_the_task_is_made(
    kind: str,
) -> None:
    """A resource pickled into worker processes would be a copy per worker: the calls
    would use the copies, and the run's resource would see none of them (it returned
    results while the resource saw []). Refused at once, naming the task and the fix,
    whichever way round the task is made."""
    import concurrent.futures

    collector: list[int] = []
    with contextlib.ExitStack() as stack:
        executor: Any = kind
        if kind == "ProcessPoolExecutor":
            executor = stack.enter_context(concurrent.futures.ProcessPoolExecutor(1))
        elif kind == "dask":
            distributed = pytest.importorskip("distributed")
            executor = stack.enter_context(
                distributed.Client(
                    processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
                )
            )
        task = single_task(executor=executor)(_record)
        with pytest.raises(TypeError) as caught:
            task.with_resources(box=lambda: contextlib.nullcontext(collector))
        message = str(caught.value)
        assert "task '_record'" in message and "resource 'box'" in message
        assert "cannot be sent to a worker process" in message
        assert "executor='thread'" in message  # the fix
        with pytest.raises(TypeError, match="resource 'box'"):  # the other way round
            SingleTask(_record, executor=executor).with_resources(box=list).with_inputs()
    assert collector == []


async def test_a_timed_out_call_on_a_users_pool_ends_before_its_resource_closes() -> None:
    """A call that timed out on the user's ThreadPoolExecutor runs on (a thread cannot be
    stopped): the resource closes only after it ended, as with ``executor="thread:4"``
    (it was closed under the call: 'call 1 ends, db open=False')."""
    import concurrent.futures

    events: list[str] = []

    class Db:
        open = False

    @contextlib.contextmanager
    def db() -> Iterator[Db]:
        connection = Db()
        connection.open = True
        yield connection
        events.append("close")
        connection.open = False

    def call(x: int, *, db: Db) -> int:
        time.sleep(0.3)
        events.append(f"call {x} ends, db open={db.open}")
        return x

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for executor in (pool, "thread:4"):
            events.clear()
            task = single_task(executor=executor, timeout=0.05, on_error="skip_item")(call)
            assert await task.with_resources(db=db)(range(2)).collect() == []
            assert sorted(events[:2]) == ["call 0 ends, db open=True", "call 1 ends, db open=True"]
            assert events[2:] == ["close"], (executor, events)
