"""A real aiohttp.web server on 127.0.0.1 (a free port) for tests with real HTTP clients.

The server runs its own event loop in a thread of its own, so its tasks never show up in
the test's loop (the structured-concurrency checks of conftest stay exact) and a stuck
pipeline cannot stall it. ``async with serve() as server:`` gives ``server.url`` and
``server.stats``.

Endpoints:

- ``/item/{n}?delay=s``: sleeps ``s`` seconds (default 0), then returns ``{"n": n}``;
- ``/flaky/{n}?fail=k``: 500 the first ``k`` times for this ``n``, then ``{"n": n}``;
- ``/status/{code}?retry_after=v``: ``{"status": code}`` with that status (and a
  ``Retry-After: v`` header when ``retry_after`` is given: seconds or an HTTP date);
- ``/service/{n}``: ``{"n": n}``, or 503 while ``stats.outage`` is true (a test switches
  it on and off: a service that goes down and comes back);
- ``/slow``: sleeps 30 s (clients are meant to time out first);
- ``/drop``: closes the connection without sending any response;
- ``/api/{n}``: ``{"n": n, "title": ..., "words": [...]}`` after a few ms, with a failure
  chosen by ``n % 10`` (see :func:`api_behaviour`): 404; 500 once; the connection dropped
  once; too slow once (sleeps 30 s); 500 always; the connection dropped twice;
- ``/site/{page}``: an HTML page of a small generated site (:class:`Site`) with links to
  other pages, some to pages that do not exist (404); some pages answer 500, drop the
  connection or are too slow on their *first* request only;
- ``/cap/{n}``: a service of limited capacity (:class:`Capacity`, ``server.capacity``,
  settable while the server runs): with up to ``capacity.n`` of these requests in
  progress it answers after ``capacity.base`` seconds; past that, each takes
  ``base * in_progress / n`` (the service's throughput stays ``n / base``, the requests
  queue); past ``capacity.shed`` in progress it answers 429 at once, with
  ``Retry-After: 1``.

"Once" is per path and counted by the server (``stats.by_path``), so a run is
reproducible: the second request for the path gets the normal answer. Every request is
logged in ``stats.log`` (its arrival time on ``time.monotonic()``, the clock of the
test's process too, its path and the status sent, ``None`` if none was).

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
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

SLOW_SECONDS = 30.0


@dataclasses.dataclass
class LoggedRequest:
    """One request as the server saw it."""

    arrived: float  # time.monotonic() when the server started handling it
    path: str
    status: int | None = None  # the status sent; None: no response (dropped, abandoned)


@dataclasses.dataclass
class ServerStats:
    """Counters of the server (written by the server's thread only)."""

    in_flight: int = 0
    total: int = 0
    peak: int = 0
    flaky_failures: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )
    log: list[LoggedRequest] = dataclasses.field(default_factory=list)
    by_path: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    outage: bool = False  # /service/ answers 503 while true (set by the test's thread)

    def requests_for(self, prefix: str) -> list[LoggedRequest]:
        """The logged requests whose path starts with ``prefix``, in arrival order."""
        return [entry for entry in list(self.log) if entry.path.startswith(prefix)]


# -- the flat API: /api/{n} ---------------------------------------------------------------

API_BEHAVIOURS = {
    1: "not found",  # 404 every time: a client error, not worth retrying
    2: "500 once",
    3: "drop once",  # the connection closed with no response, the first time
    4: "slow once",  # sleeps SLOW_SECONDS the first time: the client times out
    5: "500 always",
    6: "drop twice",  # aiohttp resends a GET once by itself: the second drop reaches the caller
}


def api_behaviour(n: int) -> str:
    """What ``/api/{n}`` does: ``"ok"`` or one of ``API_BEHAVIOURS``' values."""
    return API_BEHAVIOURS.get(n % 10, "ok")


def api_delay(n: int) -> float:
    """The latency ``/api/{n}`` adds to a normal answer: 5 to 25 ms."""
    return 0.005 * (1 + n * 7 % 5)


