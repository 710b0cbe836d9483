"""Three endpoints as one stream: ``conveyor.merge``.

Three paginated endpoints ("orders", "refunds", "invoices") each give their records as an
async generator that fetches one page at a time. ``conveyor.merge`` makes them one input:
the pipeline gets records as pages arrive, the endpoints taking turns, so the slow
"invoices" endpoint never holds back the two fast ones. Each endpoint is read lazily: a
page is fetched only when the run has room for its records (its window), and when the
run ends (here, after the first 40 records) every endpoint's generator is closed, its
``finally`` runs, and no request is left running.

The script serves the endpoints itself, on 127.0.0.1 with a free port, so it runs
offline.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

import conveyor
from conveyor import single_task

PAGES = 20  # pages per endpoint
PER_PAGE = 5
DELAY = {"orders": 0.002, "refunds": 0.004, "invoices": 0.05}  # the server's latency
pages_served: Counter[str] = Counter()
closed: list[str] = []


async def page(request: web.Request) -> web.Response:
    kind, number = request.match_info["kind"], int(request.match_info["page"])
    pages_served[kind] += 1
    await asyncio.sleep(DELAY[kind])
    records = [{"kind": kind, "id": number * PER_PAGE + i} for i in range(PER_PAGE)]
    return web.json_response({"records": records, "last": number == PAGES - 1})


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes([web.get("/{kind}/{page}", page)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def endpoint(session: aiohttp.ClientSession, base: str, kind: str) -> AsyncIterator[dict]:
    """An endpoint's records, one page fetched at a time."""
    try:
        number = 0
        while True:
            async with session.get(f"{base}/{kind}/{number}") as response:
                body = await response.json()
            for record in body["records"]:
                yield record
            if body["last"]:
                return
            number += 1
    finally:
        closed.append(kind)


@single_task
async def enrich(record: dict) -> str:
    await asyncio.sleep(0.001)  # (a lookup per record)
    return f"{record['kind']}#{record['id']}"


async def main() -> None:
    async with local_server() as base, aiohttp.ClientSession() as session:
        merged = conveyor.merge(*(endpoint(session, base, kind) for kind in DELAY))
        results = []
        async with conveyor.Pipeline([enrich]).with_context(max_in_flight=8)(merged) as stream:
            async for result in stream:
                results.append(result)
                if len(results) == 40:
                    break
    kinds = Counter(result.split("#")[0] for result in results)
    print(f"first 40 records by endpoint: {dict(kinds)}")
    print(f"pages fetched: {dict(pages_served)} (of {PAGES} each)")
    print(f"endpoints closed: {sorted(closed)}")
    # The fast endpoints were not held back by the slow one...
    assert kinds["orders"] + kinds["refunds"] > kinds["invoices"]
    # ...every endpoint was read lazily (a few pages, not all of them), and all were closed.
    assert all(pages_served[kind] < PAGES for kind in DELAY), pages_served
    assert sorted(closed) == sorted(DELAY)


if __name__ == "__main__":
    conveyor.run(main())
