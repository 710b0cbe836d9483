"""The statistics name what the stages' own figures hide (issue 19, parts 1 and 2): a
stage that blocks the event loop, a saturated loop, the window capping a stage's
``concurrency_limit``, a thread pool at its size, a rate limit in the charts.

A blocked or saturated loop is real CPU time, which looptime's virtual clock does not
see: those tests run on the real clock, with margins of several times (a stage that holds
the loop ~95% of a run, against a verdict at 50%). The others run on the virtual clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time

import pytest

from conveyor import single_task

BLOCKED = "the event loop was blocked"


def spin(seconds: float) -> None:
    """Hold the event loop (or a thread) ``seconds``, as CPU work does."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


@single_task
async def fetch(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


@single_task
def cpu_heavy(x: int) -> int:  # CPU work on the event loop: the commonest mistake
    spin(0.003)
    return x


async def test_a_stage_that_blocks_the_loop_is_named(caplog: pytest.LogCaptureFixture) -> None:
    # The issue's example: the other stages' latencies are inflated by the waits for the
    # loop, and the bottleneck was "run too short to tell" (few ticks ran in 0.6 s).
    caplog.set_level(logging.WARNING, logger="conveyor")
    stream = (fetch | cpu_heavy | fetch)(range(200))
    assert len(await stream.collect()) == 200
    stats = stream.stats
    heavy = stats.stages[1]
    assert heavy.loop_share is not None and heavy.loop_share >= 0.5  # (~0.9 measured)
    assert heavy.loop_step_seconds is not None and heavy.loop_step_seconds >= 0.002
    assert all((s.loop_share or 0.0) < 0.2 for s in (stats.stages[0], stats.stages[2]))
    neck = stats.bottleneck
    assert neck is not None and neck.where == "cpu_heavy"
    assert "holds the event loop" in neck.why
    assert 'executor="thread"' in neck.why and 'executor="process"' in neck.why
    text = str(stats)
    assert "event loop: blocked up to" in text  # (the latencies include the waits)
    assert text.splitlines()[0].split()[-1] == "loop"
    # One warning for the run, naming the stage and the fix.
    warnings = [r.getMessage() for r in caplog.records if BLOCKED in r.getMessage()]
    assert len(warnings) == 1
    assert "'cpu_heavy'" in warnings[0] and 'executor="process"' in warnings[0]
    assert stats.loop_lag_max >= 0.25


async def test_an_async_def_that_blocks_between_its_awaits_is_named() -> None:
    # Each step of an async def's coroutine is timed, not the call's whole latency:
    # ``slow_io`` waits long without holding the loop, ``parse`` holds it at each step.
    @single_task
    async def slow_io(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    @single_task
    async def parse(x: int) -> int:
        await asyncio.sleep(0)
        spin(0.0015)
        await asyncio.sleep(0)
        spin(0.0015)
        return x

    stream = (slow_io | parse).with_context(max_in_flight=50)(range(200))
    assert len(await stream.collect()) == 200
    stats = stream.stats
    assert (stats.stage("slow_io").loop_share or 0.0) < 0.2
    neck = stats.bottleneck
    assert neck is not None and neck.where == "parse" and "holds the event loop" in neck.why


async def test_a_generator_expanded_on_the_loop_is_timed_at_each_step() -> None:
    @single_task
    def chunks(x: int):  # type: ignore[no-untyped-def]
        for i in range(3):
            spin(0.001)  # each value costs the loop a millisecond
            yield x * 3 + i

    stream = (fetch | chunks).with_context(max_in_flight=30)(range(100))
    assert sorted(await stream.collect()) == list(range(300))
    gen = stream.stats.stage("chunks")
    assert gen.loop_call_seconds is not None and gen.loop_call_seconds >= 0.0025  # 3 steps
    assert gen.loop_step_seconds is not None and gen.loop_step_seconds >= 0.0006
    neck = stream.stats.bottleneck
    assert neck is not None and neck.where == "chunks"


@pytest.mark.skipif(
    os.environ.get("CONVEYOR_TEST_LOOP") == "uvloop",
    reason="the saturation verdict reads timers running late; uvloop's ran on time under "
    "many cheap steps (30,000 items, 0.74 s: 'the busiest stage' instead), on 52d95b4 too",
)
async def test_a_saturated_loop_is_its_own_verdict() -> None:
    # Many cheap steps (no stage blocks the loop), more than the loop gets through
    # between two ticks: the consumer, whose loop body is empty, is not blamed.
    @single_task
    async def hop(x: int) -> int:
        for _ in range(20):
            await asyncio.sleep(0)
        return x

    stream = hop.with_context(max_in_flight=5000)(range(6000))
    async for _ in stream:
        pass
    stats = stream.stats
    neck = stats.bottleneck
    assert neck is not None and neck.where == "event loop", str(stats)
    assert "saturated" in neck.why and "max_in_flight" in neck.why
    assert (stats.stage("hop").loop_step_seconds or 1.0) < 1e-4


@pytest.mark.looptime
async def test_a_concurrency_limit_above_the_window_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor")

    @single_task(concurrency_limit=10_000)
    async def nap(x: int) -> int:
        await asyncio.sleep(1)
        return x

    stream = nap.with_context(max_in_flight=100)(range(2000))
    assert len(await stream.collect()) == 2000
    assert stream.stats.elapsed == pytest.approx(20, abs=0.5)  # 100 at once, not 2,000
    neck = stream.stats.bottleneck
    assert neck is not None and neck.where == "nap"
    assert "window's limit (max_in_flight=100" in neck.why
    assert "concurrency_limit of 10,000 is never reached" in neck.why
    assert "raise PipelineContext(max_in_flight=...)" in neck.why
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'nap' can never reach its concurrency limit of 10000" in warning
    assert "max_in_flight=100" in warning
    assert stream.stats.stage("nap").window_capped_share == pytest.approx(1.0, abs=0.05)


@pytest.mark.looptime
async def test_a_reachable_limit_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor")

    @single_task(concurrency_limit=100)
    async def nap(x: int) -> int:
        await asyncio.sleep(1)
        return x

    assert len(await nap.with_context(max_in_flight=100)(range(300)).collect()) == 300
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_thread_pool_at_its_size_is_a_limit() -> None:
    @single_task(executor="thread:2")
    def blocking_io(x: int) -> int:
        time.sleep(0.02)
        return x

    stream = blocking_io(range(40))
    assert len(await stream.collect()) == 40
    stats = stream.stats.stage("blocking_io")
    assert stats.pool_size == 2 and stats.limit is None
    neck = stream.stats.bottleneck
    assert neck is not None and neck.where == "blocking_io"
    assert "at its limit (2 at once: its thread pool's size)" in neck.why
    assert 'executor="thread:N"' in neck.why


@pytest.mark.looptime
async def test_a_rate_limit_is_in_both_charts() -> None:
    @single_task(rate_limit=(5, 1.0))
    async def polite(x: int) -> int:
        return x

    assert '<br/>rate limit 5 calls per 1 s"]' in polite.to_mermaid()
    stream = polite(range(20))
    assert len(await stream.collect()) == 20
    chart = stream.stats.to_mermaid()
    assert "<br/>rate limit 5 calls per 1 s<br/>" in chart
    assert "class s0 bottleneck" in chart


# -- the timed steps change nothing of a call's semantics -----------------------------------


@pytest.mark.looptime
async def test_timed_calls_time_out_and_are_cancelled_as_any_other() -> None:
    # A stage's first 8 calls are all timed, each step through the stepping wrapper: a
    # timeout still cancels the call inside its coroutine, and the policy sees it.
    cleaned: list[int] = []

    @single_task(timeout=0.5, on_error="skip_item")
    async def stuck(x: int) -> int:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(x)
        return x

    stream = stuck(range(10))
    assert await stream.collect() == []
    assert stream.stats.stage("stuck").skipped == 10 and sorted(cleaned) == list(range(10))
    assert stream.stats.elapsed == pytest.approx(0.5, abs=0.05)


async def test_a_timed_generator_closed_early_runs_its_finally() -> None:
    closed: list[int] = []

    @single_task
    def count(x: int):  # type: ignore[no-untyped-def]
        try:
            yield from range(x * 1000, x * 1000 + 1000)
        finally:
            closed.append(x)

    @single_task
    async def agen(x: int):  # type: ignore[no-untyped-def]
        try:
            for i in range(1000):
                await asyncio.sleep(0)
                yield i
        finally:
            closed.append(-1 - x)

    for task in (count, agen):
        closed.clear()
        stream = task(range(3))
        async with stream:
            async for _ in stream:
                break
        assert closed  # (the expansions started were closed, through the timing wrapper)


def test_a_stage_that_sends_its_calls_off_the_loop_is_not_told_to() -> None:
    """A process stage's hand-offs can hold the loop (its workers starting): the warning
    says so, and gives no executor= advice (it said "its calls run on the loop: run it
    with executor=..." of a stage on executor="process")."""
    from conveyor._engine._loop import LOOP_FIX, culprit

    said = culprit("abs", 0.568, inline=False)
    assert "abs" in said and "its executor" in said and LOOP_FIX not in said
    assert LOOP_FIX in culprit("abs", 0.568)


async def test_a_process_stage_is_never_the_loops_holder() -> None:
    """The bottleneck rule's loop holder is a stage on the loop only."""
    from conveyor._bottleneck import _loop_bottleneck

    sent = single_task(executor="process")(abs)  # (a builtin: pickled by name)
    stream = sent(range(20))
    await stream.collect()
    stats = stream.stats
    figures = dataclasses.replace(
        stats,
        stages=[
            dataclasses.replace(s, loop_share=1.0, loop_step_seconds=1.0) for s in stats.stages
        ],
    )
    verdict = _loop_bottleneck(figures)
    assert verdict is None or verdict[0] != "abs", verdict
