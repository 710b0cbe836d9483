"""The synchronous front door: ``pipeline.run(items)`` and ``pipeline.iter(items)``."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from conveyor import Pipeline, batch_task, single_task


@single_task
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@batch_task(max_size=3)
def total(batch: list[int]) -> int:
    return sum(batch)


def iter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "conveyor-iter"]


def test_run_returns_the_results() -> None:
    assert (double | total).run(range(7)) == [6, 24, 12]
    assert double.run([1, 2]) == [2, 4]


def test_iter_streams_and_leaving_early_closes_the_run() -> None:
    closed: list[bool] = []

    def endless() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            closed.append(True)

    seen = []
    for value in Pipeline([double]).iter(endless()):  # an endless input: memory bounded
        seen.append(value)
        if value >= 2000:
            break
    assert seen[:3] == [0, 2, 4] and seen[-1] == 2000
    assert closed == [True]  # the input was closed on the way out
    assert iter_threads() == []  # and the loop's thread has stopped


def test_iter_delivers_the_first_result_before_the_run_ends() -> None:
    @single_task(executor="thread:4")
    def slow(x: int) -> int:
        time.sleep(0.2 if x else 0.0)
        return x

    start = time.perf_counter()
    it = slow.iter(range(4))
    assert next(it) == 0
    first = time.perf_counter() - start
    assert list(it) == [1, 2, 3]
    assert first < 0.15  # the others take 0.2 s each
    assert iter_threads() == []


def test_errors_reach_the_synchronous_caller_with_their_notes() -> None:
    @single_task
    def parse(text: str) -> int:
        return int(text)

    with pytest.raises(ValueError) as info:
        parse.run(["1", "x"])
    assert info.value.__notes__ == ["conveyor: raised by task 'parse' on 'x'"]
    with pytest.raises(ValueError):
        list(parse.iter(["1", "x"]))
    assert iter_threads() == []


async def test_refused_inside_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match=r"await pipeline\(items\)\.collect\(\)"):
        double.run([1])
    with pytest.raises(RuntimeError, match="plain synchronous code"):
        double.iter([1])
