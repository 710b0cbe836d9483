"""Answers settled in bulk (``conveyor._engine._calls.Answer`` and ``hand_on``).

The items that conveyor's own executors send off the loop (process chunks, its thread
pool) are Answers, not a Future each: their sender settles every item that came back and
hands them on together, in order, in one loop callback (a chunk's answer, a wake-up of
the loop by the threads). These tests hold the rules that must survive that: input
order, each item's policy, a failing item failing alone, retries and timeouts (an Answer
awaited in a task), and the byte bound with the pickled copies.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workers

from conveyor import Failure, single_task
from conveyor._engine import _chunks, _threads
from conveyor._engine._calls import AWAIT, Answer, hand_on, kind_of


@pytest.fixture(autouse=True)
def no_children() -> Any:
    yield
    assert multiprocessing.active_children() == []  # (joins the exited ones)


class HandOns:
    """``hand_on`` as a sender calls it, recorded: how many answers each call hands on,
    and whether every one of them was settled (its waiter told) before the call returned."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.left_waiting = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, answers: list[Answer]) -> None:
        hand_on(loop, answers)
        if answers:
            self.sizes.append(len(answers))
        self.left_waiting += sum(answer.waiter is not None for answer in answers)


# -- the Answer itself ------------------------------------------------------------------------


async def test_answers_are_handed_on_in_order_once_each() -> None:
    loop = asyncio.get_running_loop()
    told: list[tuple[int, Any]] = []
    answers = [Answer(n) for n in range(5)]
    for answer in answers:
        answer.waiter = lambda a: told.append((a.item, a.result()))
    assert kind_of(Answer) == AWAIT and not answers[0].done()
    for answer in answers:
        answer.set_result(answer.item * 10)
    hand_on(loop, answers)
    hand_on(loop, answers)  # (told once: the waiter is let go)
    assert told == [(n, n * 10) for n in range(5)]


async def test_a_waiter_that_raises_does_not_keep_the_others_from_theirs() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    told: list[Any] = []

    def waiter(answer: Answer) -> None:
        if answer.item == 1:
            raise RuntimeError("a broken waiter")
        told.append(answer.item)

    answers = [Answer(n) for n in range(3)]
    for answer in answers:
        answer.waiter = waiter
        answer.set_exception(ValueError(answer.item))
    try:
        hand_on(loop, answers)
    finally:
        loop.set_exception_handler(previous)
    assert told == [0, 2]
    [context] = reported
    assert isinstance(context["exception"], RuntimeError)


async def test_an_answer_awaited_in_a_task_and_its_cancellation() -> None:
    loop = asyncio.get_running_loop()
    answer = Answer("x")
    waiting = asyncio.ensure_future(asyncio.wait_for(_awaited(answer), 10))
    await asyncio.sleep(0)
    answer.set_result(42)
    hand_on(loop, [answer])
    assert await waiting == 42

    # A task cancelled while it awaits an Answer cancels it: an item not yet sent is not
    # sent, and its result, if it comes, is dropped.
    unsent = Answer("y")
    waiting = asyncio.ensure_future(_awaited(unsent))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert unsent.cancelled()
    with pytest.raises(asyncio.CancelledError):
        unsent.result()

    failed = Answer("z")
    failed.set_exception(KeyError("z"))
    with pytest.raises(KeyError):
        await _awaited(failed)  # (settled already: no bridge)


async def _awaited(answer: Answer) -> Any:
    return await answer


# -- process chunks -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
async def test_a_chunk_is_handed_on_in_bulk_in_input_order_with_each_items_policy(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = HandOns()
    monkeypatch.setattr(_chunks, "hand_on", record)
    task = single_task(executor="process:2", on_error="emit", chunk_size=50)(
        workers.fail_on_multiples_of_three
    )
    out = await task.with_execution_mode(mode)(range(400)).collect()
    shown = [f"F{r.item}" if isinstance(r, Failure) else r for r in out]
    expected = [f"F{n}" if n % 3 == 0 else n for n in range(400)]
    assert (shown if mode == "ordered" else sorted(shown, key=str)) == (
        expected if mode == "ordered" else sorted(expected, key=str)
    )
    # One hand-on per chunk, every item of it settled there: no loop callback per item.
    assert sum(record.sizes) == 400 and record.left_waiting == 0
    assert len(record.sizes) <= 40 and max(record.sizes) >= 25, record.sizes
    for failure in out:
        if isinstance(failure, Failure):  # each failing item, its own exception and note
            assert str(failure.exception) == f"bad item {failure.item}"
            notes = "\n".join(failure.exception.__notes__)
            assert notes.count("in a worker process") == 1


async def test_a_failing_item_in_a_bulk_settled_chunk_fails_alone() -> None:
    task = single_task(executor="process:2", on_error="skip_item", chunk_size=30)(
        workers.fail_on_multiples_of_three
    )
    stream = task(range(90))
    out = await stream.collect()
    assert out == [n for n in range(90) if n % 3]
    assert stream.stats.stages[0].skipped == 30


async def test_retries_and_timeouts_of_bulk_settled_items(tmp_path: Path) -> None:
    # A retried item is sent again from its call's task (an Answer awaited there), in a
    # chunk of its own or with others; its neighbours are settled in bulk meanwhile.
    retried = single_task(executor="process:2", retry_attempts=2, retry_delay=0, chunk_size=20)(
        functools.partial(workers.fail_once, folder=str(tmp_path))
    )
    assert await retried(range(100)).collect() == list(range(100))
    # A timeout: the call's task awaits its Answer; the one that timed out fails alone.
    timed = single_task(executor="process:2", timeout=0.5, on_error="emit", chunk_size=1)(
        workers.sleep_for
    )
    out = await timed([0.01, 2.0, 0.01]).collect()
    assert out[0] == 0.01 and out[2] == 0.01
    assert isinstance(out[1], Failure) and isinstance(out[1].exception, TimeoutError)


async def test_the_byte_bound_holds_with_bulk_settlement() -> None:
    """Chunks settled in bulk give their window places back (their items', and their
    pickled copies') as their answers arrive: the input is read on within the bound, a
    failing item gives its place back too, and the run ends."""
    mb = 1 << 20

    def blocks() -> Iterator[bytes]:
        for n in range(60):
            yield bytes([n % 256]) * (mb // 4)

    task = single_task(executor="process:2", on_error="skip_item")(workers.fail_on_short_block)
    stream = task.with_context(max_in_flight_bytes=4 * mb)(blocks())
    out = await stream.collect()
    assert [block[0] for block in out] == [n for n in range(60) if n % 5]
    assert stream.stats.input_admitted_at_once <= 16


# -- the thread pool ----------------------------------------------------------------------


async def test_thread_answers_are_handed_on_together(monkeypatch: pytest.MonkeyPatch) -> None:
    record = HandOns()
    monkeypatch.setattr(_threads, "hand_on", record)
    task = single_task(executor="thread:8", on_error="emit")(workers.fail_on_multiples_of_three)
    out = await task(range(300)).collect()
    shown = [f"F{r.item}" if isinstance(r, Failure) else r for r in out]
    assert shown == [f"F{n}" if n % 3 == 0 else n for n in range(300)]
    assert sum(record.sizes) == 300 and record.left_waiting == 0
