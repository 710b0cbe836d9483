"""``Feedback``: an input that the run's own results can extend (recursive work).

A crawler finds links on the pages it fetches; a tree walker finds children; a solver
finds sub-problems. Each found item must go back into the same pipeline, and the run
must end when no work is left: nothing queued, nothing in flight, and nothing the
consumer is about to add. ``Feedback`` is that input::

    feed = Feedback(seeds, unique=True)
    async for page in (fetch | parse)(feed):
        feed.extend(page.links)  # more work for the same run

**When the run ends.** The pipeline reads the feed like any input, in the order items
were put. It ends once the feed is empty, no item is left anywhere in the run (calls,
batches, expansions, results not yet taken) and the consumer is waiting for the next
result: then nobody can put more. A consumer that puts items in its loop body (or a task
that puts them during its call) is always in time. When only partial batches are left,
the input has ended for them: the remainder rule applies as at any input's end (sent off
if at least ``min_size``, else dropped and counted), one rule for every input.

**Bounds.** The run's window paces the feed as any input (``max_in_flight``). The queue
of items put and not yet read is not bounded by the window: ``max_items`` caps how many
items the feed takes in all (a crawl's page budget), and ``unique=True`` (or ``key=``)
drops items seen before; the set of seen keys grows with the distinct items.

A feed serves one run. ``put`` may be called from the event loop's thread (the consumer,
an ``async def`` task) or from a task on a thread (it is handed to the loop). With the
synchronous front door (``pipeline.iter(feed)``) the consumer's loop body runs in another
thread than the run, which cannot tell when that body is done: put from the tasks there.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["Feedback"]

T = TypeVar("T")


class Feedback(Generic[T]):
    """An input that grows while its run goes on (see the module's docstring)."""

    def __init__(
        self,
        items: Iterable[T] = (),
        *,
        unique: bool = False,
        key: Callable[[T], Hashable] | None = None,
        max_items: int | None = None,
    ) -> None:
        if key is not None and not callable(key):
            raise TypeError(f"key must be a function of an item, got {key!r}")
        if max_items is not None and (
            isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0
        ):
            raise ValueError(f"max_items must be an int >= 0 or None, got {max_items!r}")
        self.key = key if key is not None else (_identity if unique else None)
        self.max_items = max_items
        self.seen: set[Hashable] = set()
        self.queue: deque[T] = deque()
        self.accepted = 0  # items taken in (put and not dropped)
        self.dropped = 0  # items refused: seen before, or over max_items
        self.ended = False
        # Set while a run reads the feed (see ``serve``): its loop, its thread, and the
        # callback that wakes the run's pump when items arrive.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._wake: Callable[[], None] | None = None
        self.extend(items)

    def serve(self, wake: Callable[[], None]) -> None:
        """(For the engine's pump, on the run's loop.) A run starts reading this feed:
        ``wake`` is called (on the loop) when an item is put. Raises if the feed has
        served a run already."""
        if self._loop is not None or self.ended:
            raise RuntimeError("a Feedback serves one run: make a new one for each run")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._wake = wake

    def served(self) -> None:
        """(For the engine's pump.) The run is over: the feed takes no more items."""
        self.ended = True
        self._wake = None

    def put(self, item: T) -> bool:
        """Add ``item`` to the work; False if it was dropped (seen, or over ``max_items``)."""
        if self._thread is not None and threading.get_ident() != self._thread:
            assert self._loop is not None
            if self.key is not None:  # (an unhashable item fails here, in the caller)
                _key_of(self, item)
            self._loop.call_soon_threadsafe(self.put, item)  # (in order, before its result)
            return True
        if self.ended:
            raise RuntimeError(
                "this Feedback's run has ended: a feed serves one run; make a new "
                "Feedback for the next one"
            )
        if self.max_items is not None and self.accepted >= self.max_items:
            self.dropped += 1
            return False
        if self.key is not None:
            key = _key_of(self, item)
            if key in self.seen:
                self.dropped += 1
                return False
            self.seen.add(key)
        self.accepted += 1
        self.queue.append(item)
        if self._wake is not None:
            self._wake()
        return True

    def extend(self, items: Iterable[T]) -> int:
        """:meth:`put` each item; the number taken in."""
        return sum(self.put(item) for item in items)

    def __repr__(self) -> str:
        return (
            f"<Feedback queued={len(self.queue)} accepted={self.accepted} "
            f"dropped={self.dropped}{' ended' if self.ended else ''}>"
        )


def _identity(item: Any) -> Any:
    return item


def _key_of(feed: Feedback[Any], item: Any) -> Hashable:
    """The key ``feed`` remembers ``item`` by, or a TypeError naming ``key=`` and the item."""
    assert feed.key is not None
    key = feed.key(item)
    try:
        hash(key)
    except TypeError as exc:
        shown = repr(item)
        shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
        if feed.key is _identity:
            why = (
                f"Feedback(unique=True) remembers the items it has seen by their hash, and "
                f"the item {shown} ({type(item).__name__}) is unhashable ({exc})"
            )
        else:
            why = (
                f"Feedback's key= function returned {type(key).__name__} {key!r:.80} for the "
                f"item {shown}, which is unhashable ({exc})"
            )
        raise TypeError(
            f"{why}: give key= a function of an item returning a hashable value, e.g. "
            f"Feedback(items, key=tuple) for lists, key=lambda item: item['url'] for "
            f"dicts, or key=repr"
        ) from exc
    return key
