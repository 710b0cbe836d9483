"""The window: how many items a run holds at once, who waits for room, and stalls.

Every live item holds one **token**: admitted from the input, produced by an expansion,
waiting in a batch accumulator, or waiting to be delivered. The input pump and generator
expansions wait while ``tokens >= limit`` (``max_in_flight``), so memory is bounded
whatever the input's length. Two rules keep the bound deadlock-free:

* In an ordered run, a generator whose children have all been taken by the consumer may
  always produce one more (otherwise items queued *behind* it could hold the whole
  window while it waits for room). Children a batch stage took still hold their tokens:
  there the generator waits, and the stall rule below lets it on if it must.
* When nothing is working (no call, no expansion, no pump progress) and someone waits for
  room, the run may be *stalled* (:meth:`Window.check_stall`). If the consumer has
  results to take, it is not: taking them makes room. Otherwise one waiting generator
  may produce one item past the window (its item may be holding the slot that items
  queued behind a ``concurrency_limit`` wait for), or, as a last resort, a partial batch
  is flushed (``flush_batch``: only when the input is bounded in bytes below a batch's
  size, since the window itself has room for every batch: see below).

**Room for batches.** Items accumulating in a batch stage hold their tokens, so a window
smaller than the batches would cut them short (and, below ``min_size``, hand items to the
remainder rule that a correct batching never leaves over). The run's window is therefore
at least the sum of its batch stages' ``max_size`` (:func:`window_size`): every batch
stage can fill a whole batch at once, whatever the others hold, and batches are composed
exactly as by a plain loop. The run logs it, and the statistics show both sizes.

``busy`` counts the run's tasks that are doing work (calls, expansions, the pump while it
reads); a task waiting here for room does not count, from the moment it waits until the
moment it is woken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from ._order import Sentinel

Waiter = tuple["asyncio.Future[bool]", "Sentinel | None", bool]
"""``(future, sentinel, expansion)``: the future's result is True for a waiter let through
past the window (see ``check_stall``)."""


def window_size(max_in_flight: int, batch_sizes: Iterable[int]) -> int:
    """The run's window: ``max_in_flight``, raised to hold every batch stage's full batch
    (the sum of their ``max_size``) at once (see "Room for batches" above)."""
    return max(max_in_flight, sum(batch_sizes))


class Window:
    __slots__ = (
        "admit",
        "busy",
        "can_drain",
        "closed",
        "expanding",
        "flush_batch",
        "limit",
        "loop",
        "low_water",
        "on_idle",
        "on_wait",
        "tokens",
        "waiting",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.limit = limit
        # How many the input may have in the run: the limit, unless items are weighed
        # (``max_in_flight_bytes``, see ``_weight``). The pump waits until an eighth of
        # it is free (a cheap hand-over per batch of items, not per item), unless nothing
        # else is left working.
        self.admit = limit
        self.low_water = limit - max(1, limit // 8)
        self.tokens = 0
        self.busy = 0
        self.expanding = 0  # generators under way (their own item keeps its token)
        self.waiting: list[Waiter] = []
        self.closed = False
        # Set by the run: whether the consumer has a result to take; flush a partial batch
        # (False when there is none).
        self.can_drain: Callable[[], bool] = lambda: False
        self.flush_batch: Callable[[], bool] = lambda: False
        # Observer hook for time spent waiting for room (None: not observed).
        self.on_wait: Callable[[float], None] | None = None
        # Told when nothing is working (a Feedback input's pump: is the run over?).
        self.on_idle: Callable[[], None] | None = None

    # -- tokens ------------------------------------------------------------------------

    def take(self, n: int = 1) -> None:
        self.tokens += n

    def release(self, n: int = 1) -> None:
        self.tokens -= n
        if self.waiting:
            self.room_made()

    def full(self) -> bool:
        """Whether the input must wait for room before adding an item."""
        return self.tokens >= self.admit

    def admit_at_most(self, items: int) -> None:
        """Let the input have at most ``items`` in the run (never fewer than 1, never
        more than the window's limit)."""
        admit = self.admit = max(1, min(self.limit, items))
        self.low_water = admit - max(1, admit // 8)

    def room_made(self) -> None:
        """Tokens came back: wake who waits for room, once there is enough of it.

        With nothing else working, the waiters are looked at now, whatever the amount
        freed (a stall may need its last resort: see :meth:`check_stall`).
        """
        if not self.busy:
            self.check_stall()
        elif self.tokens <= self.low_water:
            self.wake_waiters()

    # -- waiting for room --------------------------------------------------------------

    def may_proceed(self, sentinel: Sentinel | None, expansion: bool) -> bool:
        if not expansion:
            return self.tokens < self.admit
        # A generator's children are bounded by the window without counting the
        # generators' own items, so expansions cannot starve each other.
        if self.tokens - self.expanding < self.limit:
            return True
        # In an ordered run, a generator whose children have all been taken by the
        # consumer may always go on: items behind it could otherwise hold the window
        # forever. Not when a batch stage took them: they still hold their tokens there
        # (a generator feeding a batch held 7,500 items in a window of 4); if items
        # behind it do hold the window, the stall's last resort lets it go on.
        return sentinel is not None and sentinel.children_released()

    def wake_waiters(self) -> None:
        """Wake every waiter whose condition now holds (and only those)."""
        still = []
        for waiter in self.waiting:
            future, sentinel, expansion = waiter
            if future.done():
                continue
            if self.may_proceed(sentinel, expansion):
                self.wake(future, False)
            else:
                still.append(waiter)
        self.waiting = still  # the woken are off the list: no more scans for them

    def wake(self, future: asyncio.Future[Any], result: Any) -> None:
        """Let a waiter (of this window, or a Feedback's pump) go on. It counts as busy
        from now, not from when its task resumes: in between, a stall check must not think
        nothing works (it flushed partial batches while a woken generator was about to
        produce)."""
        future.set_result(result)
        self.busy += 1

    def resumed(self, future: asyncio.Future[Any]) -> None:
        """A waiter's task goes on (however it ends its wait): busy again, unless
        :meth:`wake` already counted it."""
        if future.cancelled() or not future.done():
            self.busy += 1

    async def wait_for_room(
        self, sentinel: Sentinel | None = None, expansion: bool = False
    ) -> None:
        """Wait until the window lets the pump (or a generator) add an item.

        Raises ``CancelledError`` once the run is closed.
        """
        started = self.loop.time() if self.on_wait is not None else 0.0
        while not self.may_proceed(sentinel, expansion):
            if self.closed:
                raise asyncio.CancelledError
            waiter: Waiter = (self.loop.create_future(), sentinel, expansion)
            self.waiting.append(waiter)
            if sentinel is not None:
                sentinel.on_front = self.wake_waiters
            self.busy -= 1
            try:
                self.check_stall()
                if await waiter[0]:  # let through by check_stall's last resort
                    break
            finally:
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
                self.resumed(waiter[0])
                if sentinel is not None:
                    sentinel.on_front = None
        if self.on_wait is not None:
            self.on_wait(self.loop.time() - started)

    def idle(self) -> None:
        """A busy task stopped working (``busy`` was decremented): look for a stall."""
        if not self.busy:
            self.check_stall()

    def check_stall(self) -> None:
        """If nothing is working and someone waits for room, make sure something moves."""
        if self.on_idle is not None:
            self.on_idle()
        # A flush may complete synchronously and only fill the next batch stage's
        # accumulator, so keep going until something works or a waiter can go on.
        while not self.busy and self.waiting and not self.closed:
            if any(self.may_proceed(s, e) for _, s, e in self.waiting):
                self.wake_waiters()
                return
            if self.can_drain():
                return  # the consumer will make room (and wake the waiters)
            # A generator first: its own item may hold the slot that items queued behind
            # a concurrency_limit wait for, and one item past the window changes no
            # result, where a batch sent off short would change its composition.
            for index, (future, _, expansion) in enumerate(self.waiting):
                if expansion and not future.done():
                    del self.waiting[index]
                    self.wake(future, True)
                    return
            if self.flush_batch():
                continue
            return

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<Window {self.tokens}/{self.limit} busy={self.busy} waiting={len(self.waiting)}>"
