"""A crawl that batches its writes per host: ``fetch | store_per_host`` with ``key=``.

Three local web servers stand for three hosts, one slower than the others. ``fetch``
GETs each URL (one ``aiohttp.ClientSession`` per run, 20 requests at once) and returns
the page's record; ``store_per_host`` writes records in batches of up to 8, **one open
batch per host** (``key=host_of``): each write goes to that host's table in one call
(here a dict of lists standing in for a database with a table per host). A batch waits
at most ``max_wait`` seconds for more of its host's pages (the timer is per host), and at
most ``max_keys`` hosts have an open batch: a page of one more host would first send off
the least recently fed host's batch, whatever its size (memory stays bounded however
many hosts a crawl meets). The run is as-completed: pages are stored as they come.

The script checks what it claims: every URL is stored exactly once, each write holds
one host's records only and at most 8 of them, and the writes are few (batched): the
fast hosts' are full batches.

The script serves the hosts itself, on 127.0.0.1 with free ports, so it runs offline.
"""

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

import conveyor
from conveyor import batch_task, single_task

PAGES = 40  # per host
DELAYS = [0.001, 0.002, 0.03]  # each host's latency: the third is slow
MAX_KEYS = 3  # hosts with an open batch at once: a fourth would send the stalest off


async def serve(delay: float) -> web.AppRunner:
    async def page(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"page": int(request.match_info["n"]), "host": request.host})

    app = web.Application()
    app.add_routes([web.get("/page/{n}", page)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@contextlib.asynccontextmanager
async def local_hosts() -> AsyncIterator[list[str]]:
    runners: list[web.AppRunner] = []
    try:
        for delay in DELAYS:
            runners.append(await serve(delay))
        yield [f"http://{host}:{port}" for host, port, *_ in (r.addresses[0] for r in runners)]
    finally:
        for runner in runners:
            await runner.cleanup()


def host_of(record: dict) -> str:
    return record["host"]


@single_task(concurrency_limit=20, retry_attempts=3, retry_delay=0.05)
async def fetch(url: str, *, session: aiohttp.ClientSession) -> dict:
    async with session.get(url) as response:
        response.raise_for_status()
        record = await response.json()
    return {**record, "host": urlsplit(url).netloc}


tables: defaultdict[str, list[int]] = defaultdict(list)  # a table per host
writes: list[tuple[str, int]] = []  # (host, rows) per write


@batch_task(max_size=8, max_wait=0.1, key=host_of, max_keys=MAX_KEYS)
async def store_per_host(records: list[dict]) -> list[int]:
    hosts = {record["host"] for record in records}
    assert len(hosts) == 1, f"a write mixed hosts: {hosts}"
    host = hosts.pop()
    await asyncio.sleep(0.002)  # (one INSERT of many rows into the host's table)
    tables[host].extend(record["page"] for record in records)
    writes.append((host, len(records)))
    return [record["page"] for record in records]


async def main() -> None:
    async with local_hosts() as bases:
        # The URLs interleave the hosts, as a crawl's frontier would.
        urls = [f"{base}/page/{n}" for n in range(PAGES) for base in bases]
        pipeline = fetch.with_resources(session=aiohttp.ClientSession) | store_per_host
        stream = pipeline.with_execution_mode("as_completed")(urls)
        stored = await stream.collect()
    hosts = [urlsplit(base).netloc for base in bases]
    per_host = Counter(host for host, _ in writes)
    print(f"stored {len(stored)} pages of {len(urls)} in {len(writes)} writes")
    for name, host in zip(["fast", "fast", "slow"], hosts, strict=True):
        sizes = [rows for h, rows in writes if h == host]
        print(f"  {name} host {host}: {per_host[host]} writes, sizes {sizes}")
    stage = stream.stats.stages[1]
    print(f"batches {stage.batches}, flushed by max_wait {stage.max_wait_flushes}")
    # Every URL stored exactly once, each in its own host's table.
    assert sorted(stored) == sorted(n for n in range(PAGES) for _ in hosts)
    assert all(sorted(tables[host]) == list(range(PAGES)) for host in hosts)
    # Each write held one host's records (checked in store_per_host), at most 8.
    assert all(1 <= rows <= 8 for _, rows in writes)
    assert sum(rows for _, rows in writes) == len(urls)
    # Batched: a few writes per host, the fast hosts' mostly full.
    assert len(writes) <= len(urls) // 3, writes
    fast_sizes = [rows for h, rows in writes if h in hosts[:2]]
    assert sum(rows == 8 for rows in fast_sizes) >= len(fast_sizes) // 2, fast_sizes


if __name__ == "__main__":
    conveyor.run(main())
