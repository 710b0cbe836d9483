"""Retry-After: a server's ``Retry-After`` is a retry's delay (``retry_after=`` on tasks).

The delays, exactly, on looptime's virtual clock (with the exceptions aiohttp and httpx
raise, made as they make them); against the real server of tests/http_server.py
(``/status/429?retry_after=...``), on the real clock with margins: the header's seconds
and its HTTP-date form, read from aiohttp's and httpx's own exceptions.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from http_server import LocalServer, serve
from multidict import CIMultiDict, CIMultiDictProxy

import conveyor
from conveyor import Failure, single_task
from conveyor.retry_after import parse_retry_after, read_retry_after

httpx = pytest.importorskip("httpx")


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with serve() as local:
        yield local


def too_many(retry_after: str | None) -> aiohttp.ClientResponseError:
    """A 429 as aiohttp's ``raise_for_status`` raises it (with the response's headers)."""
    headers = CIMultiDict() if retry_after is None else CIMultiDict({"Retry-After": retry_after})
    info = aiohttp.RequestInfo(
        url=aiohttp.client.URL("http://example.test/x"),
        method="GET",
        headers=CIMultiDictProxy(CIMultiDict()),
        real_url=aiohttp.client.URL("http://example.test/x"),
    )
    return aiohttp.ClientResponseError(
        info, (), status=429, message="Too Many Requests", headers=CIMultiDictProxy(headers)
    )


class Flaky:
    """Fails its first ``fails`` calls with ``error()``; records the calls' loop times."""

    def __init__(self, error: Any, fails: int = 1) -> None:
        self.error = error
        self.fails = fails
        self.calls: list[float] = []

    async def __call__(self, x: int) -> int:
        self.calls.append(asyncio.get_running_loop().time())
        if len(self.calls) <= self.fails:
            raise self.error()
        return x


def gaps(calls: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(calls)]


RETRIES: dict[str, Any] = dict(retry_attempts=3, retry_delay=10.0, retry_jitter=0.0)
"""A backoff of 10 s, then 20 s: far from any Retry-After of the tests."""


@pytest.mark.looptime
async def test_retry_after_2_delays_the_retry_by_2_seconds() -> None:
    flaky = Flaky(lambda: too_many("2"), fails=2)
    assert await single_task(**RETRIES)(flaky)([1]).collect() == [1]
    assert gaps(flaky.calls) == [2.0, 2.0]


@pytest.mark.looptime
async def test_an_http_date_is_seconds_from_now_on_the_wall_clock() -> None:
    when = email.utils.formatdate(time.time() + 5, usegmt=True)  # (whole seconds)
    flaky = Flaky(lambda: too_many(when))
    await single_task(**RETRIES)(flaky)([1]).collect()
    (gap,) = gaps(flaky.calls)
    assert 3.9 <= gap <= 5.0


@pytest.mark.looptime
async def test_capped_by_retry_max_delay() -> None:
    flaky = Flaky(lambda: too_many("3600"))
    task = single_task(retry_attempts=2, retry_delay=1.0, retry_jitter=0, retry_max_delay=7.0)
    await task(flaky)([1]).collect()
    assert gaps(flaky.calls) == [7.0]  # (the backoff alone: 1 s)


@pytest.mark.looptime
async def test_no_header_falls_back_to_the_backoff() -> None:
    flaky = Flaky(lambda: too_many(None), fails=2)
    await single_task(**RETRIES)(flaky)([1]).collect()
    assert gaps(flaky.calls) == [10.0, 20.0]
    flaky = Flaky(lambda: too_many("garbage"))
    await single_task(**RETRIES)(flaky)([1]).collect()
    assert gaps(flaky.calls) == [10.0]


@pytest.mark.looptime
async def test_retry_after_none_ignores_the_header() -> None:
    flaky = Flaky(lambda: too_many("2"))
    await single_task(**RETRIES, retry_after=None)(flaky)([1]).collect()
    assert gaps(flaky.calls) == [10.0]


