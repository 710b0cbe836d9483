"""``python -m benchmarks.compose [--items N] [--window W] [--delay S] [--reps R] [--loop L]``: what
``conveyor.parallel`` and ``conveyor.route`` cost against the same work written by hand.

Two I/O stages, each an ``async def`` awaiting ``asyncio.sleep(S)`` (``--delay``, 1 ms by
default: a stand-in for a request, with no server, so that the figures are the engines'
own cost, not a network's), over ``--items`` integers with ``--window`` items in flight
at once. At 1 ms and a window of 100 the event loop's work is the bound (a run is
CPU-bound); at 10 ms the sleeps are (a run is I/O-bound, as against a real service):

- **parallel**: ``conveyor.parallel(a, b)`` (the pair of the two results per item, in
  input order; ``max_in_flight=W``) against a hand-written loop: a semaphore of W items,
  each item's ``asyncio.gather(a(x), b(x))`` in a task of an ``asyncio.TaskGroup``, the
  results stored by index (input order). Also, between the two, one conveyor task whose
  function does that ``gather`` itself (the branch machinery's share).
- **route**: ``conveyor.route(key, {0: a, 1: b})`` (every other item to each; input
  order) against the same hand-written loop calling ``a`` or ``b`` by the key.

Each contender runs in turn, ``--reps`` times, in one interpreter, on a fresh event loop
each run (``--loop``); a run's figure is items per second, and each row gives the median
of the reps and the median of the per-rep ratios to the hand-written baseline (above 1:
conveyor is faster). Prints a Markdown table (see ``benchmarks/RESULTS.md``,
"Composition").
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import conveyor
from conveyor import single_task

DELAY = 0.001


async def call_a(x: int) -> int:
    await asyncio.sleep(DELAY)
    return x + 1


async def call_b(x: int) -> int:
    await asyncio.sleep(DELAY)
    return x * 2


a = single_task(call_a)
b = single_task(call_b)


def key(x: int) -> int:
    return x % 2


async def by_hand(n: int, window: int, call: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``call`` on each of ``range(n)``, ``window`` at once, results in input order."""
    results: list[Any] = [None] * n
    places = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        try:
            results[i] = await call(i)
        finally:
            places.release()

    async with asyncio.TaskGroup() as group:
        for i in range(n):
            await places.acquire()
            group.create_task(one(i))
    return results


async def gathered(x: int) -> tuple[int, int]:
    first, second = await asyncio.gather(call_a(x), call_b(x))
    return first, second


@single_task
async def both(x: int) -> tuple[int, int]:
    return await gathered(x)  # (a tuple: a list would be one item per element)


async def dispatched(x: int) -> int:
    return await (call_a if key(x) == 0 else call_b)(x)


def conveyor_run(pipeline: Any, window: int) -> Callable[[int], Awaitable[list[Any]]]:
    configured = conveyor.Pipeline([pipeline]).with_context(max_in_flight=window)

    async def run(n: int) -> list[Any]:
        return await configured(range(n)).collect()

    return run


def hand_run(window: int, call: Callable[[int], Awaitable[Any]]) -> Any:
    async def run(n: int) -> list[Any]:
        return await by_hand(n, window, call)

    return run


def contenders(window: int) -> dict[str, list[tuple[str, Any]]]:
    """Per row, its contenders (the baseline first)."""
    return {
        "parallel(a, b)": [
            ("hand: Semaphore + gather(a, b)", hand_run(window, gathered)),
            ("conveyor: one task gathering a, b", conveyor_run(both, window)),
            ("conveyor: parallel(a, b)", conveyor_run(conveyor.parallel(a, b), window)),
        ],
        "route(key, {0: a, 1: b})": [
            ("hand: Semaphore + a or b by key", hand_run(window, dispatched)),
            (
                "conveyor: route(key, {0: a, 1: b})",
                conveyor_run(conveyor.route(key, {0: a, 1: b}), window),
            ),
        ],
    }


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def timed(loop_name: str, run: Any, n: int) -> tuple[float, list[Any]]:
    loop = new_loop(loop_name)
    try:
        started = time.perf_counter()
        results = loop.run_until_complete(run(n))
        return n / (time.perf_counter() - started), results
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compose", description=__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.001, help="seconds per call")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args(argv)
    global DELAY
    DELAY = args.delay
    n = args.items
    rows = contenders(args.window)
    expected = {
        "parallel(a, b)": [(x + 1, x * 2) for x in range(n)],
        "route(key, {0: a, 1: b})": [x + 1 if x % 2 == 0 else x * 2 for x in range(n)],
    }
    print(
        f"Python {platform.python_version()} on {args.loop}; {n:,} items, window "
        f"{args.window}, sleep({DELAY:g}) per call; median of {args.reps} interleaved reps"
    )
    print()
    print("| row | contender | items/s | ratio to hand-written (range) |")
    print("|---|---|---:|---:|")
    for row, runs in rows.items():
        for _, run in runs:
            timed(args.loop, run, n // 10)  # (warm-up)
        figures: list[list[float]] = [[] for _ in runs]
        for _ in range(args.reps):
            for index, (_, run) in enumerate(runs):
                rate, results = timed(args.loop, run, n)
                assert results == expected[row], row
                figures[index].append(rate)
        baseline = figures[0]
        for (name, _), rates in zip(runs, figures, strict=True):
            ratios = [rate / base for rate, base in zip(rates, baseline, strict=True)]
            print(
                f"| {row} | {name} | {statistics.median(rates):,.0f} | "
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