# -- the capacity-limited service: /cap/{n} ------------------------------------------------


@dataclasses.dataclass
class Capacity:
    """What ``/cap/{n}`` serves at once (see the module's docstring); set its fields from
    the test (e.g. halve ``n`` and ``shed`` mid-run): the server reads them per request."""

    n: int = 16  # requests in progress at full speed
    shed: int = 24  # more in progress than this: 429
    base: float = 0.1  # seconds a request takes with at most ``n`` in progress
    in_progress: int = 0  # (the server's)
    shed_count: int = 0  # 429s sent

    def routes(self) -> list[web.RouteDef]:
        async def cap(request: web.Request) -> web.Response:
            if self.in_progress >= self.shed:
                self.shed_count += 1
                return web.Response(status=429, text="busy", headers={"Retry-After": "1"})
            self.in_progress += 1
            try:
                await asyncio.sleep(self.base * max(1.0, self.in_progress / self.n))
            finally:
                self.in_progress -= 1
            return web.json_response({"n": int(request.match_info["n"])})

        return [web.get("/cap/{n}", cap)]


# -- the site: /site/{page} ---------------------------------------------------------------

PAGE_BEHAVIOURS = ("ok", "500 once", "drop once", "slow once")


@dataclasses.dataclass(frozen=True)
class Site:
    """A deterministic web of ``pages`` pages (0 is the root) generated from ``seed``
    (the default seed's root reaches every kind of failure).

    ``links[p]`` are the pages ``p`` links to, in order, repeats included; a link to a
    page ``>= pages`` is a link to a page that does not exist (404). ``behaviour[p]`` is
    what page ``p`` does on its first request (``PAGE_BEHAVIOURS``). Some pages are not
    reachable from the root at all.
    """

    pages: int
    links: dict[int, list[int]]
    behaviour: dict[int, str]

    @classmethod
    def generate(cls, seed: int = 10, pages: int = 40) -> Site:
        rng = random.Random(seed)
        links: dict[int, list[int]] = {}
        for page in range(pages):
            # Most links point to a few pages "nearby", so that part of the site (the
            # last pages, which only link backwards) stays unreachable from the root.
            targets = [rng.randrange(0, min(pages, page + 6)) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.3:
                targets.append(targets[0])  # the same link twice on a page
            if rng.random() < 0.2:
                targets.append(pages + rng.randrange(5))  # a broken link
            links[page] = targets
        # Keep the last pages out of reach: nobody links to a page above 3/4 of the site.
        cut = pages * 3 // 4
        for page in range(pages):
            links[page] = [t for t in links[page] if t < cut or t >= pages]
        behaviour = {page: "ok" for page in range(pages)}
        for page in range(1, pages):
            if rng.random() < 0.25:
                behaviour[page] = rng.choice(PAGE_BEHAVIOURS[1:])
        return cls(pages, links, behaviour)

    def path(self, page: int) -> str:
        return f"/site/{page}"

    def reachable(self, root: int = 0) -> set[int]:
        """The pages a crawl from ``root`` finds: existing ones and broken links alike."""
        seen = {root}
        todo = [root]
        while todo:
            page = todo.pop()
            for target in self.links.get(page, []):
                if target not in seen:
                    seen.add(target)
                    if target < self.pages:
                        todo.append(target)
        return seen

    def html(self, page: int) -> str:
        anchors = "".join(
            f'<li><a href="{self.path(t)}">page {t}</a></li>' for t in self.links[page]
        )
        return (
            f"<!doctype html><html><head><title>Page {page}</title></head>"
            f"<body><h1>Page {page}</h1><ul>{anchors}</ul></body></html>"
        )


@dataclasses.dataclass(frozen=True)
class LocalServer:
    url: str
    stats: ServerStats
    site: Site = dataclasses.field(default_factory=Site.generate)  # what /site/ serves
    capacity: Capacity = dataclasses.field(default_factory=Capacity)  # what /cap/ serves

    async def wait_idle(self, timeout: float = 2.0) -> int:
        """Poll until no request is in progress; the number still in progress at the end."""
        deadline = time.monotonic() + timeout
        while self.stats.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.stats.in_flight


def make_app(
    stats: ServerStats, site: Site | None = None, capacity: Capacity | None = None
) -> web.Application:
    site = site if site is not None else Site.generate()

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        entry = LoggedRequest(time.monotonic(), request.path)
        stats.log.append(entry)
        stats.by_path[request.path] += 1
        stats.in_flight += 1
        stats.total += 1
        stats.peak = max(stats.peak, stats.in_flight)
        try:
            response = await handler(request)
            entry.status = response.status
            return response
        except web.HTTPException as exc:  # e.g. the router's 404
            entry.status = exc.status
            raise
        finally:
            stats.in_flight -= 1

    def first_time(request: web.Request) -> bool:
        return stats.by_path[request.path] == 1

    async def misbehave(request: web.Request, behaviour: str) -> web.Response | None:
        """The failure ``behaviour`` calls for on this request, or None: answer normally."""
        if behaviour == "not found":
            raise web.HTTPNotFound(text="no such item")
        if behaviour == "500 always" or (behaviour == "500 once" and first_time(request)):
            return web.Response(status=500, text="server error")
        if (behaviour == "drop once" and first_time(request)) or (
            behaviour == "drop twice" and stats.by_path[request.path] <= 2
        ):
            return await drop(request)
        if behaviour == "slow once" and first_time(request):
            return await slow(request)
        return None

    async def api(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        failed = await misbehave(request, api_behaviour(n))
        if failed is not None:
            return failed
        await asyncio.sleep(api_delay(n))
        return web.json_response({"n": n, "title": f"Item {n}", "words": ["item", str(n)] * 3})

    async def site_page(request: web.Request) -> web.Response:
        page = int(request.match_info["page"])
        if not 0 <= page < site.pages:
            raise web.HTTPNotFound(text="no such page")
        failed = await misbehave(request, site.behaviour[page])
        if failed is not None:
            return failed
        await asyncio.sleep(0.002)
        return web.Response(text=site.html(page), content_type="text/html")

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
        retry_after = request.query.get("retry_after")
        headers = None if retry_after is None else {"Retry-After": retry_after}
        return web.json_response({"status": code}, status=code, headers=headers)

    async def service(request: web.Request) -> web.Response:
        if stats.outage:
            return web.Response(status=503, text="service unavailable")
        return web.json_response({"n": int(request.match_info["n"])})

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
            web.get("/service/{n}", service),
            web.get("/slow", slow),
            web.get("/drop", drop),
            web.get("/api/{n}", api),
            web.get("/site/{page}", site_page),
        ]
    )
    app.add_routes((capacity if capacity is not None else Capacity()).routes())
    return app


