"""The ``http`` scenario: real HTTP requests to a local server, conveyor vs hand-written.

The server is an aiohttp app in a process of its own (``python -m benchmarks.http
--serve``, on uvloop when it is installed), so that its work does not share the client's
GIL; it answers ``/item/{n}?delay=s`` with ``{"n": n}`` after sleeping ``s`` seconds.

- **throughput**: N GETs with a 10 ms server delay, at most 100 at once: conveyor's
  ``@single_task(concurrency_limit=100)`` with the session as a run-scoped resource,
  against a hand-written ``asyncio.Semaphore(100)`` + ``asyncio.gather`` crawler. Both
  open the same kind of session for each run, ``ClientSession(connector=
  TCPConnector(limit=100))``, and read every body; repetitions interleaved. Target:
  conveyor >= 0.9x the hand-written rate.
- **rate limit**: the same requests under ``rate_limit=(RATE, 1.0)`` with 100 allowed at
  once; the achieved rate of call starts against the configured one. The limit lets
  RATE calls start at once (here as fast as 100 at a time allow), then one more as each
  start leaves the 1 s window, so the rate is measured from the last start of that first
  burst: ``(N - RATE) / (last start - start number RATE)``; at exactly the limit, that
  is RATE. Target: within 5% of RATE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import Config, Row, expect, fmt_int, fmt_rate, interleaved_samples, run_on

ROOT = Path(__file__).resolve().parent.parent
DELAY = 0.010  # the server's delay per request
CONCURRENCY = 100
RATE = 200  # calls per second, for the rate-limit row


# -- the server (its own process) ---------------------------------------------------------------


def serve() -> None:
    """Serve /item/{n} on 127.0.0.1 (a free port); print its URL; run until killed."""
    from aiohttp import web

    async def item(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", 0)))
        return web.json_response({"n": int(request.match_info["n"])})

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.get("/item/{n}", item)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"http://{host}:{port}", flush=True)
        await asyncio.Event().wait()  # until the parent terminates the process

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


@contextlib.contextmanager
def server_process() -> Iterator[tuple[str, str]]:
    """Start the server in a process of its own: its URL and its event loop's name."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.http", "--serve"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the benchmark server did not start (it printed {url!r})")
        try:
            import uvloop  # noqa: F401

            loop = "uvloop"
        except ImportError:
            loop = "asyncio"
        yield url, loop
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the contenders -----------------------------------------------------------------------------


def new_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))


async def get_json(session: Any, url: str) -> Any:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()


def conveyor_fetch(rate_limit: tuple[int, float] | None = None) -> Any:
    from conveyor import single_task

    @single_task(concurrency_limit=CONCURRENCY, rate_limit=rate_limit)
    async def fetch(url: str, *, session: Any) -> Any:
        return await get_json(session, url)

    return fetch.with_resources(session=new_session)


async def hand_written(urls: list[str]) -> list[Any]:
    """The crawler one would write by hand: a semaphore around each request, gathered."""
    async with new_session() as session:
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(url: str) -> Any:
            async with semaphore:
                return await get_json(session, url)

        return await asyncio.gather(*(one(url) for url in urls))


async def _throughput(base: str, n: int, reps: int) -> dict[str, list[float]]:
    urls = [f"{base}/item/{i}?delay={DELAY}" for i in range(n)]
    fetch = conveyor_fetch()

    async def conveyor_run() -> None:
        expect(len(await fetch(urls).collect()), n, "conveyor")

    async def hand_run() -> None:
        expect(len(await hand_written(urls)), n, "hand-written")

    warm = urls[: CONCURRENCY * 2]

    async def warm_conveyor() -> None:
        await fetch(warm).collect()

    async def warm_hand() -> None:
        await hand_written(warm)

    return await interleaved_samples(
        {"conveyor": conveyor_run, "hand-written": hand_run},
        reps,
        warmups={"conveyor": warm_conveyor, "hand-written": warm_hand},
    )


async def _rate_limited(base: str, n: int) -> float:
    """The achieved rate of call starts after the first burst (see the module docstring)."""
    from conveyor import single_task

    starts: list[float] = []

    @single_task(concurrency_limit=CONCURRENCY, rate_limit=(RATE, 1.0))
    async def fetch(url: str, *, session: Any) -> Any:
        starts.append(time.perf_counter())
        return await get_json(session, url)

    urls = [f"{base}/item/{i}?delay={DELAY}" for i in range(n)]
    results = await fetch.with_resources(session=new_session)(urls).collect()
    expect(len(results), n, "conveyor (rate limited)")
    starts.sort()
    return (n - RATE) / (starts[-1] - starts[RATE - 1])


def http(loop: str, cfg: Config) -> list[Row]:
    n = 1_000 if cfg.quick else 2_000
    reps = 3 if cfg.quick else 7
    limited_n = RATE * 3  # three seconds' worth: a burst, then two seconds at the limit
    limited_reps = 1 if cfg.quick else 3
    with server_process() as (base, server_loop):
        samples = run_on(loop, _throughput(base, n, reps))
        achieved = [run_on(loop, _rate_limited(base, limited_n)) for _ in range(limited_reps)]
    conv = statistics.median(samples["conveyor"])
    hand = statistics.median(samples["hand-written"])
    # per repetition: hand-written seconds / conveyor seconds = conveyor's rate / hand's
    ratios = sorted(
        h / c for h, c in zip(samples["hand-written"], samples["conveyor"], strict=True)
    )
    ratio = statistics.median(ratios)
    rate = statistics.median(achieved)
    server = f"server: aiohttp on {server_loop}, its own process, {DELAY * 1000:.0f} ms a request"
    return [
        Row(
            scenario=f"http {fmt_int(n)} GETs",
            loop=loop,
            metric=f"requests/s at concurrency {CONCURRENCY}, one ClientSession per run",
            conveyor=fmt_rate(n / conv),
            floor=f"Semaphore+gather: {fmt_rate(n / hand)}",
            ratio=f"conv/hand {ratio:.2f}x (reps {ratios[0]:.2f}-{ratios[-1]:.2f})",
            target=">=0.9x",
            met=ratio >= 0.9,
            note=f"{server}; median of {reps}, interleaved",
            group="http",
        ),
        Row(
            scenario=f"http rate limit {RATE}/s",
            loop=loop,
            metric=f"achieved rate of starts after the first burst, {fmt_int(limited_n)} GETs",
            conveyor=f"{rate:.1f}/s",
            floor=f"configured: {RATE}/s",
            ratio=f"{rate / RATE:.3f}x the limit",
            target="within 5%",
            met=abs(rate / RATE - 1) <= 0.05,
            note=f"rate_limit=({RATE}, 1.0), concurrency {CONCURRENCY}; median of "
            f"{limited_reps}: " + ", ".join(f"{a:.1f}" for a in achieved),
            group="http",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http")
    parser.add_argument("--serve", action="store_true", help="run the server (the child)")
    args = parser.parse_args()
    if args.serve:
        serve()
    else:
        parser.error("the scenario runs with: python -m benchmarks --only http")


if __name__ == "__main__":
    main()
