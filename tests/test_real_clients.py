"""User code inside tasks sees real asyncio semantics, and real HTTP clients work.

What this proves, against a real local HTTP server (tests/http_server.py):

- inside an ``async def`` task, ``asyncio.current_task()`` is a real ``asyncio.Task`` that
  can be weak-referenced, stays the same object across the call's ``await``s, and is not
  the consumer's task (ordered and as-completed runs);
- ``asyncio.timeout``, ``asyncio.wait_for`` and ``asyncio.TaskGroup`` behave inside a task
  as in any asyncio task, and the run completes;
- a ContextVar set by a call is private to that call; one the consumer set is visible;
- anyio (``fail_after``, ``move_on_after``, task groups) works inside a task, on the
  running asyncio loop;
- aiohttp and httpx clients work inside tasks: concurrency limits, per-call timeouts,
  retries, timeouts inside the call, a dropped connection surfacing as the client's own
  exception (with conveyor's note);
- a consumer that leaves early (break, ``aclose()``, an exception) while many requests are
  in flight leaves no task pending and no request running on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from conftest import leftover_tasks
from http_server import LocalServer, serve

from conveyor import Failure, single_task

httpx = pytest.importorskip("httpx")
anyio = pytest.importorskip("anyio")

MODES = ["ordered", "as_completed"]


def run(task: Any, items: Any, mode: str) -> Any:
    """The stream of ``task`` over ``items`` in execution mode ``mode``."""
    return task(items) if mode == "ordered" else task.as_completed(items)


def assert_noted(exc: BaseException) -> None:
    notes = getattr(exc, "__notes__", [])
    assert any(note.startswith("conveyor: raised by task") for note in notes), notes


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with serve() as local:
        yield local


@dataclasses.dataclass(frozen=True)
class Http:
    """One real client: ``get_json(url)`` raises for an error status."""

    name: str
    get_json: Callable[[str], Awaitable[Any]]
    status_error: type[Exception]
    dropped_error: type[Exception]


@pytest.fixture(params=["aiohttp", "httpx"])
async def http(request: pytest.FixtureRequest, server: LocalServer) -> AsyncIterator[Http]:
    # Depends on ``server`` so that the client is closed before the server stops.
    if request.param == "aiohttp":
        async with aiohttp.ClientSession() as session:

            async def aiohttp_get_json(url: str) -> Any:
                async with session.get(url) as response:
                    response.raise_for_status()
                    return await response.json()

            yield Http(
                "aiohttp",
                aiohttp_get_json,
                aiohttp.ClientResponseError,
                aiohttp.ServerDisconnectedError,
            )
    else:
        async with httpx.AsyncClient() as client:

            async def httpx_get_json(url: str) -> Any:
                response = await client.get(url)
                response.raise_for_status()
                return response.json()

            yield Http("httpx", httpx_get_json, httpx.HTTPStatusError, httpx.RemoteProtocolError)


# -- asyncio semantics inside a task --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_current_task_is_a_real_stable_task(mode: str) -> None:
    consumer = asyncio.current_task()

    @single_task
    async def probe(x: int) -> tuple[int, Any, Any]:
        before = asyncio.current_task()
        await asyncio.sleep(0.02)  # all calls overlap
        return x, before, asyncio.current_task()

    async with asyncio.timeout(20):
        results = await run(probe, range(5), mode).collect()
    assert sorted(x for x, _, _ in results) == list(range(5))
    problems = set()
    for _, before, after in results:
        if not isinstance(before, asyncio.Task):
            problems.add(f"current_task() before the first await is a {type(before).__name__}")
        try:
            weakref.ref(before)
        except TypeError as exc:
            problems.add(f"weakref.ref(current_task()): {exc}")
        if before is not after:
            problems.add("current_task() is another object after the first await")
        if consumer in (before, after):
            problems.add("current_task() is the consumer's task")
    assert not problems, sorted(problems)
    assert len({id(before) for _, before, _ in results}) == 5  # overlapping calls, own tasks


@pytest.mark.parametrize("how", ["timeout", "wait_for"])
async def test_asyncio_timeout_inside_a_task(how: str) -> None:
    @single_task
    async def timed(x: int) -> tuple[str, int]:
        try:
            if how == "timeout":
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(1)
            else:
                await asyncio.wait_for(asyncio.sleep(1), 0.05)
        except TimeoutError:
            return "timed out", x
        return "not timed out", x

    @single_task
    async def other(result: tuple[str, int]) -> tuple[str, int]:
        await asyncio.sleep(0.001)
        return result

    async with asyncio.timeout(20):  # this hung on Python 3.14
        results = await (timed | other)(range(6)).collect()
    assert results == [("timed out", x) for x in range(6)]


async def test_task_group_inside_a_task() -> None:
    async def child(x: int, i: int) -> int:
        await asyncio.sleep(0.01 * i)
        return x * 10 + i

    async def failing(x: int) -> None:
        await asyncio.sleep(0.02)
        raise ValueError(x)

    @single_task
    async def fan_out(x: int) -> Any:
        slow = None
        try:
            async with asyncio.TaskGroup() as group:
                children = [group.create_task(child(x, i)) for i in range(3)]
                if x % 2:
                    slow = group.create_task(asyncio.sleep(1))
                    group.create_task(failing(x))
        except ExceptionGroup as error:
            assert slow is not None and [type(e) for e in error.exceptions] == [ValueError]
            return "child failed", slow.cancelled()
        return tuple(c.result() for c in children)

    async with asyncio.timeout(20):
        results = await fan_out(range(4)).collect()
    assert results == [(0, 1, 2), ("child failed", True), (20, 21, 22), ("child failed", True)]


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def test_context_vars_are_private_to_a_call() -> None:
    token = VAR.set("consumer")
    try:

        @single_task
        async def first(x: int) -> tuple[int, str, str]:
            seen = VAR.get()
            VAR.set(f"call {x}")
            await asyncio.sleep(0.01 * (x % 3))
            return x, seen, VAR.get()

        @single_task
        async def second(r: tuple[int, str, str]) -> tuple[int, str, str, str]:
            seen = VAR.get()
            await asyncio.sleep(0)
            return (*r, seen)

        async with asyncio.timeout(20):
            results = await (first | second)(range(6)).collect()
        assert results == [(x, "consumer", f"call {x}", "consumer") for x in range(6)]
        assert VAR.get() == "consumer"
    finally:
        VAR.reset(token)


async def test_anyio_inside_a_task() -> None:
    @single_task
    async def with_anyio(x: int) -> tuple[int, bool, bool, list[int]]:
        with anyio.move_on_after(0.02) as scope:  # before the call's first await
            await anyio.sleep(1)
        try:
            with anyio.fail_after(0.02):
                await anyio.sleep(1)
            failed = False
        except TimeoutError:
            failed = True
        done: list[int] = []

        async def child(i: int) -> None:
            await anyio.sleep(0.01 * i)
            done.append(i)

        async with anyio.create_task_group() as group:
            for i in range(3):
                group.start_soon(child, i)
        return x, scope.cancelled_caught, failed, done

    async with asyncio.timeout(20):
        results = await with_anyio(range(4)).collect()
    assert results == [(x, True, True, [0, 1, 2]) for x in range(4)]


# -- real HTTP clients inside tasks -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_fetch_with_concurrency_limit(server: LocalServer, http: Http, mode: str) -> None:
    @single_task(concurrency_limit=10)
    async def fetch(n: int) -> Any:
        return await http.get_json(f"{server.url}/item/{n}?delay={(n % 5) * 0.005}")

    async with asyncio.timeout(20):
        results = await run(fetch, range(50), mode).collect()
    if mode == "as_completed":
        results.sort(key=lambda result: result["n"])
    assert results == [{"n": n} for n in range(50)]
    assert server.stats.total == 50
    assert 1 < server.stats.peak <= 10


async def test_per_call_timeout_emits_failures(server: LocalServer, http: Http) -> None:
    @single_task(timeout=0.2, on_error="emit")
    async def fetch(n: int) -> Any:
        return await http.get_json(f"{server.url}/slow" if n % 2 else f"{server.url}/item/{n}")

    async with asyncio.timeout(20):
        results = await fetch(range(4)).collect()
    assert results[0::2] == [{"n": 0}, {"n": 2}]
    for n, failure in zip([1, 3], results[1::2], strict=True):
        assert isinstance(failure, Failure), failure
        assert failure.item == n
        assert isinstance(failure.exception, TimeoutError), repr(failure.exception)
    assert await server.wait_idle() == 0  # the timed-out requests were abandoned


async def test_retries_on_error_status(server: LocalServer, http: Http) -> None:
    @single_task(retry_attempts=3, retry_delay=0.01, retry_on=http.status_error)
    async def fetch(n: int) -> Any:
        return await http.get_json(f"{server.url}/flaky/{n}?fail=2")

    async with asyncio.timeout(20):
        results = await fetch(range(5)).collect()
    assert results == [{"n": n} for n in range(5)]
    assert server.stats.flaky_failures == {n: 2 for n in range(5)}
    assert server.stats.total == 15


async def test_error_status_reaches_the_consumer(server: LocalServer, http: Http) -> None:
    @single_task
    async def fetch(code: int) -> Any:
        return await http.get_json(f"{server.url}/status/{code}")

    async with asyncio.timeout(20):
        with pytest.raises(http.status_error) as info:
            await fetch([200, 404, 200]).collect()
    assert "404" in str(info.value)
    assert_noted(info.value)


async def test_asyncio_timeout_around_a_request(server: LocalServer, http: Http) -> None:
    @single_task
    async def fetch_or_fallback(n: int) -> Any:
        try:
            async with asyncio.timeout(0.1):
                return await http.get_json(f"{server.url}/slow")
        except TimeoutError:
            return await http.get_json(f"{server.url}/item/{n}")  # the client still works

    async with asyncio.timeout(20):
        results = await fetch_or_fallback(range(4)).collect()
    assert results == [{"n": n} for n in range(4)]
    assert await server.wait_idle() == 0


async def test_dropped_connection_is_the_clients_own_error(server: LocalServer, http: Http) -> None:
    @single_task
    async def fetch(n: int) -> Any:
        return await http.get_json(f"{server.url}/drop" if n == 2 else f"{server.url}/item/{n}")

    async with asyncio.timeout(20):
        with pytest.raises(http.dropped_error) as info:
            await fetch(range(4)).collect()
    assert type(info.value) is http.dropped_error
    assert_noted(info.value)
    assert await server.wait_idle() == 0


class Leave(Exception):
    pass


@pytest.mark.parametrize("leave", ["break", "aclose", "raise"])
async def test_leaving_early_abandons_requests(server: LocalServer, http: Http, leave: str) -> None:
    def delay(n: int) -> float:  # three quick results, then long requests
        return 0.01 * (n + 1) if n < 3 else 5.0 + (n % 4)

    @single_task
    async def fetch(n: int) -> Any:
        return await http.get_json(f"{server.url}/item/{n}?delay={delay(n)}")

    got: list[Any] = []

    async def take_three(stream: Any) -> None:
        async for result in stream:
            got.append(result)
            if len(got) == 3:
                deadline = time.monotonic() + 2
                while server.stats.in_flight < 20 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert server.stats.in_flight >= 20  # many requests in flight
                if leave == "raise":
                    raise Leave
                break

    async with asyncio.timeout(20):
        started = time.monotonic()
        if leave == "aclose":
            stream = fetch(range(40))
            try:
                await take_three(stream)
            finally:
                await stream.aclose()
        else:
            with pytest.raises(Leave) if leave == "raise" else contextlib.nullcontext():
                async with fetch(range(40)) as stream:
                    await take_three(stream)
        assert time.monotonic() - started < 4, "leaving waited for the requests in flight"
    assert got == [{"n": n} for n in range(3)]
    assert leftover_tasks() == []
    assert await server.wait_idle() == 0, "requests still running on the server"