def _serve_in_thread(
    stats: ServerStats,
    site: Site | None,
    capacity: Capacity,
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event, str]],
) -> None:
    async def main() -> None:
        runner = web.AppRunner(
            make_app(stats, site, capacity),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=0.5,
        )
        await runner.setup()
        try:
            tcp_site = web.TCPSite(runner, "127.0.0.1", 0)
            await tcp_site.start()
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
async def serve(site: Site | None = None) -> AsyncIterator[LocalServer]:
    """Run the server (in its own thread and loop) for the duration of the block.

    ``site`` is the web ``/site/{page}`` serves (default: ``Site.generate()``).
    """
    stats = ServerStats()
    capacity = Capacity()
    site = site if site is not None else Site.generate()
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event, str]]
    started = concurrent.futures.Future()
    thread = threading.Thread(
        target=_serve_in_thread,
        args=(stats, site, capacity, started),
        name="test-http-server",
        daemon=True,
    )
    thread.start()
    try:
        loop, stop, url = await asyncio.wrap_future(started)
        try:
            yield LocalServer(url, stats, site, capacity)
        finally:
            loop.call_soon_threadsafe(stop.set)
    finally:
        while thread.is_alive():  # the server's clean-up takes at most ~1 s
            await asyncio.sleep(0.01)
        thread.join()
