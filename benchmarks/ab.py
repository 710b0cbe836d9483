"""``python -m benchmarks.ab --against DIR``: this checkout's engine against another's.

For an engine change: the same pipelines run on this checkout and on another one (a git
worktree of the previous main, say ``git worktree add /tmp/old main~5``), each run in a
fresh interpreter, the two alternating, ``--reps`` times. It prints, per pipeline, each
side's median throughput and the median of the paired ratios (this checkout / the other:
above 1 is faster), with their range. Standard library only, and conveyor's public API,
so it runs against any version of conveyor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

PIPELINES = r"""
import asyncio, sys, time
from conveyor import batch_task, single_task

@single_task
async def a1(x): return x + 1
@single_task
async def a2(x): return x * 2
@single_task
async def a3(x): return x - 1
@single_task
def p1(x): return x + 1
@single_task
def p2(x): return x * 2
@single_task
def p3(x): return x - 1
@batch_task(max_size=100)
def hundred(xs): return xs
@single_task
def two(x):
    yield x
    yield x + 1
@single_task
def some(x): return x if x % 3 else None
@single_task(concurrency_limit=100)
async def io(x):
    await asyncio.sleep(0.001)
    return x
@single_task
async def late(x):  # one in ten finishes a few steps late: results wait to be in order
    for _ in range(3 if x % 10 == 0 else 0):
        await asyncio.sleep(0)
    return x
@single_task(executor="thread")
def on_threads(x): return x + 1
on_processes = single_task(executor="process")(abs)  # (a builtin: pickled by name)

PIPELINES = {
    "3 async def stages": (lambda: a1 | a2 | a3, 100_000),
    "3 async def stages, as completed": (
        lambda: (a1 | a2 | a3).with_execution_mode("as_completed"), 100_000
    ),
    "3 def stages (fused)": (lambda: p1 | p2 | p3, 300_000),
    "3 def stages, statistics off": (
        lambda: (p1 | p2 | p3).with_context(statistics=False), 300_000
    ),
    "def | batch of 100 | def": (lambda: p1 | hundred | p2, 300_000),
    "generator | filter": (lambda: two | some, 200_000),
    "async sleep(1 ms) @ limit 100": (lambda: io | p1, 5_000),
    "async, 1 in 10 late (reordered)": (lambda: late | p1, 100_000),
    "def on threads": (lambda: on_threads | p1, 30_000),
    "def on processes": (lambda: on_processes | p1, 100_000),
}

async def rate(pipeline, n):
    started = time.perf_counter()
    async for _ in pipeline(range(n)):
        pass
    return n / (time.perf_counter() - started)

async def main(name):
    make, n = PIPELINES[name]
    await rate(make(), n // 10)  # (warm-up)
    print(await rate(make(), n))

if len(sys.argv) > 1:
    asyncio.run(main(sys.argv[1]))
else:
    print("\n".join(PIPELINES))
"""


def measure(checkout: Path, name: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    # In the checkout: ``python -c`` puts the working directory first on sys.path, so
    # run from anywhere else, both sides would import the conveyor found there.
    args = [
        sys.executable,
        "-c",
        PIPELINES + "\nimport conveyor; print(conveyor.__file__, file=sys.stderr)",
        *([name] if name else []),
    ]
    done = subprocess.run(args, env=env, cwd=checkout, check=True, capture_output=True, text=True)
    where = Path(done.stderr.strip().splitlines()[-1]).resolve()
    if not where.is_relative_to(checkout.resolve()):
        raise RuntimeError(f"{checkout}: imported conveyor from {where}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    for name in measure(HERE).split("\n"):
        if not name:
            continue
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.reps):
            theirs.append(float(measure(args.against, name)))
            ours.append(float(measure(HERE, name)))
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        print(
            f"{name}: {statistics.median(ours):,.0f}/s vs {statistics.median(theirs):,.0f}/s, "
            f"paired ratio {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}, {args.reps} pairs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
