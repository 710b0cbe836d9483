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
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import Failure
from ..feedback import Feedback
from ._bind import complete

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._order import Sink
    from ._weight import Weigher


class Loop(Protocol):
    """A run's tight loop (``_fused.TightLoop``), as the pump sees it."""

    async def pump(self, items: Iterator[Any], note: str, every: float) -> bool:
        """Feed ``items`` through the loop; True: go on item by item with the rest."""
        ...


class Fed(Protocol):
    """A run (``_run.Run``), as the pump that feeds it sees it."""

    loop: asyncio.AbstractEventLoop
    ledger: Ledger
    weigher: Weigher | None
    consumer: asyncio.Future[None] | None  # the consumer's waiter, while it waits
    feedback: FeedbackPump | None  # the pump of a Feedback input

    @property
    def entry(self) -> Sink:
        """Where the input's items go: the first stage."""
        ...

    @property
    def direct_entry(self) -> Callable[[Any, Any, Any], None] | None:
        """The first stage's call, when the pump may make it directly."""
        ...

    @property
    def closed(self) -> bool: ...

    def working(self) -> bool:
        """Whether the run works: a task of it, or a run of its branch stages (see
        ``_branch``), or a result is ready for its consumer."""
        ...


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


async def pump(run: Fed, source: Any, fused: Loop | None = None) -> None:
    """Feed ``source`` into the run's first stage (the caller closes it); a plain input
    through ``fused``, if the run has a tight loop (see ``_fused``)."""
    if source is NO_INPUT:
        run.ledger.admitted()
        run.entry.push(NO_ITEM, None, None)
    elif isinstance(source, Feedback):
        assert run.feedback is not None  # (built with the run: see Run.__init__)
        await run.feedback.pump()
    elif isinstance(source, AsyncIterable):
        await _pump_async(run, source)
    else:
        await _pump_sync(run, source, fused)


async def _pump_sync(run: Fed, source: Iterable[Any], fused: Loop | None) -> None:
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


async def _pump_weighed(run: Fed, items: Iterator[Any], weigher: Weigher) -> bool:
    """Admit items while they are weighed (see ``_weight``): an item at a time, as the
    async pump does. True when the input goes on and its items have no weight."""
    ledger = run.ledger
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    while weigher.active:
        if ledger.full():
            await ledger.wait_for_room()
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
        ledger.admitted()
        run.entry.push(item, None, None)
    return not run.closed


async def _pump_plain(run: Fed, source: Iterator[Any]) -> None:
    entry = run.entry
    ledger = run.ledger
    push = entry.push
    admitted = ledger.admitted
    # The first stage's call, minus SingleStage.push's limit check, for a stage without a
    # limit that is not observed: one call fewer per item.
    direct = run.direct_entry
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    count = 0
    try:
        # The tight loop may hand the rest of the input over with the window full (a
        # slice fills the room left): wait for room before the first read as after each.
        if ledger.tokens >= ledger.admit:
            await ledger.wait_for_room()
            deadline = loop_time() + PUMP_SLICE
        # Admitting an item cannot raise (stages catch what tasks raise), so what is
        # caught here came from the input.
        for item in source:
            admitted()
            if direct is not None and type(item) is not Failure:
                direct(item, None, None)
            else:
                push(item, None, None)
            if run.closed:  # a task failed the run while the item went through
                return
            # Wait before reading on: the input is not read ahead of the window.
            if ledger.tokens >= ledger.admit:
                await ledger.wait_for_room()
                deadline = loop_time() + PUMP_SLICE
            count += 1
            if not count & 63 and loop_time() >= deadline:
                await asyncio.sleep(0)
                deadline = loop_time() + PUMP_SLICE
    except Exception as exc:
        exc.add_note(_NOTE)
        raise


async def _pump_async(run: Fed, source: AsyncIterable[Any]) -> None:
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


async def _pump_iterator(run: Fed, iterator: AsyncIterator[Any]) -> None:
    ledger = run.ledger
    push = run.entry.push
    weigher = run.weigher
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    count = 0
    while not run.closed:
        if ledger.full():
            await ledger.wait_for_room()
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
        ledger.admitted()
        push(item, None, None)
        count += 1
        if not count & 63 and loop_time() >= deadline:
            await asyncio.sleep(0)
            deadline = loop_time() + PUMP_SLICE


