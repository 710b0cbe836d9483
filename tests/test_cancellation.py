"""Early exit at random points: everything in flight is cancelled and the input closed.

Each way a consumer can stop early is tried on random pipelines, after a random number
of results: ``break`` out of ``async for`` (no reference to the stream kept), an
exception in the loop body, ``aclose()``, leaving ``async with``, and cancelling the
consuming task. Afterwards no task may be pending, the loop must have reported nothing,
and the input generator must have been closed.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import leftover_tasks, run_on_virtual_clock, settle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_model import StageSpec, build, on_real_clock, pipelines

from conveyor import Pipeline, single_task

EXITS = ["break", "raise", "aclose", "async_with", "cancel"]


class Stop(Exception):
    pass


def run_and_stop_early(
    specs: list[StageSpec], n_items: int, stop_after: int, how: str, kind: str, mode: str
) -> dict[str, Any]:
    state: dict[str, Any] = {"closed": False, "pulled": 0, "got": 0}
    # Statistics on (the default) or off, by the example: both paths must clean up.
    pipeline = build(specs).with_context(
        execution_mode=mode, max_in_flight=8, statistics=stop_after % 2 == 0
    )
    real = on_real_clock(specs)  # (see run_on_virtual_clock)
    if real:
        # Real delays add up: 2,000 items through a generator stage with a concurrency
        # limit of 1 and 0-15 ms per value took 94 s, past the deadlock timeout.
        n_items = min(n_items, 100)

    def generator() -> Iterator[int]:
        try:
            for i in range(n_items):
                state["pulled"] += 1
                yield i
        finally:
            state["closed"] = True

    async def async_generator() -> AsyncIterator[int]:
        try:
            for i in range(n_items):
                state["pulled"] += 1
                await asyncio.sleep(0 if real else 0.1)
                yield i
        finally:
            state["closed"] = True

    def source() -> Any:
        return generator() if kind == "generator" else async_generator()

    async def consume() -> None:
        if how == "break":
            async for _ in pipeline(source()):
                state["got"] += 1
                if state["got"] >= stop_after:
                    state["pulled_at_stop"] = state["pulled"]
                    break
        elif how == "raise":
            try:
                async for _ in pipeline(source()):
                    state["got"] += 1
                    if state["got"] >= stop_after:
                        state["pulled_at_stop"] = state["pulled"]
                        raise Stop
            except Stop:
                pass
        elif how == "aclose":
            stream = pipeline(source())
            async for _ in stream:
                state["got"] += 1
                if state["got"] >= stop_after:
                    state["pulled_at_stop"] = state["pulled"]
                    break
            await stream.aclose()
        elif how == "async_with":
            async with pipeline(source()) as stream:
                async for _ in stream:
                    state["got"] += 1
                    if state["got"] >= stop_after:
                        state["pulled_at_stop"] = state["pulled"]
                        break
        else:  # cancel the consuming task from outside
            reached = asyncio.Event()

            async def loop_forever() -> None:
                async for _ in pipeline(source()):
                    state["got"] += 1
                    if state["got"] >= stop_after:
                        reached.set()
                    await asyncio.sleep(0)

            consumer = asyncio.create_task(loop_forever())
            waiting = asyncio.create_task(reached.wait())
            await asyncio.wait({consumer, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if consumer.done():  # the pipeline ran out before the stop point
                await consumer
                return
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer

    async def drive() -> None:
        before = asyncio.all_tasks()
        try:
            await consume()
        except Exception as exc:  # a random pipeline may fail before the stop point
            state["error"] = exc
        gc.collect()
        for _ in range(20):
            await asyncio.sleep(0)
        # A run that was not closed explicitly (break) closes its own pools in the
        # background: threads and processes take real time to exit (up to 5 s here).
        for _ in range(500 if real else 0):
            if not [t for t in asyncio.all_tasks() - before if not t.done()]:
                break
            await asyncio.sleep(0.01)
        state["leftover"] = [t for t in asyncio.all_tasks() - before if not t.done()]

    errors: list[dict[str, Any]] = []
    run_on_virtual_clock(drive(), errors, 60.0 if real else 100_000.0, virtual=not real)
    state["loop_errors"] = errors
    return state


@settings(
    max_examples=max(200, settings.default.max_examples // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    specs=pipelines(failures=False),
    stop_after=st.integers(1, 10),
    how=st.sampled_from(EXITS),
    kind=st.sampled_from(["generator", "async_generator"]),
    mode=st.sampled_from(["ordered", "as_completed"]),
)
def test_early_exit_cancels_everything_and_closes_the_input(
    specs: list[StageSpec], stop_after: int, how: str, kind: str, mode: str
) -> None:
    state = run_and_stop_early(specs, 2_000, stop_after, how, kind, mode)
    assert not state["leftover"], f"tasks left pending after {how}: {state['leftover']}"
    assert not state["loop_errors"], state["loop_errors"]
    assert state["closed"], f"input generator not closed after {how}"
    if state["got"] >= stop_after and how != "cancel":
        # The input is pulled lazily: nothing is read after the consumer stops. (A
        # cancelled consumer yields to the loop once more before it is cancelled.)
        assert state["pulled"] == state["pulled_at_stop"], state


@pytest.mark.looptime
async def test_in_flight_calls_are_cancelled_on_break() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    @single_task
    async def slow(x: int) -> int:
        started.append(x)
        try:
            await asyncio.sleep(10 if x else 0)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async for _ in slow(range(5)):
        break
    await settle()
    assert started == [0, 1, 2, 3, 4]
    assert sorted(cancelled) == [1, 2, 3, 4]
    assert not leftover_tasks()


@pytest.mark.looptime
async def test_endless_input_closed_promptly_on_break() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    @single_task
    async def double(x: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * x

    results = []
    async for value in double(endless()):
        results.append(value)
        if len(results) == 3:
            break
    await settle()
    assert results == [0, 2, 4]
    assert closed.is_set()
    assert not leftover_tasks()


async def test_cancelling_the_consumer_cancels_the_run() -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    @single_task
    async def wait_forever(x: int) -> int:
        entered.set()
        await gate.wait()
        return x

    async def consume() -> list[int]:
        return await wait_forever([1, 2, 3]).collect()

    consumer = asyncio.create_task(consume())
    await entered.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await settle()
    assert not leftover_tasks()


async def test_consumer_error_with_async_with_closes_everything() -> None:
    closed = []

    def source() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    @single_task
    async def slow(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    with pytest.raises(Stop):
        async with slow(source()) as stream:
            async for _ in stream:
                raise Stop
    assert closed == [True]
    assert not leftover_tasks()


@pytest.mark.parametrize("where", ["first step", "after a suspension", "late in the run"])
@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_call_cancelled_from_outside_fails_the_run(where: str, mode: str) -> None:
    # Not the run's own cancellation: the consumer gets an error naming the task and its
    # own item (not a hang, and not a CancelledError it would take for its own).
    bad = 40 if where == "late in the run" else 3

    @single_task
    async def rogue(x: int) -> int:
        if where != "first step":
            await asyncio.sleep(0)
        if x == bad:
            if where == "first step":
                raise asyncio.CancelledError
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(1)
        return x

    stream = Pipeline([rogue]).with_execution_mode(mode)(range(64))
    with pytest.raises(RuntimeError, match="cancelled from outside") as info:
        await stream.collect()
    assert info.value.__notes__ == [f"conveyor: raised by task 'rogue' on {bad}"]
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
