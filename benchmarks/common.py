"""Shared helpers: configuration, event loops, timing, and the result row type."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and repetitions; ``quick`` shrinks everything for a smoke test."""

    quick: bool = False

    @property
    def reps(self) -> int:
        return 2 if self.quick else 3

    @property
    def overhead_items(self) -> int:
        return 10_000 if self.quick else 100_000

    @property
    def aiostream_items(self) -> int:
        # aiostream moves ~5-10k items/s through three mapped stages: 100k items would
        # take ~15 s a run, so it gets fewer items (its rate is flat in the item count).
        return 1_000 if self.quick else 10_000

    @property
    def streamable_items(self) -> int:
        # streamable moves ~30-45k items/s through three concurrent async stages (and
        # more through plain ones): like aiostream, fewer items than conveyor.
        return 3_000 if self.quick else 30_000

    @property
    def io_sizes(self) -> tuple[tuple[int, int], ...]:
        if self.quick:
            return ((2_000, 100), (5_000, 250))
        return ((2_000, 100), (20_000, 1_000))

    @property
    def io_reps(self) -> int:
        # conveyor and the gather baseline are close here: more paired repetitions
        return 3 if self.quick else 9

    @property
    def memory_items(self) -> int:
        return 30_000 if self.quick else 1_000_000

    @property
    def memory_aiostream_items(self) -> int:
        # aiostream's memory is bounded by task_limit, not the item count, and it moves
        # only ~4k items/s through two stages under tracemalloc: a smaller run suffices
        return 1_000 if self.quick else 5_000

    @property
    def memory_reps(self) -> int:
        return 1

    @property
    def latency_reps(self) -> int:
        return 1 if self.quick else 3

    @property
    def latency_scale(self) -> float:
        return 0.25 if self.quick else 1.0

    @property
    def scaling_sizes(self) -> tuple[int, ...]:
        # each size must divide the largest: every size handles the same items in all
        return (10_000, 25_000, 100_000) if self.quick else (10_000, 100_000, 1_000_000)

    # -- the executors group (benchmarks/executors.py) --

    @property
    def cpu_items(self) -> int:
        return 1_000 if self.quick else 5_000

    @property
    def cpu_chunksizes(self) -> tuple[int, ...]:
        # ProcessPoolExecutor.map(chunksize=c) for each c: the best is the hand-tuned one
        return (10, 100) if self.quick else (1, 10, 50, 100, 250)

    @property
    def tiny_items(self) -> int:
        return 20_000 if self.quick else 200_000

    @property
    def sleep_items(self) -> int:
        return 500 if self.quick else 2_000

    @property
    def sleep_inline_sample(self) -> int:
        # 100 blocking calls of 10 ms in a row take 1 s: the inline time of all is
        # extrapolated from these
        return 50 if self.quick else 100

    @property
    def dask_items(self) -> int:
        # client.map costs ~2 ms of scheduling per item on 2 cores: fewer than 5k items
        return 500 if self.quick else 2_000

    def cost_sizes(self, executor: str) -> tuple[int, int]:
        """Two run sizes per executor: the cost per item is the slope between them."""
        sizes = {
            "inline": (20_000, 200_000),
            "thread": (2_000, 20_000),
            "process": (20_000, 100_000),
            "process map": (50_000, 500_000),  # ~0.5 µs an item: longer runs, or noise
            "auto": (20_000, 200_000),
            "dask": (2_000, 20_000),
            "client.map": (200, 2_000),
        }[executor]
        return (sizes[0] // 4, sizes[1] // 4) if self.quick else sizes


@dataclasses.dataclass
class Row:
    """One line of the results table."""

    scenario: str
    loop: str
    metric: str
    conveyor: str
    floor: str = "-"
    aiostream: str = "-"
    streamable: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None
    note: str = ""
    group: str = ""
    """A group with a table of its own (see ``report.GROUPS``); "" for the main table."""

    @property
    def status(self) -> str:
        if self.met is None:
            return "n/a"
        return "met" if self.met else "not met"


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}")


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a fresh event loop of kind ``loop``."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    """Seconds taken by one awaited call of ``fn`` (after a gc.collect())."""
    gc.collect()
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def interleaved(
    contenders: Mapping[str, Callable[[], Awaitable[object]]],
    reps: int,
    warmups: Mapping[str, Callable[[], Awaitable[object]]] | None = None,
) -> dict[str, float]:
    """Median seconds per contender; contenders alternate within every repetition."""
    samples = await interleaved_samples(contenders, reps, warmups)
    return {name: statistics.median(values) for name, values in samples.items()}


async def interleaved_samples(
    contenders: Mapping[str, Callable[[], Awaitable[object]]],
    reps: int,
    warmups: Mapping[str, Callable[[], Awaitable[object]]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per contender and repetition; contenders alternate within every one."""
    for warm in (contenders if warmups is None else warmups).values():
        await warm()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for rep in range(reps):
        names = list(contenders)
        if rep % 2:  # alternate who goes first, so no one always runs on a "cold" heap
            names.reverse()
        for name in names:
            samples[name].append(await timed(contenders[name]))
    return samples


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of ``a[i] / b[i]``: robust to the machine speeding up or slowing down."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


async def drain(stream: Any) -> int:
    """Consume an async iterable; the number of items it gave."""
    count = 0
    async for _ in stream:
        count += 1
    return count


def expect(count: int, n: int, who: str) -> None:
    """A contender that lost or invented results has not run the scenario."""
    if count != n:
        raise AssertionError(f"{who} produced {count} results, expected {n}")


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def fmt_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M/s"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k/s"
    return f"{value:.0f}/s"


def fmt_int(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def fmt_mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MB"