async def pump_origins(run: Fed, source: Any, tagged: bool) -> None:
    """Feed ``source`` with an origin for each item (``pipeline.with_items()``, a
    branch's run: see ``_origin``), item by item as the async pump does. ``tagged``: the
    input gives ``(item, tag)`` pairs, and each item's origin stands for its tag, with
    its key (a branch's join: see ``_branch``)."""
    if source is NO_INPUT:  # (a source task's results descend from no input item)
        await pump(run, source)
        return
    is_async = isinstance(source, AsyncIterable)
    try:
        items: Any = aiter(source) if is_async else iter(source)
    except Exception as exc:
        exc.add_note(_NOTE)
        raise
    ledger = run.ledger
    push = run.entry.push
    weigher = run.weigher
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    count = 0
    try:
        while not run.closed:
            if ledger.full():
                await ledger.wait_for_room()
                deadline = loop_time() + PUMP_SLICE
                continue
            try:
                item = await anext(items) if is_async else next(items)
            except (StopIteration, StopAsyncIteration):
                return
            except Exception as exc:
                exc.add_note(_NOTE)
                raise
            tag, key = item, None
            if tagged:
                item, tag = item
                key = tag.key
            if weigher is not None and weigher.active:
                weigher.weigh(item)
            ledger.admitted()
            push(item, None, ledger.origin_admitted(key, tag))
            count += 1
            if not count & 63 and loop_time() >= deadline:
                await asyncio.sleep(0)
                deadline = loop_time() + PUMP_SLICE
    finally:
        if is_async and items is not source:  # (an iterable's iterator is the run's own)
            await close_source(items)


class FeedbackPump:
    """Feeds a :class:`~conveyor.feedback.Feedback` until no work is left.

    The pump waits for items when the feed is empty. It ends when the feed is empty, no
    item is left in the run (no token) and the consumer waits for a result: then no task
    and no consumer can put more. Whoever may make that true wakes it: ``put``, the
    ledger when nothing is working, the consumer when it starts waiting (both call
    :meth:`idle`: the run gives it to them when it is built). Only partial batches left,
    with nothing else to do: the input has ended for them, and the remainder rule applies
    as at any input's end (``Ledger.input_ended``). Items are weighed as the other pumps
    weigh theirs (``max_in_flight_bytes``).
    """

    __slots__ = ("feed", "run", "waiter")

    def __init__(self, run: Fed, feed: Feedback[Any]) -> None:
        self.run = run
        self.feed = feed
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.run.ledger.wake(waiter, None)

    def idle(self) -> None:
        """Nothing works, or the consumer started waiting: is the run over?"""
        run = self.run
        ledger = run.ledger
        if self.waiter is None or self.feed.queue or run.consumer is None or run.working():
            return
        if ledger.tokens:
            ledger.input_ended()  # (partial batches: flushed, or dropped below min_size)
        if not ledger.tokens:
            self.wake()  # (the pump sees it and ends)

    async def pump(self) -> None:
        run = self.run
        feed = self.feed
        feed.serve(self.wake)
        ledger = run.ledger
        push = run.entry.push
        weigher = run.weigher
        try:
            count = 0
            while not run.closed:
                if feed.queue:
                    if ledger.full():
                        await ledger.wait_for_room()
                        continue
                    item = feed.queue.popleft()
                    if weigher is not None and weigher.active:
                        weigher.weigh(item)
                    ledger.admitted()
                    push(item, None, None)
                    count += 1
                    if not count & 63:
                        await asyncio.sleep(0)
                elif not ledger.tokens and run.consumer is not None:
                    return
                else:
                    waiter = self.waiter = run.loop.create_future()
                    ledger.work_stopped()  # waiting is not working (a stall?)
                    try:
                        await waiter
                    finally:
                        ledger.resumed(waiter)
                        self.waiter = None
        finally:
            feed.served()


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
