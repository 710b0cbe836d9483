"""``python -m benchmarks.durable [--items N] [--reps R]``: what durable runs cost.

Trivial pipelines (one plain ``def`` stage; three ``async def`` stages), run plain, on
a fresh SQLite checkpoint (every item recorded done), and again on that checkpoint once
everything is done (every item skipped without a call: the resume's rate). Then a
task's result cache: in memory and in SQLite, a first run (every call a miss, stored)
and a second (every call a hit). Each figure is the median of ``--reps`` runs, in
items per second, with the ratio to the plain run. Prints a Markdown table (see
``benchmarks/RESULTS.md``, "Durable runs").
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import conveyor
from conveyor import Cache, Checkpoint, single_task


@single_task
def plus_one(x: int) -> int:
    return x + 1


@single_task
async def a1(x: int) -> int:
    return x + 1


@single_task
async def a2(x: int) -> int:
    return x * 2


@single_task
async def a3(x: int) -> int:
    return x - 1


PIPELINES: dict[str, conveyor.Pipeline[Any, Any]] = {
    "1 `def` stage": conveyor.Pipeline([plus_one]),
    "3 `async def` stages": a1 | a2 | a3,
}


async def rate(pipeline: conveyor.Pipeline[Any, Any], n: int) -> float:
    start = time.perf_counter()
    await pipeline(range(n)).collect()
    return n / (time.perf_counter() - start)


def median(reps: int, measure: Callable[[], Coroutine[Any, Any, float]]) -> float:
    return statistics.median(asyncio.run(measure()) for _ in range(reps))


def checkpoint_rows(n: int, reps: int, folder: Path) -> list[tuple[str, str, float, float]]:
    rows = []
    for name, pipeline in PIPELINES.items():
        plain = median(reps, lambda p=pipeline: rate(p, n))
        fresh, resumed = [], []
        for rep in range(reps):
            checkpoint = Checkpoint(folder / f"{name[:1]}-{rep}.db")
            on = pipeline.with_checkpoint(checkpoint)
            fresh.append(asyncio.run(rate(on, n)))
            resumed.append(asyncio.run(rate(on, n)))
            assert checkpoint.summary().done == n
        rows.append((name, "plain", plain, 1.0))
        for run, figures in (("on a checkpoint", fresh), ("resumed, all done (skipped)", resumed)):
            figure = statistics.median(figures)
            rows.append((name, run, figure, figure / plain))
    return rows


def cache_rows(n: int, reps: int, folder: Path) -> list[tuple[str, str, float, float]]:
    plain = median(reps, lambda: rate(conveyor.Pipeline([plus_one]), n))
    rows = [("1 `def` stage", "no cache", plain, 1.0)]
    for where in ("memory", "SQLite"):
        misses, hits = [], []
        for rep in range(reps):
            path = None if where == "memory" else folder / f"cache-{rep}.db"

            @single_task(cache=Cache(path=path), task_name=f"cached{rep}")
            def cached(x: int) -> int:
                return x + 1

            pipeline = conveyor.Pipeline([cached])
            misses.append(asyncio.run(rate(pipeline, n)))
            hits.append(asyncio.run(rate(pipeline, n)))
        for what, figures in (("misses", misses), ("hits", hits)):
            figure = statistics.median(figures)
            rows.append(("1 `def` stage", f"cache in {where}, {what}", figure, figure / plain))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durable", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = checkpoint_rows(args.items, args.reps, folder)
        rows += cache_rows(args.items, args.reps, folder)
    print("| pipeline | run | items/s | ratio to plain |")
    print("|---|---|---:|---:|")
    for pipeline, run, figure, ratio in rows:
        print(f"| {pipeline} | {run} | {figure:,.0f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