@pytest.mark.looptime
async def test_a_custom_retry_after() -> None:
    class Busy(Exception):
        def __init__(self, wait: float | None) -> None:
            self.wait = wait

    waits = iter([3.5, None])
    flaky = Flaky(lambda: Busy(next(waits)), fails=2)
    task = single_task(**RETRIES, retry_after=lambda exc: exc.wait)(flaky)
    await task([1]).collect()
    assert gaps(flaky.calls) == [3.5, 20.0]  # (None: the backoff of the second retry)


@pytest.mark.looptime
async def test_only_retried_exceptions_wait_and_the_last_attempt_does_not() -> None:
    flaky = Flaky(lambda: too_many("2"), fails=5)
    task = single_task(**RETRIES, on_error="emit")(flaky)
    loop = asyncio.get_running_loop()
    start = loop.time()
    (failure,) = await task([1]).collect()
    assert isinstance(failure, Failure) and failure.attempts == 3
    assert loop.time() - start == 4.0  # two retries of 2 s, no wait after the last
    flaky = Flaky(lambda: too_many("2"))
    await single_task(**RETRIES, retry_on=KeyError, on_error="emit")(flaky)([1]).collect()
    assert len(flaky.calls) == 1


@pytest.mark.looptime
async def test_a_bad_value_from_retry_after_fails_the_run_naming_it() -> None:
    flaky = Flaky(lambda: ValueError("x"))
    task = single_task(**RETRIES, retry_after=lambda exc: "soon")(flaky)
    with pytest.raises(TypeError, match=r"retry_after returned 'soon' for ValueError"):
        await task([1]).collect()


def test_bad_option_is_refused_when_the_task_is_made() -> None:
    with pytest.raises(TypeError, match=r"retry_after must be a function of the exception"):
        single_task(retry_after=2.0)  # type: ignore[call-overload]


def test_parse() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-1") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00", now) is None  # (no zone)
    assert read_retry_after(ValueError()) is None

    class Response:
        def __init__(self) -> None:
            self.headers = {"retry-after": "4"}

    class WithResponse(Exception):
        response = Response()

    assert read_retry_after(WithResponse()) == 4.0
    assert conveyor.read_retry_after is read_retry_after


# -- against the real server -------------------------------------------------------------


async def test_aiohttp_against_the_server_seconds_and_http_date(server: LocalServer) -> None:
    async with aiohttp.ClientSession(raise_for_status=True) as session:

        @single_task(retry_attempts=2, retry_delay=30.0, on_error="emit")
        async def fetch(query: str) -> Any:
            async with session.get(f"{server.url}/status/429", params={"retry_after": query}):
                return None

        date = email.utils.formatdate(time.time() + 2, usegmt=True)
        started = time.monotonic()
        results = await fetch(["1", date]).collect()
    assert time.monotonic() - started < 10  # (not the backoff's 30 s)
    assert all(isinstance(r, Failure) and r.exception.status == 429 for r in results)
    arrivals = sorted(entry.arrived for entry in server.stats.requests_for("/status/429"))
    assert len(arrivals) == 4
    # Two calls at once, each retried once: after 1 s, and at the date (in 1 to 2 s: an
    # HTTP date has whole seconds).
    assert all(0.95 <= retry - arrivals[0] <= 3.0 for retry in arrivals[2:])


async def test_httpx_against_the_server(server: LocalServer) -> None:
    async with httpx.AsyncClient() as client:

        @single_task(retry_attempts=2, retry_delay=30.0, on_error="emit")
        async def fetch(n: int) -> Any:
            response = await client.get(f"{server.url}/status/503", params={"retry_after": "1"})
            response.raise_for_status()

        started = time.monotonic()
        (failure,) = await fetch([1]).collect()
    assert 0.95 <= time.monotonic() - started < 10
    assert isinstance(failure.exception, httpx.HTTPStatusError)
    assert read_retry_after(failure.exception) == 1.0
    log = server.stats.requests_for("/status/503")
    assert len(log) == 2 and 0.95 <= log[1].arrived - log[0].arrived < 5
