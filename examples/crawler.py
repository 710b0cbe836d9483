"""A crawler, ``fetch | parse | store_batch``, that accounts for every URL.

- ``fetch`` GETs a URL with one ``aiohttp.ClientSession`` per run (a run-scoped resource,
  ``with_resources``), at most 50 requests at once, each attempt given ``TIMEOUT``
  seconds. It retries what may succeed next time -- a 5xx answer, a timeout, a dropped
  connection -- up to 4 attempts with exponential backoff; a 4xx answer is the client's
  mistake and is not retried (``retry_if``). A URL that still fails becomes a
  ``conveyor.Failure`` in its place (``on_error="emit"``), carrying the error.
- ``parse`` turns a JSON body into a :class:`Record`.
- ``store_batch`` stores records 16 at a time (here in a list standing in for a
  database; ``examples/sqlite_sink.py`` writes batches into SQLite).

The consumer sorts every result into "stored" or "failed", and the script checks that
each URL is in exactly one of the two, for the right reason.

The script serves ``/api/{n}`` itself, on 127.0.0.1 with a free port, so it runs offline.
The server misbehaves by ``n % 10``: 1 is not found (404), 2 answers 500 the first time,
3 drops the connection the first time, 4 is too slow the first time, 5 answers 500
every time, 6 drops the connection twice; the others answer after 5 to 25 ms. (aiohttp
itself sends a GET again, once, when the connection closes with no answer: ``fetch``
sees the first drop of 3 as a success, and the second drop of 6 as an error to retry.)
``tests/test_crawl.py`` runs :func:`crawl` against the test suite's server, which
misbehaves the same way, and checks its request log.
"""

import asyncio
import contextlib
import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

import conveyor
from conveyor import Failure, batch_task, single_task

TIMEOUT = 1.0  # seconds per attempt: far above a normal answer, far below a stuck one


# -- the pipeline -----------------------------------------------------------------------------


def worth_retrying(exc: BaseException) -> bool:
    """Retry server errors (5xx), timeouts and dropped connections; never a 4xx answer.

    ``retry_on`` below already limits retries to aiohttp's errors and timeouts; among
    them, an error *status* is worth another try only if the server is to blame.
    """
    return not isinstance(exc, aiohttp.ClientResponseError) or exc.status >= 500


attempts: Counter[str] = Counter()  # attempts per URL, as fetch saw them


@single_task(
    concurrency_limit=50,
    timeout=TIMEOUT,
    retry_attempts=4,  # in all: 1 + 3 retries, after ~0.05 s, ~0.1 s, ~0.2 s
    retry_delay=0.05,
    retry_exponential_backoff=True,
    retry_on=(aiohttp.ClientError, asyncio.TimeoutError),  # dropped connections included
    retry_if=worth_retrying,
    on_error="emit",  # a URL that fails for good becomes a Failure: the run goes on
)
async def fetch(url: str, *, session: aiohttp.ClientSession) -> tuple[str, str]:
    attempts[url] += 1
    async with session.get(url) as response:
        response.raise_for_status()  # 4xx and 5xx raise aiohttp.ClientResponseError
        return url, await response.text()


@dataclasses.dataclass(frozen=True)
class Record:
    url: str
    title: str
    words: int


@single_task
def parse(page: tuple[str, str]) -> Record:
    url, body = page
    data = json.loads(body)
    return Record(url, data["title"], len(data["words"]))


@batch_task(max_size=16, max_wait=0.1)
async def store_batch(records: list[Record], database: list[Record]) -> list[Record]:
    """Store a batch (one "transaction"); the records stored go on to the consumer."""
    await asyncio.sleep(0.001)  # e.g. an INSERT of the whole batch
    database.extend(records)
    return records


def open_session() -> aiohttp.ClientSession:
    """The run's session: one connection pool for all of the run's requests."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50))


@dataclasses.dataclass
class Report:
    stored: dict[str, Record]  # URL -> its record, as the consumer received it
    failed: dict[str, Failure[str]]  # URL -> the Failure that took its place
    database: list[Record]  # what store_batch wrote


async def crawl(
    urls: list[str], session: Callable[[], aiohttp.ClientSession] = open_session
) -> Report:
    """Fetch, parse and store ``urls``; every URL ends up stored or failed."""
    database: list[Record] = []
    pipeline = fetch.with_resources(session=session) | parse | store_batch.with_inputs(database)
    report = Report({}, {}, database)
    async for result in pipeline.as_completed(urls):
        if isinstance(result, Failure):
            report.failed[result.item] = result  # fetch's item: the URL
        else:
            report.stored[result.url] = result
    return report


# -- a local server to crawl ------------------------------------------------------------------

requests: Counter[str] = Counter()  # requests the server received, per path


async def api(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    requests[request.path] += 1
    first = requests[request.path] == 1
    kind = n % 10
    if kind == 1:
        raise web.HTTPNotFound(text="no such item")
    if kind == 5 or (kind == 2 and first):
        return web.Response(status=500, text="server error")
    if (kind == 3 and first) or (kind == 6 and requests[request.path] <= 2):
        assert request.transport is not None
        request.transport.close()  # the client sees the connection end, with no response
    await asyncio.sleep(30 if kind == 4 and first else 0.005 * (1 + n * 7 % 5))
    return web.json_response({"n": n, "title": f"Item {n}", "words": ["item", str(n)] * 3})


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    """Serve /api/{n} on 127.0.0.1 (a free port) for the duration of the block."""
    app = web.Application()
    app.add_routes([web.get("/api/{n}", api)])
    # handler_cancellation: a request its client gave up on stops running on the server
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def main() -> None:
    async with local_server() as base_url:
        urls = [f"{base_url}/api/{n}" for n in range(60)]
        report = await crawl(urls)

    # Every URL is accounted for: stored, or failed -- never both, never neither.
    assert report.stored.keys() | report.failed.keys() == set(urls)
    assert not report.stored.keys() & report.failed.keys()
    assert sorted(r.url for r in report.database) == sorted(report.stored)  # stored once

    def n_of(url: str) -> int:
        return int(url.rsplit("/", 1)[1])

    for url, failure in sorted(report.failed.items(), key=lambda kv: n_of(kv[0])):
        error: Any = failure.exception
        print(f"failed: {url} after {failure.attempts} attempt(s): {error.status} {error.message}")
        assert isinstance(error, aiohttp.ClientResponseError)
        if n_of(url) % 10 == 1:  # 404: not retried
            assert error.status == 404 and failure.attempts == 1
        else:  # 500 every time: retried, then given up
            assert n_of(url) % 10 == 5 and error.status == 500 and failure.attempts == 4
    assert {n_of(url) % 10 for url in report.failed} == {1, 5}

    # 500 once, dropped once or twice, too slow once: retried, and stored.
    for kind, server_saw, fetch_saw in [(2, 2, 2), (3, 2, 1), (4, 2, 2), (6, 3, 2)]:
        for n in range(kind, 60, 10):
            url = f"{base_url}/api/{n}"
            assert url in report.stored
            assert (requests[f"/api/{n}"], attempts[url]) == (server_saw, fetch_saw), n
    assert all(attempts[url] == 1 for url in urls if n_of(url) % 10 in (0, 7, 8, 9))
    print(f"stored {len(report.stored)}, failed {len(report.failed)}, of {len(urls)} URLs")
    retried = {url: n for url, n in attempts.items() if n > 1}
    print(f"fetch retried {len(retried)} URLs; the server saw {sum(requests.values())} requests")


if __name__ == "__main__":
    conveyor.run(main())
