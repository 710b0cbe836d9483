"""Reading a run's input: lazily, never ahead of the window, yielding to the loop.

The pump admits each item (one window token) into the first stage. It waits for room
before reading on, so the input is never read ahead of the window, and it yields to the
event loop at least every ``PUMP_SLICE`` seconds while reading an input that never
suspends, so the consumer sees early results. Whatever the input raises reaches the
consumer with a note saying so; the input is closed when the pump ends, however it ends.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import Failure
from ..feedback import Feedback
from ._bind import complete

if TYPE_CHECKING:
    from ._fused import TightLoop
    from ._run import Run
    from ._weight import Weigher

NO_INPUT: Any = object()
"""Input of a run that calls its first task once, with no item (a source task)."""


class _NoItem:
    """What the first stage of a run with no input is called on (its function is called
    without an item): named in error notes and Failure records."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "no item (the pipeline was called without input: pipeline())"


NO_ITEM: Any = _NoItem()

PUMP_SLICE = 0.005

_NOTE = "conveyor: raised while reading the pipeline's input"


async def pump(run: Run, source: Any, fused: TightLoop | None = None) -> None:
    """Feed ``source`` into the run's first stage (the caller closes it); a plain input
    through ``fused``, if the run has a tight loop (see ``_fused``)."""
    if source is NO_INPUT:
        run.window.take(1)
        run.entry.push(NO_ITEM, None)
    elif isinstance(source, Feedback):
        await _pump_feedback(run, source)
    elif isinstance(source, AsyncIterable):
        await _pump_async(run, source)
    else:
        await _pump_sync(run, source, fused)


async def _pump_sync(run: Run, source: Iterable[Any], fused: TightLoop | None) -> None:
    try:
        items = iter(source)
    except Exception as exc:
        exc.add_note(_NOTE)
        raise
    weigher = run.weigher
    if weigher is not None and not await _pump_weighed(run, items, weigher):
        return  # (the input ended, or the run closed, while its items were weighed)
    if fused is None or await fused.pump(items, _NOTE, PUMP_SLICE):
        await _pump_plain(run, items)  # (all of it, or the rest: most items escaped)


async def _pump_weighed(run: Run, items: Iterator[Any], weigher: Weigher) -> bool:
    """Admit items while they are weighed (see ``_weight``): an item at a time, as the
    async pump does. True when the input goes on and its items have no weight."""
    window = run.window
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    while weigher.active:
        if window.full():
            await window.wait_for_room()
            deadline = loop_time() + PUMP_SLICE
        elif loop_time() >= deadline:
            await asyncio.sleep(0)
            deadline = loop_time() + PUMP_SLICE
        if run.closed:
            return False
        try:
            item = next(items)
        except StopIteration:
            return False
        except Exception as exc:
            exc.add_note(_NOTE)
            raise
        weigher.weigh(item)
        window.take(1)
        run.entry.push(item, None)
    return not run.closed


async def _pump_plain(run: Run, source: Iterator[Any]) -> None:
    entry = run.entry
    window = run.window
    push = entry.push
    # The first stage's call, minus SingleStage.push's limit check, for a stage without a
    # limit that is not observed: one call fewer per item.
    direct = run.direct_entry
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    count = 0
    try:
        # Admitting an item cannot raise (stages catch what tasks raise), so what is
        # caught here came from the input.
        for item in source:
            window.tokens += 1  # window.take(1), inlined: once per item
            if direct is not None and type(item) is not Failure:
                direct(item, None)
            else:
                push(item, None)
            if run.closed:  # a task failed the run while the item went through
                return
            # Wait before reading on: the input is not read ahead of the window.
            if window.tokens >= window.admit:
                await window.wait_for_room()
                deadline = loop_time() + PUMP_SLICE
            count += 1
            if not count & 63 and loop_time() >= deadline:
                await asyncio.sleep(0)
                deadline = loop_time() + PUMP_SLICE
    except Exception as exc:
        exc.add_note(_NOTE)
        raise


