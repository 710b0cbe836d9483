"""``python -m benchmarks.adaptive``: ``concurrency_limit="auto"`` against fixed limits.

The service is the test server's capacity-limited endpoint (``tests/http_server.py``,
``/cap/{n}``, an aiohttp server on 127.0.0.1 in a thread of its own, with its own event
loop): up to 16 requests in progress answer in 100 ms; past that each takes
``0.1 * in_progress / 16`` s (throughput stays 160/s, requests queue); past 24 in progress
it answers 429 with ``Retry-After: 1``. The client is one ``@single_task`` doing a GET with
aiohttp, 429s retried (``retry_delay=0.2``, backoff, jitter 0.5), as completed, on an
endless input.

Rows: fixed limits 4, 8, 16 (the best: capacity), 24, 32 (2x too high), each run
``--seconds`` and measured after its first second; ``"auto"`` measured from 5 s to 10 s of
its run, then the capacity halved (8, 429 past 12): how long the limit takes to get to at
most 12. Each row is the median of ``--reps`` runs; the figures are throughput, p50 and p95
latency of the successful requests and 429s per 1,000 results, all in the measured part
of the run, and the 429s of the whole run (for "auto": its slow start and the halving).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
from http_server import serve  # noqa: E402

import conveyor  # noqa: E402


@dataclasses.dataclass
class Run:
    rate: float
    p50: float
    p95: float
    shed_per_1000: float
    shed_total: float = 0.0  # 429s over the whole run (auto: slow start, the halving)
    limit: float | None = None  # auto: the mean limit in the measured window
    follow: float | None = None  # auto: seconds to follow the capacity halved


async def endless() -> Any:
    n = 0
    while True:
        yield n
        n += 1


async def run(server: Any, limit: Any, seconds: float, halve_at: float | None = None) -> Run:
    capacity = server.capacity
    capacity.n, capacity.shed = 16, 24
    done: list[tuple[float, float]] = []
    limits: list[tuple[float, int]] = []
    measured = (5.0, 10.0) if halve_at is not None else (1.0, seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        @conveyor.single_task(
            concurrency_limit=limit, retry_attempts=50, retry_delay=0.2, retry_jitter=0.5
        )
        async def fetch(n: int) -> int:
            began = time.monotonic()
            async with session.get(f"{server.url}/cap/{n}") as response:
                response.raise_for_status()
                await response.read()
            done.append((time.monotonic(), time.monotonic() - began))
            return n

        shed_measured = shed_now = shed_start = capacity.shed_count
        start = time.monotonic()
        stream = fetch.as_completed(endless())
        async with stream:
            async for _ in stream:
                now = time.monotonic() - start
                if halve_at is not None and now >= halve_at and capacity.n == 16:
                    capacity.n, capacity.shed = 8, 12
                now_limit = stream.stats.stage("fetch").concurrency_limit_now
                if now_limit is not None and (not limits or now - limits[-1][0] >= 0.05):
                    limits.append((now, now_limit))
                if now < measured[0]:
                    shed_measured = capacity.shed_count
                elif now < measured[1]:
                    shed_now = capacity.shed_count
                if now >= seconds:
                    break
    await server.wait_idle()
    capacity.n, capacity.shed = 16, 24
    latencies = sorted(lat for end, lat in done if measured[0] <= end - start < measured[1])
    n = len(latencies)
    span = measured[1] - measured[0]
    result = Run(
        rate=n / span,
        p50=latencies[n // 2],
        p95=latencies[int(0.95 * (n - 1))],
        shed_per_1000=1000 * (shed_now - shed_measured) / max(1, n),
        shed_total=capacity.shed_count - shed_start,
    )
    if limits:
        window = [lim for t, lim in limits if measured[0] <= t < measured[1]]
        result.limit = statistics.fmean(window)
        if halve_at is not None:
            followed = [t for t, lim in limits if t >= halve_at and lim <= 12]
            result.follow = followed[0] - halve_at if followed else None
    return result


def median_run(runs: list[Run]) -> Run:
    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    fields = [f.name for f in dataclasses.fields(Run)]
    return Run(**{f: med([getattr(r, f) for r in runs]) for f in fields})  # type: ignore[arg-type]


async def main(reps: int, seconds: float) -> None:
    rows: dict[str, list[Run]] = {}
    async with serve() as server:
        for _ in range(reps):  # (interleaved: the machine's noise spread over all rows)
            for limit in (4, 8, 16, 24, 32):
                rows.setdefault(f"fixed {limit}", []).append(await run(server, limit, seconds))
            rows.setdefault("auto", []).append(await run(server, "auto", 15.0, halve_at=10.0))
    best = median_run(rows["fixed 16"])
    print(f"Python {platform.python_version()}, {reps} reps, median; best fixed limit: 16\n")
    print(
        "| limit | requests/s | vs best | p50 | p95 | p95 vs best | 429s per 1k results "
        "| 429s in the whole run | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        r = median_run(runs)
        note = {"fixed 16": "the best fixed limit", "fixed 32": "2x too high"}.get(name, "")
        if r.limit is not None:
            note = f"limit {r.limit:.1f} (mean, 5-10 s)"
            if r.follow is not None:
                note += f"; capacity halved at 10 s: limit <= 12 after {r.follow:.2f} s"
        print(
            f"| {name} | {r.rate:.0f}/s | {r.rate / best.rate:.2f}x | {r.p50 * 1e3:.0f} ms | "
            f"{r.p95 * 1e3:.0f} ms | {r.p95 / best.p95:.2f}x | {r.shed_per_1000:.1f} | "
            f"{r.shed_total:.0f} | {note} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    asyncio.run(main(args.reps, args.seconds))
