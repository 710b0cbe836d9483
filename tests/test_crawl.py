"""Crawling real HTTP: the crawler examples end to end, and rate limits seen by a server.

Against the real aiohttp server of ``tests/http_server.py`` (its own thread and loop),
whose request log records every request's arrival time, path and status:

- ``examples/crawler.py``'s :func:`crawl` over ``/api/{n}``: every URL is stored or
  failed, never both; 404s fail at once (requested once); 500-once, dropped-once and
  slow-once URLs are retried and stored (requested twice); always-500 URLs fail after 4
  attempts (requested 4 times); a connection dropped twice is resent once by aiohttp
  itself, then retried by conveyor (requested 3 times);
- ``examples/recursive_crawl.py``'s :func:`crawl_site` over the generated ``/site/``:
  it visits exactly the pages reachable from the root, reports the broken links as 404
  failures, requests no page it did not need, and ends by itself; ``max_pages`` caps it;
- ``rate_limit=(20, 0.5)`` with 100 calls allowed at once: no 0.5 s window holds more
  than 20 of the limiter's admissions (exactly), nor of the calls' first lines or the
  server's arrivals (with a tolerance for scheduling jitter, explained there);
- ``rate_limit=(10, 1.0)`` with ``timeout=0.5``: waiting for a turn is not part of the
  call, so 20 calls of 50 ms all succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from http_server import API_BEHAVIOURS, LocalServer, api_behaviour, serve

from conveyor import Failure, single_task
from conveyor.rate import Window

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (its ``main()`` does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crawler = load_example("crawler")
recursive = load_example("recursive_crawl")


def statuses(server: LocalServer, path: str) -> list[int | None]:
    """The statuses the server sent for ``path``, in order (None: no response)."""
    return [entry.status for entry in server.stats.requests_for(path) if entry.path == path]


def path_of(url: str) -> str:
    return urlsplit(url).path


# -- the crawler: every URL accounted for ---------------------------------------------------


async def test_crawler_accounts_for_every_url() -> None:
    crawler.attempts.clear()
    async with serve() as server:
        urls = [f"{server.url}/api/{n}" for n in range(60)]
        async with asyncio.timeout(30):
            report = await crawler.crawl(urls)
        assert await server.wait_idle() == 0  # no request left running on the server

    assert report.stored.keys() | report.failed.keys() == set(urls)
    assert not report.stored.keys() & report.failed.keys()
    assert sorted(record.url for record in report.database) == sorted(report.stored)

    problems = []
    for n, url in enumerate(urls):
        behaviour = api_behaviour(n)
        seen = statuses(server, path_of(url))
        tries = crawler.attempts[url]
        if behaviour == "not found":
            failure = report.failed.get(url)
            error = getattr(failure, "exception", None)
            ok = isinstance(error, aiohttp.ClientResponseError) and error.status == 404
            ok = ok and failure is not None and failure.attempts == 1 and seen == [404]
        elif behaviour == "500 always":
            failure = report.failed.get(url)
            error = getattr(failure, "exception", None)
            ok = isinstance(error, aiohttp.ClientResponseError) and error.status == 500
            ok = ok and failure is not None and failure.attempts == 4 and seen == [500] * 4
        else:
            record = report.stored.get(url)
            ok = record is not None and record.title == f"Item {n}" and record.words == 6
            expected_seen = {
                "ok": [200],
                "500 once": [500, 200],
                "drop once": [None, 200],
                "drop twice": [None, None, 200],
                "slow once": [None, 200],  # the first abandoned by the client's timeout
            }[behaviour]
            # aiohttp resends a GET once by itself when the connection closes with no
            # answer: fetch sees a single drop as a success, and a second drop as an error.
            expected_tries = {"ok": 1, "500 once": 2, "slow once": 2}
            expected_tries |= {"drop once": 1, "drop twice": 2}
            ok = ok and seen == expected_seen and tries == expected_tries[behaviour]
        if not ok:
            problems.append((n, behaviour, seen, tries, report.failed.get(url)))
    assert not problems, problems
    assert {api_behaviour(n) for n in range(60)} == {"ok", *API_BEHAVIOURS.values()}


# -- the recursive crawl: exactly the reachable pages ----------------------------------------


async def test_recursive_crawl_visits_exactly_the_reachable_pages() -> None:
    async with serve() as server:
        site = server.site
        async with asyncio.timeout(30):
            report = await recursive.crawl_site(f"{server.url}/site/0")
        assert await server.wait_idle() == 0

    reachable = site.reachable(0)
    broken = {page for page in reachable if page >= site.pages}
    visited = {path_of(url) for url in report.pages}
    failed = {path_of(url) for url in report.failed}
    assert visited == {site.path(page) for page in reachable - broken}
    assert failed == {site.path(page) for page in broken} and broken
    assert not visited & failed
    for failure in report.failed.values():
        assert isinstance(failure.exception, aiohttp.ClientResponseError)
        assert failure.exception.status == 404 and failure.attempts == 1

    # Each page's links, as parsed, are the site's (repeats included, in order).
    for url, page in report.pages.items():
        number = int(path_of(url).rsplit("/", 1)[1])
        assert [path_of(link) for link in page.links] == [site.path(t) for t in site.links[number]]
    assert page.title.startswith("Page ")

    # The server saw each reachable URL requested once, twice if it failed once; nothing else.
    requested = {entry.path for entry in server.stats.requests_for("/site/")}
    assert requested == visited | failed
    for page in reachable:
        behaviour = "broken" if page in broken else site.behaviour[page]
        expected = {"ok": [200], "broken": [404], "500 once": [500, 200]}.get(
            behaviour, [None, 200]
        )
        assert statuses(server, site.path(page)) == expected, (page, behaviour)
    assert report.feed.accepted == len(reachable)  # repeats and seen URLs were dropped
    assert {site.behaviour[p] for p in reachable - broken} >= {"500 once", "drop once"}


async def test_recursive_crawl_stops_at_its_budget() -> None:
    async with serve() as server:
        async with asyncio.timeout(30):
            report = await recursive.crawl_site(f"{server.url}/site/0", max_pages=5)
    assert len(report.pages) + len(report.failed) == 5
    assert report.feed.accepted == 5 and report.feed.dropped > 0
    assert len({entry.path for entry in server.stats.requests_for("/site/")}) == 5


# -- rate limits, as the server sees them ----------------------------------------------------


def most_in_a_window(times: list[float], width: float) -> int:
    """The largest number of ``times`` in any half-open window ``[t, t + width)``."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


