"""A real aiohttp.web server on 127.0.0.1 (a free port) for tests with real HTTP clients.

The server runs its own event loop in a thread of its own, so its tasks never show up in
the test's loop (the structured-concurrency checks of conftest stay exact) and a stuck
pipeline cannot stall it. ``async with serve() as server:`` gives ``server.url`` and
``server.stats``.

Endpoints:

- ``/item/{n}?delay=s``: sleeps ``s`` seconds (default 0), then returns ``{"n": n}``;
- ``/flaky/{n}?fail=k``: 500 the first ``k`` times for this ``n``, then ``{"n": n}``;
- ``/status/{code}``: ``{"status": code}`` with that status;
- ``/slow``: sleeps 30 s (clients are meant to time out first);
- ``/drop``: closes the connection without sending any response.

Handlers are cancelled when their client goes away (``handler_cancellation=True``), and a
middleware counts requests in progress and in all (in try/finally), so a test can check
that a request abandoned by its client is no longer running on the server.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

SLOW_SECONDS = 30.0


@dataclasses.dataclass
class ServerStats:
    """Counters of the server (written by the server's thread only)."""

    in_flight: int = 0
    total: int = 0
    peak: int = 0
    flaky_failures: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )


@dataclasses.dataclass(frozen=True)
class LocalServer:
    url: str
    stats: ServerStats

    async def wait_idle(self, timeout: float = 2.0) -> int:
        """Poll until no request is in progress; the number still in progress at the end."""
        deadline = time.monotonic() + timeout
        while self.stats.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.stats.in_flight


def make_app(stats: ServerStats) -> web.Application:
    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        stats.in_flight += 1
        stats.total += 1
        stats.peak = max(stats.peak, stats.in_flight)
        try:
            return await handler(request)
        finally:
            stats.in_flight -= 1

    async def item(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        await asyncio.sleep(float(request.query.get("delay", 0)))
        return web.json_response({"n": n})

    async def flaky(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if stats.flaky_failures[n] < int(request.query.get("fail", 1)):
            stats.flaky_failures[n] += 1
            return web.Response(status=500, text="flaky")
        return web.json_response({"n": n})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.json_response({"status": code}, status=code)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_SECONDS)
        return web.Response(text="too late")

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()  # the client sees the connection end, with no response
        await asyncio.sleep(SLOW_SECONDS)  # cancelled when the connection is lost
        raise AssertionError("unreachable")

    app = web.Application(middlewares=[count])
    app.add_routes(
        [
            web.get("/item/{n}", item),
            web.get("/flaky/{n}", flaky),
            web.get("/status/{code}", status),
            web.get("/slow", slow),
            web.get("/drop", drop),
        ]
    )
    return app


def _serve_in_thread(
    stats: ServerStats,
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event, str]],
) -> None:
    async def main() -> None:
        runner = web.AppRunner(
            make_app(stats), handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            stop = asyncio.Event()
            started.set_result((asyncio.get_running_loop(), stop, f"http://{host}:{port}"))
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except BaseException as exc:
        if not started.done():
            started.set_exception(exc)
        raise


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[LocalServer]:
    """Run the server (in its own thread and loop) for the duration of the block."""
    stats = ServerStats()
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event, str]]
    started = concurrent.futures.Future()
    thread = threading.Thread(
        target=_serve_in_thread, args=(stats, started), name="test-http-server", daemon=True
    )
    thread.start()
    try:
        loop, stop, url = await asyncio.wrap_future(started)
        try:
            yield LocalServer(url, stats)
        finally:
            loop.call_soon_threadsafe(stop.set)
    finally:
        while thread.is_alive():  # the server's clean-up takes at most ~1 s
            await asyncio.sleep(0.01)
        thread.join()
