"""One aiohttp.ClientSession per run: a run-scoped resource.

``fetch.with_resources(session=aiohttp.ClientSession)`` gives every call of ``fetch`` the
same session, as the keyword argument ``session``. conveyor opens it (calls the class)
before the run's first call and closes it when the run ends -- normally, on an error,
on early exit or on cancellation -- once every call of the run has ended. Each run opens
its own session.

The script serves ``/item/{n}`` itself, on 127.0.0.1 with a free port, so it runs
offline. Two of its items misbehave once: item 3 answers 503 to its first request and
item 5 is too slow on its first request; the task's retries and per-call timeout take
care of both.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

import conveyor
from conveyor import single_task

requests: Counter[int] = Counter()  # requests the server received, per item
server = {"in_flight": 0, "peak": 0}


async def item(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    requests[n] += 1
    server["in_flight"] += 1
    server["peak"] = max(server["peak"], server["in_flight"])
    try:
        if n == 3 and requests[n] == 1:
            return web.Response(status=503, text="busy, try again")
        # item 5's first request takes 1 s: longer than the task's timeout
        await asyncio.sleep(1.0 if n == 5 and requests[n] == 1 else 0.01)
        return web.json_response({"n": n, "square": n * n})
    finally:
        server["in_flight"] -= 1


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    """Serve /item/{n} on 127.0.0.1 (a free port) for the duration of the block."""
    app = web.Application()
    app.add_routes([web.get("/item/{n}", item)])
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


sessions: list[aiohttp.ClientSession] = []  # the sessions the calls were given


@single_task(concurrency_limit=4, retry_attempts=3, retry_delay=0.01, timeout=0.2)
async def fetch(n: int, base_url: str, *, session: aiohttp.ClientSession) -> dict[str, Any]:
    sessions.append(session)
    async with session.get(f"{base_url}/item/{n}") as response:
        response.raise_for_status()  # a 503 raises: retried like any other error
        return await response.json()


async def main() -> None:
    async with local_server() as base_url:
        # base_url is a side input (a plain value); the session is a resource.
        task = fetch.with_inputs(base_url).with_resources(session=aiohttp.ClientSession)

        results = await task(range(10)).collect()
        for result in results:
            print(result)
        assert results == [{"n": n, "square": n * n} for n in range(10)], results
        assert requests[3] == 2 and requests[5] == 2  # one retry each
        print(f"requests per item: {dict(sorted(requests.items()))}")
        print(f"at most {server['peak']} requests at once (concurrency_limit=4)")
        assert server["peak"] <= 4

        # One session for the whole run, closed when the run ended.
        assert len({id(session) for session in sessions}) == 1
        assert sessions[0].closed
        print("one session for the run, closed at its end")

        # Leaving early closes the session too, after the calls in flight are cancelled.
        sessions.clear()
        async with task(range(100, 200)) as stream:
            async for result in stream:
                if result["n"] == 102:
                    break
        assert sessions and all(session.closed for session in sessions)
        assert len({id(session) for session in sessions}) == 1  # a new one, for that run
        print("left early: that run's session is closed too")


if __name__ == "__main__":
    conveyor.run(main())