CALLS, PER = 20, 0.5
# Three clocks, three checks:
# - the limiter's own admissions (when it let a call start, on the loop's clock) keep the
#   limit exactly: no window of PER holds more than CALLS of them;
# - a call's first line runs a little later, once its task gets its turn on the loop, and
#   that lag varies (the first burst starts while the run is setting up: ~5 ms more than
#   later bursts on an idle machine), so two starts PER apart may run closer than PER;
# - the server stamps arrivals from its one thread as it gets to each request: the 20
#   requests of a burst are read one after another, and one burst may be read faster than
#   the next (the client's thread holds the GIL, the machine is busy), so the k-th
#   arrivals of two bursts can be stamped closer than PER too.
# Lags only ever move two stamps closer by the difference of their lags, so the last two
# checks use windows narrower by JITTER. (Too tolerant they are not: a client without a
# limit puts all 60 requests within a few ms.)
JITTER = 0.05


async def test_rate_limit_seen_by_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    admitted: list[float] = []
    take = Window.take

    def recorded_take(window: Window) -> None:
        take(window)
        admitted.append(window.starts[-1])

    monkeypatch.setattr(Window, "take", recorded_take)
    starts: list[float] = []
    async with serve() as server, aiohttp.ClientSession() as session:
        base = f"{server.url}/item"
        # Open 20 keep-alive connections first, so that no burst pays for connecting.
        warm = await asyncio.gather(*(session.get(f"{base}/{-n}") for n in range(1, 21)))
        for response in warm:
            response.release()  # back to the pool, kept alive
        warmed = len(server.stats.log)

        @single_task(concurrency_limit=100, rate_limit=(CALLS, PER), on_error="emit")
        async def fetch(n: int, *, http: aiohttp.ClientSession) -> Any:
            starts.append(asyncio.get_running_loop().time())
            async with http.get(f"{base}/{n}?delay=0.01") as response:
                response.raise_for_status()
                return await response.json()

        # The warmed session is the run's resource (a factory that lends it, unclosed).
        lend = fetch.with_resources(http=lambda: contextlib.nullcontext(session))
        async with asyncio.timeout(30):
            results = await lend(range(60)).collect()
        arrivals = [entry.arrived for entry in server.stats.log[warmed:]]

    assert results == [{"n": n} for n in range(60)]
    assert len(admitted) == len(starts) == len(arrivals) == 60
    assert most_in_a_window(admitted, PER) <= CALLS, admitted  # exact
    assert max(admitted) - min(admitted) >= 2 * PER  # 60 calls: three turns of 20
    assert most_in_a_window(starts, PER - JITTER) <= CALLS, sorted(starts)
    assert most_in_a_window(arrivals, PER - JITTER) <= CALLS, sorted(arrivals)
    assert max(arrivals) - min(arrivals) >= 2 * PER - JITTER


async def test_rate_limit_waits_are_not_part_of_the_timeout() -> None:
    # The complaint: at 10 calls a second with timeout=0.5, a limiter written
    # inside the call made 15 of 20 calls time out. The limiter's wait comes before the
    # call, so none does.
    async with serve() as server:
        url = f"{server.url}/item"

        @single_task(concurrency_limit=100, rate_limit=(10, 1.0), timeout=0.5, on_error="emit")
        async def fetch(n: int, *, session: aiohttp.ClientSession) -> Any:
            async with session.get(f"{url}/{n}?delay=0.05") as response:
                response.raise_for_status()
                return await response.json()

        began = time.monotonic()
        async with asyncio.timeout(30):
            stream = fetch.with_resources(session=aiohttp.ClientSession)(range(20))
            results = await stream.collect()
        took = time.monotonic() - began
    failures = [r for r in results if isinstance(r, Failure)]
    assert not failures, failures
    assert results == [{"n": n} for n in range(20)]
    assert took >= 1.0  # the second ten waited for their turn
