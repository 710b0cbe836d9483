"""An enrichment that calls two services at once per item: ``conveyor.parallel``.

Each customer record needs two lookups from two services: its address from a "geo"
service and its credit score from a "credit" service. Neither needs the other's answer,
so ``conveyor.parallel(geo, credit, combine=...)`` gives every record to both tasks at
once and joins their answers into one enriched record: each record waits for the slower
of its two calls, not for their sum. The same lookups made one after the other, in one
task, take about twice as long at the same concurrency.

The results come in input order (an ordered run), each branch keeps its own options
(here a concurrency limit per service), and the run's statistics list each branch's
stage. The script serves both services itself, on 127.0.0.1 with a free port, so it runs
offline.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

import conveyor
from conveyor import single_task

CUSTOMERS = list(range(40))
LATENCY = 0.03  # each service's answer takes 30 ms
LIMIT = 8  # requests at once per service
server = {"in_flight": 0, "peak": 0}


async def geo_endpoint(request: web.Request) -> web.Response:
    return await answer({"city": f"city-{int(request.match_info['id']) % 5}"})


async def credit_endpoint(request: web.Request) -> web.Response:
    return await answer({"score": 500 + int(request.match_info["id"]) * 7 % 300})


async def answer(body: dict[str, Any]) -> web.Response:
    server["in_flight"] += 1
    server["peak"] = max(server["peak"], server["in_flight"])
    try:
        await asyncio.sleep(LATENCY)
        return web.json_response(body)
    finally:
        server["in_flight"] -= 1


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes([web.get("/geo/{id}", geo_endpoint), web.get("/credit/{id}", credit_endpoint)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def get(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()


@single_task(concurrency_limit=LIMIT)
async def geo(customer: int, base: str, *, session: aiohttp.ClientSession) -> str:
    return (await get(session, f"{base}/geo/{customer}"))["city"]


@single_task(concurrency_limit=LIMIT)
async def credit(customer: int, base: str, *, session: aiohttp.ClientSession) -> int:
    return (await get(session, f"{base}/credit/{customer}"))["score"]


def enriched(customer: int, city: str, score: int) -> dict[str, Any]:
    """``combine``: the item and each branch's result, in the order of the branches."""
    return {"id": customer, "city": city, "score": score}


@single_task(concurrency_limit=LIMIT)
async def one_after_the_other(
    customer: int, base: str, *, session: aiohttp.ClientSession
) -> dict[str, Any]:
    """The same two lookups, the second started when the first has answered."""
    city = (await get(session, f"{base}/geo/{customer}"))["city"]
    score = (await get(session, f"{base}/credit/{customer}"))["score"]
    return enriched(customer, city, score)


async def main() -> None:
    async with local_server() as base:
        # One session per run for each task (a run-scoped resource), the base URL a side
        # input.
        def client(task: Any) -> Any:
            return task.with_inputs(base).with_resources(session=aiohttp.ClientSession)

        enrich = conveyor.parallel(client(geo), client(credit), combine=enriched)
        sequential_run = client(one_after_the_other)
        # Each way is timed three times, alternately, and its best time kept: the first
        # run of a process pays for what is set up once (imports, connections), and a
        # busy machine can hold either run up; the best of three compares the two ways.
        at_once = in_turn = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            stream = enrich(CUSTOMERS)
            together = await stream.collect()
            at_once = min(at_once, time.perf_counter() - start)

            start = time.perf_counter()
            sequential = await sequential_run(CUSTOMERS).collect()
            in_turn = min(in_turn, time.perf_counter() - start)
        print(stream.stats)

    print(together[:3])
    print(
        f"{len(CUSTOMERS)} customers: {at_once:.2f} s with parallel(geo, credit), "
        f"{in_turn:.2f} s one call after the other ({in_turn / at_once:.1f}x as long)"
    )
    # The same records, in input order, either way...
    assert together == sequential
    assert [record["id"] for record in together] == CUSTOMERS
    assert together[3] == {"id": 3, "city": "city-3", "score": 521}
    # ...both services were called at once (up to their limits each)...
    assert LIMIT < server["peak"] <= 2 * LIMIT, server
    # ...and the records waited for the slower call, not for both: about half the time.
    assert at_once < 0.75 * in_turn, (at_once, in_turn)
    # (Each branch's stage is in the run's statistics, named after the stage.)
    names = [stage.name for stage in stream.stats.stages]
    assert any(name.endswith("/geo") for name in names), names


if __name__ == "__main__":
    conveyor.run(main())