async def _pump_async(run: Run, source: AsyncIterable[Any]) -> None:
    try:
        iterator = aiter(source)
    except Exception as exc:
        exc.add_note(_NOTE)
        raise
    if iterator is source:  # (the caller closes the input itself)
        await _pump_iterator(run, iterator)
        return
    try:  # an async iterable's iterator is the run's own: closed here, not left to GC
        await _pump_iterator(run, iterator)
    finally:
        await close_source(iterator)


async def _pump_iterator(run: Run, iterator: AsyncIterator[Any]) -> None:
    window = run.window
    push = run.entry.push
    weigher = run.weigher
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    count = 0
    while not run.closed:
        if window.full():
            await window.wait_for_room()
            deadline = loop_time() + PUMP_SLICE
            continue
        try:
            item = await anext(iterator)
        except StopAsyncIteration:
            return
        except Exception as exc:
            exc.add_note(_NOTE)
            raise
        if weigher is not None:
            if weigher.active:
                weigher.weigh(item)
            else:
                weigher = None
        window.take(1)
        push(item, None)
        count += 1
        if not count & 63 and loop_time() >= deadline:
            await asyncio.sleep(0)
            deadline = loop_time() + PUMP_SLICE


async def _pump_feedback(run: Run, feed: Feedback[Any]) -> None:
    """Feed a :class:`~conveyor.feedback.Feedback` until no work is left.

    The pump waits for items when the feed is empty. It ends when the feed is empty, no
    item is left in the run (no token) and the consumer waits for a result: then no task
    and no consumer can put more. Whoever may make that true wakes it: ``put``, the
    window when nothing is working (``on_idle``), the consumer when it starts waiting.
    Only partial batches left, with nothing else to do: the input has ended for them, and
    the remainder rule applies as at any input's end (``Run.input_ended``). Items are
    weighed as the other pumps weigh theirs (``max_in_flight_bytes``).
    """
    if feed.loop is not None or feed.ended:
        raise RuntimeError("a Feedback serves one run: make a new one for each run")
    window = run.window
    push = run.entry.push
    weigher = run.weigher
    waiter: asyncio.Future[None] | None = None

    def wake() -> None:
        if waiter is not None and not waiter.done():
            window.wake(waiter, None)

    def idle() -> None:
        """Nothing works, or the consumer started waiting: is the run over?"""
        if waiter is None or feed.queue or run.consumer is None or window.busy:
            return
        if window.tokens:
            run.input_ended()  # (partial batches: flushed, or dropped below min_size)
        if not window.tokens:
            wake()  # (the pump sees it and ends)

    feed.loop, feed.thread, feed.wake = run.loop, threading.get_ident(), wake
    window.on_idle = run.on_consumer_wait = idle
    try:
        count = 0
        while not run.closed:
            if feed.queue:
                if window.full():
                    await window.wait_for_room()
                    continue
                item = feed.queue.popleft()
                if weigher is not None and weigher.active:
                    weigher.weigh(item)
                window.take(1)
                push(item, None)
                count += 1
                if not count & 63:
                    await asyncio.sleep(0)
            elif not window.tokens and run.consumer is not None:
                return
            else:
                waiter = run.loop.create_future()
                window.busy -= 1  # waiting is not working (see _window)
                try:
                    if not window.busy:
                        window.check_stall()
                    await waiter
                finally:
                    window.resumed(waiter)
                    waiter = None
    finally:
        feed.ended = True
        feed.wake = None
        window.on_idle = run.on_consumer_wait = None


async def close_source(source: Any) -> None:
    """Close an input the run was given: async generators/streams and generators.

    The closing runs to its end even if the caller (the run's supervisor, being
    cancelled with the run) is cancelled meanwhile (see ``_bind.complete``): a source
    that reads on a thread is closed and its thread has ended when this returns or
    raises, on every exit of the run, errors included.
    """
    aclose = getattr(source, "aclose", None)
    if aclose is not None and (inspect.isasyncgen(source) or hasattr(source, "__anext__")):
        await complete(aclose())
    elif inspect.isgenerator(source):
        source.close()
