"""``python -m benchmarks.tracing``: the cost of OpenTelemetry traces (docs/tracing.md).

Two pipelines of ``benchmarks.ab`` ("3 async def stages", "3 def stages (fused)"), each
with tracing off, on with 10% of the calls sampled, and on with all of them, every
measure in a fresh interpreter, the three alternating, ``--reps`` times. The tracer
provider is the SDK's, sampling everything, with no span processor: the cost measured
is conveyor's and the SDK's spans (made, given their attributes, ended), not an
exporter's. Prints the median µs per item and the ratio to tracing off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import asyncio, sys, time
from conveyor import single_task
from opentelemetry.sdk.trace import TracerProvider

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

PIPELINES = {
    "3 async def stages": (a1 | a2 | a3, 30_000),
    "3 def stages (fused)": (p1 | p2 | p3, 100_000),
}
MODES = {"off": {"tracing": False}, "10%": {"trace_sampling": 0.1}, "100%": {}}

async def seconds(pipeline, n):
    started = time.perf_counter()
    async for _ in pipeline(range(n)):
        pass
    return time.perf_counter() - started

async def main(name, mode):
    pipeline, n = PIPELINES[name]
    options = MODES[mode]
    if options.get("tracing") is not False:
        options = {"tracing": TracerProvider(), **options}
    pipeline = pipeline.with_context(**options)
    await seconds(pipeline, n // 10)  # (warm-up)
    print(1e6 * await seconds(pipeline, n) / n)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

PIPELINES = ["3 async def stages", "3 def stages (fused)"]
MODES = ["off", "10%", "100%"]


def measure(name: str, mode: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, name, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, median of {args.reps}: µs per item (x off)")
    for name in PIPELINES:
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.reps):
            for mode in MODES:
                times[mode].append(measure(name, mode))
        off = statistics.median(times["off"])
        cells = [
            f"{mode} {statistics.median(times[mode]):.2f}"
            + ("" if mode == "off" else f" ({statistics.median(times[mode]) / off:.2f}x)")
            for mode in MODES
        ]
        print(f"{name}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
