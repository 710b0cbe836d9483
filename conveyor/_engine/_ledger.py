"""The ledger: the one owner of a run's accounting.

Everything a run counts is written here, and only here (``tests/test_ledger.py`` checks
that no other module assigns these attributes), through named transitions:

* **The window** (``max_in_flight``): the tokens live items hold, who waits for room, and
  stalls. Every live item holds one **token**: admitted from the input
  (:meth:`Ledger.admitted`), produced by a list or a generator (:meth:`Ledger.produced`),
  waiting in a batch accumulator, or waiting to be delivered; it is given back when the
  consumer takes the result (:meth:`Ledger.taken`) or the item is dropped
  (:meth:`Ledger.released`).
* **Work** (``busy``): the run's tasks and timers doing work (calls, expansions, the pump
  while it reads, a rate limit's timer); end-of-run and stall detection read it.
* **Each stage's flow**, kept on the stage for its hot path's reads: ``running`` (calls
  that wait: the concurrency limit), ``inflight`` (items the stage holds across an
  ``await``: queued, in such calls, expanding, accumulated in a batch), ``held``
  (Failures waiting behind an open batch's place). The run is finished when the input is
  read and no stage holds anything (:meth:`Ledger.stage_idle`, :meth:`Ledger.input_ended`).
* **Each stage's account** (:class:`Account`): every item that reaches a stage is passed
  on, dropped by the function, skipped, emitted, failed, or dropped by the remainder
  rule; and the retries. The statistics, the log's summary and the exporters read it.
* **Delivered**: the results the consumer took.
* **Done earlier**: input items a checkpoint holds as done, skipped without entering the
  run (:meth:`Ledger.skipped_as_done`; see ``_checkpoint``).
* **Origins** (a run with a checkpoint only; see ``_origin``): each admitted input item's
  ``Origin.live``, the things derived from it still in the run, kept beside the tokens by
  the same transitions (an ``origin`` argument: ``None`` on a run without a checkpoint,
  which counts nothing); and ``Origin.error``, the failure a policy handled on something
  derived from it. When ``live`` comes back to 0 the item is done: ``on_done``. Tokens
  and origins differ only where one token stands for several items: a batch's result
  (one token, one count on each of its items' origins) and a batch's items between the
  batch's sending off (their origins go over to the result at once) and its end (their
  tokens come back then). At rest (nothing in the run) both are zero.

**The window's rules.** The input pump and generator expansions wait while
``tokens >= limit``, so memory is bounded whatever the input's length. Two rules keep the
bound deadlock-free:

* In an ordered run, a generator whose children have all been taken by the consumer may
  always produce one more (otherwise items queued *behind* it could hold the whole
  window while it waits for room). Children a batch stage took still hold their tokens:
  there the generator waits, and the stall rule below lets it on if it must.
* When nothing is working (no call, no expansion, no pump progress) and someone waits for
  room, the run may be *stalled* (:meth:`Ledger.check_stall`). If the consumer has
  results to take, it is not: taking them makes room. Otherwise one waiting generator
  may produce one item past the window (its item may be holding the slot that items
  queued behind a ``concurrency_limit`` wait for), or, as a last resort, a partial batch
  is flushed (``flush_batch``: when the input is bounded in bytes below a batch's size,
  or a keyed batch stage's open batches fill the window, since the window itself has
  room for one whole batch of every stage, see below; or when a batch in a branch of
  ``parallel``/``route`` is fed out of input order, or only part of the items go to its
  branch, and items done behind it hold the window: see ``_branch``). A run whose branch
  stages' runs still work is not stalled (``elsewhere``): a call waiting for its
  branches is not work of its own, the branch runs' is.

**Room for batches.** Items accumulating in a batch stage hold their tokens, so a window
smaller than the batches would cut them short (and, below ``min_size``, hand items to the
remainder rule that a correct batching never leaves over). The run's window is therefore
at least the sum of its batch stages' ``max_size`` (:func:`window_size`): every batch
stage can fill a whole batch at once, whatever the others hold, and batches are composed
exactly as by a plain loop. The run logs it, and the statistics show both sizes. A
keyed batch stage (``key=``) counts once (one full batch): its many open batches may
fill the window with none of them full, and then the stall rule flushes its least
recently fed batch (``_batch``), whatever its size.

``busy`` counts the run's tasks that are doing work; a task waiting here for room does
not count, from the moment it waits until the moment it is woken.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ._order import Sentinel
from ._origin import Origin, Origins, each

Waiter = tuple["asyncio.Future[bool]", "Sentinel | None", bool]
"""``(future, sentinel, expansion)``: the future's result is True for a waiter let through
past the window (see ``check_stall``)."""


def window_size(max_in_flight: int, batch_sizes: Iterable[int]) -> int:
    """The run's window: ``max_in_flight``, raised to hold every batch stage's full batch
    (the sum of their ``max_size``) at once (see "Room for batches" above)."""
    return max(max_in_flight, sum(batch_sizes))


class Flow(Protocol):
    """What the ledger counts of a stage, and asks it (``_stage.Stage`` is one)."""

    running: int
    inflight: int
    is_batch: bool
    account: Account
    pending: deque[tuple[Any, Any, Any]]  # (item, node, origin) waiting for a slot
    draining: bool  # (start_pending is under way: it goes on by itself)

    def accumulated(self) -> int:
        """Items waiting in the stage for a batch to fill."""
        ...

    def close_input(self) -> None:
        """No more items will come (the remainder rule)."""
        ...

    def start_pending(self) -> None:
        """Start the queued items that the concurrency limit allows now."""
        ...


class BatchFlow(Flow, Protocol):
    """A batch stage's (``_batch.BatchStage``): the Failures held behind its batch."""

    held: int


class Account:
    """Where each item that reached one stage went (the statistics' exact counts, the
    log's summary). Written by the ledger's transitions and the error policy's, here."""

    __slots__ = (
        "by_policy",
        "dropped",
        "emitted",
        "failed",
        "remainder_dropped",
        "retried",
        "skipped",
    )

    def __init__(self) -> None:
        self.dropped = 0  # calls that passed nothing on: the function's or the policy's
        self.by_policy = 0  # of those, the policy's (skipped, a batch's items all left out)
        self.skipped = 0
        self.emitted = 0
        self.failed = 0
        self.retried = 0
        self.remainder_dropped = 0  # items the remainder rule dropped (batch stages)

    @property
    def dropped_by_function(self) -> int:
        """Calls whose function passed nothing on (``None``, ``[]``, an empty generator)."""
        return self.dropped - self.by_policy

    def gave_up(self, outcome: str) -> None:
        """A call failed for good: ``"failed"``, ``"skipped"`` or ``"emitted"``."""
        if outcome == "skipped":
            self.skipped += 1
        elif outcome == "emitted":
            self.emitted += 1
        else:
            self.failed += 1

    def retried_once(self) -> None:
        self.retried += 1

    def policy_passed_nothing(self) -> None:
        """The policy's stand-in for a call passes nothing on (see ``dropped``)."""
        self.by_policy += 1

    def outcomes(self) -> dict[str, int]:
        """The failure path's counts, by name (for the log's summary)."""
        return {
            "retried": self.retried,
            "skipped": self.skipped,
            "emitted": self.emitted,
            "failed": self.failed,
        }


class Ledger:
    """One run's accounting (see the module's docstring)."""

    __slots__ = (
        "admit",
        "busy",
        "can_drain",
        "closed",
        "delivered",
        "done_earlier",
        "elsewhere",
        "expanding",
        "finished",
        "first_taken",
        "flush_batch",
        "limit",
        "loop",
        "low_water",
        "on_done",
        "on_finished",
        "on_idle",
        "on_wait",
        "parked",
        "source_done",
        "stages",
        "tokens",
        "waiting",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        *,
        can_drain: Callable[[], bool] = lambda: False,
        flush_batch: Callable[[], bool] = lambda: False,
        elsewhere: Callable[[], bool] = lambda: False,
        on_wait: Callable[[float], None] | None = None,
        on_first: Callable[[], None] | None = None,
    ) -> None:
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
        # Calls counted in ``busy`` that wait for other runs: a branch stage's, for its
        # branches (see ``_branch``). They are not work: the run is idle when ``busy`` is
        # no more than them (:meth:`working`), and the branch runs' work is the run's
        # (``elsewhere``).
        self.parked = 0
        self.expanding = 0  # generators under way (their own item keeps its token)
        self.delivered = 0  # results the consumer took
        self.done_earlier = 0  # input items skipped: done in an earlier run (checkpoint)
        self.waiting: list[Waiter] = []
        self.closed = False
        self.source_done = False  # the input is read to its end
        self.finished = False  # ... and every item is accounted for
        # The run's: whether the consumer has a result to take; flush a partial batch
        # (False when there is none); the observers' time spent waiting for room; the
        # statistics' first result.
        self.can_drain = can_drain
        self.flush_batch = flush_batch
        # Whether work this ledger does not count goes on: a branch stage's runs (see
        # ``_branch``), whose calls its own calls wait for without working; a branch run
        # that stops working tells this run (``idle``).
        self.elsewhere = elsewhere
        self.on_wait = on_wait
        self.first_taken = on_first
        # Set once by the run when its stages are built (see ``watch``).
        self.stages: Sequence[Flow] = ()
        self.on_finished: Callable[[], None] = lambda: None
        # Told when nothing is working (a Feedback input's pump: is the run over?).
        self.on_idle: Callable[[], None] | None = None
        # Told when an input item is done (a run with a checkpoint: see ``_origin``).
        self.on_done: Callable[[Origin], None] = lambda origin: None

    def watch(
        self,
        stages: Sequence[Flow],
        on_finished: Callable[[], None],
        on_idle: Callable[[], None] | None,
    ) -> None:
        """The run's stages, what to do when the run is finished, and who is told when
        nothing works (a ``Feedback`` pump): set once, when the run is built."""
        self.stages = stages
        self.on_finished = on_finished
        self.on_idle = on_idle

    # -- tokens ------------------------------------------------------------------------

    def admitted(self, n: int = 1) -> None:
        """The input put ``n`` items into the run (each holds a token until accounted
        for)."""
        self.tokens += n

    def produced(self, n: int = 1, origin: Origins = None) -> None:
        """A call's result made ``n`` more items (a list's elements, a generator's
        children, a batch's result place): each holds a token (and a count on the
        call's item's ``origin``)."""
        self.tokens += n
        if origin is not None:
            for one in each(origin):
                one.live += n

    def released(self, n: int = 1) -> None:
        """``n`` items are accounted for without reaching the consumer (dropped, left
        out, turned into fewer items): their tokens come back."""
        self.tokens -= n
        if self.waiting:
            self.room_made()

    def taken(self) -> None:
        """The consumer took a result: it is delivered, and its token comes back."""
        self.tokens -= 1
        self.delivered += 1
        if self.delivered == 1 and self.first_taken is not None:
            self.first_taken()
        if self.waiting:
            self.room_made()

    # -- origins (a run with a checkpoint: see ``_origin``) -----------------------------

    def origin_admitted(self, key: Any, item: Any = None) -> Origin:
        """The input put ``item``, of key ``key``, into the run (its :meth:`admitted`
        too): its origin, with the item itself live."""
        origin = Origin(key, item)
        origin.live = 1
        return origin

    def attributed(self, merged: Origins, parts: list[Origins]) -> None:
        """A batch's result of one element per item goes on as its items' own results
        (a branch's run: see ``_branch``): each element counts on its item's origins
        (``parts``), and the result's count on the batch's (``merged``) goes."""
        for part in parts:
            for one in each(part):
                one.live += 1
        self.left(merged)

    def adopted(self, origins: list[Origin]) -> None:
        """A result stands for these items too (a ``route``'s result of a batch in its
        branch: see ``_branch``): it holds a count on each, their own calls end with
        nothing."""
        for one in origins:
            one.live += 1

    def left(self, origin: Origins, n: int = 1) -> None:
        """``n`` things of ``origin`` left the run (taken, dropped, handed over to a
        batch's result): an origin with nothing left is done (``on_done``)."""
        if type(origin) is Origin:  # (the common case: one origin)
            origin.live -= n
            if not origin.live:
                self.on_done(origin)
            return
        for one in each(origin):
            one.live -= n
            if not one.live:
                self.on_done(one)

    def origin_failed(self, origins: tuple[Origin, ...], exc: BaseException) -> None:
        """A policy gave up on something derived from ``origins`` (the item goes on, as
        the policy says: a Failure, or nothing): each is recorded failed when done."""
        for one in origins:
            if one.error is None:
                one.error = exc

    def skipped_as_done(self, n: int = 1) -> None:
        """The checkpoint holds ``n`` input items as done (or failed) by an earlier run:
        they are not admitted (no token, no call)."""
        self.done_earlier += n

    def hold(self, places: int) -> None:
        """Pickled copies of items, on their way to a worker, take ``places`` (the byte
        bound, see ``_weight``); :meth:`released` gives them back."""
        self.tokens += places

    def full(self) -> bool:
        """Whether the input must wait for room before adding an item."""
        return self.tokens >= self.admit

    def admit_at_most(self, items: int) -> None:
        """Let the input have at most ``items`` in the run (never fewer than 1, never
        more than the window's limit)."""
        admit = self.admit = max(1, min(self.limit, items))
        self.low_water = admit - max(1, admit // 8)

    # -- work --------------------------------------------------------------------------

    def work_started(self) -> None:
        """A task (or a timer) of the run starts working."""
        self.busy += 1

    def work_stopped(self) -> None:
        """A task (or a timer) stopped working: if nothing else works, look for a stall."""
        self.busy -= 1
        if self.busy == self.parked:
            self.check_stall()

    def working(self) -> bool:
        """Whether a task (or a timer) of the run works: one that is not a parked call."""
        return self.busy > self.parked

    def call_parked(self) -> None:
        """A call waits for other runs (a branch stage's call for its branches): it is
        not work until :meth:`call_unparked`. (Made in the call itself, whose task
        ``call_waits`` counts in the same step, before anything looks at ``busy``.)"""
        self.parked += 1

    def call_unparked(self) -> None:
        """A parked call's wait is over: it works again (its result goes on)."""
        self.parked -= 1

    def work_ended_quietly(self) -> None:
        """A task stopped working and the caller decides what follows (the run, when a
        task of it ends: it fails, or calls :meth:`idle`)."""
        self.busy -= 1

    # -- a stage's flow ----------------------------------------------------------------

    def queued(self, stage: Flow) -> None:
        """An item waits in ``stage``: for a concurrency slot, or in a batch."""
        stage.inflight += 1

    def dequeued(self, stage: Flow) -> None:
        """A queued single item's call starts (its call counts it from now on)."""
        stage.inflight -= 1

    def call_waits(self, stage: Flow) -> None:
        """A call of ``stage`` waits (a task, a Future): running, its item held, working."""
        stage.running += 1
        if not stage.is_batch:  # a batch's items are counted from the moment they arrive
            stage.inflight += 1
        self.busy += 1

    def call_moves_to_task(self, stage: Flow) -> None:
        """A call settled by callback goes on in a task (``call_waits`` counts it again)."""
        stage.running -= 1
        if not stage.is_batch:
            stage.inflight -= 1

    def settled(self, stage: Flow, item: Any) -> None:
        """A call made at once has its result out (handed on, or stood in for): ``stage``
        no longer holds its item (a batch's items give their tokens back: the result
        holds its own). Was it the last thing the run held?"""
        if stage.is_batch:
            n = len(item)
            stage.inflight -= n
            self.released(n)
            if stage.pending and not stage.draining:  # (slot_freed, inlined: per item)
                stage.start_pending()
            self.stage_idle()  # (a batch's remainder may be all that is left)
        else:
            stage.inflight -= 1
            if stage.pending and not stage.draining:  # (slot_freed, inlined: per item)
                stage.start_pending()
            if not stage.inflight and self.source_done:
                self.stage_idle()

    def waited(self, stage: Flow, item: Any, stops: bool) -> None:
        """A call that waited (``call_waits``) has its result out: its slot is free (the
        stage starts what waits for one), and as :meth:`settled`; if it ``stops``, the
        run's work for it ends too (as :meth:`work_stopped`; else its task or callback
        stops it later). One transition: it is paid per item and stage (the two in one
        call: 6 Python calls of 53 per item fewer on three trivial ``async def``
        stages)."""
        stage.running -= 1
        if stage.is_batch:
            n = len(item)
            stage.inflight -= n
            self.released(n)
            if stage.pending and not stage.draining:  # (slot_freed, inlined: per item)
                stage.start_pending()
            self.stage_idle()
        else:
            stage.inflight -= 1
            if stage.pending and not stage.draining:  # (slot_freed, inlined: per item)
                stage.start_pending()
            if not stage.inflight and self.source_done:
                self.stage_idle()
        if stops:
            self.busy -= 1
            if self.busy == self.parked:
                self.check_stall()

    def slot_freed(self, stage: Flow) -> None:
        """A concurrency slot of ``stage`` may be free: it starts what waits for one
        (unless it is doing so already, further up the stack: that loop goes on)."""
        if stage.pending and not stage.draining:
            stage.start_pending()

    def dropped(self, stage: Flow, placed: bool, origin: Origins = None) -> None:
        """A call of ``stage`` passed nothing on: its item's token (and its count on its
        ``origin``) comes back (through its node's reader when it has one: ``placed``)."""
        stage.account.dropped += 1
        if not placed:
            self.released(1)
            if origin is not None:
                self.left(origin)

    def gated(self, stage: Flow) -> None:
        """An item waits for its turn under a rate limit, holding a concurrency slot."""
        stage.running += 1
        if not stage.is_batch:  # (a batch's items count from their arrival)
            stage.inflight += 1

    def ungated(self, stage: Flow) -> None:
        """A gated item's turn came: its call starts (and counts itself)."""
        stage.running -= 1
        if not stage.is_batch:
            stage.inflight -= 1

    def expansion_started(self, stage: Flow) -> None:
        """A generator of ``stage`` is being expanded: its item keeps its token, and a
        concurrency slot, until the generator ends."""
        stage.inflight += 1
        stage.running += 1
        self.expanding += 1

    def expansion_ended(self, stage: Flow, produced: int, origin: Origins = None) -> None:
        """A generator ended after passing ``produced`` items on (its item, of
        ``origin``, leaves)."""
        if not produced:  # a generator that passed nothing on dropped its item
            stage.account.dropped += 1
        self.expanding -= 1
        stage.running -= 1
        stage.inflight -= 1
        self.released(1)
        if origin is not None:
            self.left(origin)

    # -- batches ------------------------------------------------------------------------

    def lent(self, stage: BatchFlow) -> None:
        """A Failure waits behind the oldest open batch's place: it lends its token back
        (see ``BatchStage.held``)."""
        stage.held += 1
        self.released(1)

    def batch_sent(
        self,
        stage: BatchFlow,
        origin: Origins = None,
        items: list[Origins] | None = None,
        oldest: bool = True,
    ) -> None:
        """A batch is sent off: its result's place takes a token, and, if it is the
        stage's ``oldest`` open batch (the one the Failures wait behind: see ``_batch``),
        the Failures that waited behind it take theirs again (their reader gives them
        back). On a checkpoint, the result counts once on each of the batch's ``origin``
        (its items' origins, merged) and the ``items`` hand their counts over to it
        (their tokens come back when the batch is done)."""
        if oldest:
            self.tokens += 1 + stage.held
            stage.held = 0
        else:
            self.tokens += 1
        if origin is not None:
            for one in each(origin):
                one.live += 1
            for item_origin in items or ():
                self.left(item_origin)

    def remainder_dropped(
        self,
        stage: BatchFlow,
        n: int,
        placed: bool,
        origins: list[Origins] | None = None,
        oldest: bool = True,
    ) -> None:
        """The remainder rule dropped the ``n`` items of one batch accumulated in
        ``stage`` (if the batch had a ``placed`` result, its reader gives back a token
        for it, and, if it was the ``oldest`` open batch, for the Failures behind it); on
        a checkpoint, each item's count on its ``origins``."""
        stage.account.remainder_dropped += n
        stage.inflight -= n
        self.released(n)
        if placed:
            self.tokens += 1 + (stage.held if oldest else 0)
            if oldest:
                stage.held = 0
        for origin in origins or ():
            self.left(origin)

    # -- the end ------------------------------------------------------------------------

    def input_read(self) -> None:
        """The input is read to its end (or had no more to give)."""
        self.source_done = True
        self.stage_idle()

    def stage_idle(self) -> None:
        """A stage ran out of work: if the input is done and nothing is left, the run is
        finished (``on_finished``)."""
        if not self.source_done or self.closed or self.finished:
            return
        if not self.input_ended():
            return
        self.finished = True
        self.on_finished()

    def input_ended(self) -> bool:
        """No more items will come: the remainder rule, stage by stage (each batch stage's
        remainder is flushed, or dropped below ``min_size``, once every stage before it is
        empty). True when no stage holds anything. The one rule for every input: a
        ``Feedback`` calls it when its feed is empty and nothing else is left."""
        for stage in self.stages:
            acc = stage.accumulated()
            if acc:
                if stage.inflight > acc:
                    return False  # batches still running: the remainder waits for them
                stage.close_input()
            if stage.inflight:
                if not stage.is_batch:
                    stage.close_input()  # (a branch stage's branches: see ``_branch``)
                return False
        return True

    def room_made(self) -> None:
        """Tokens came back: wake who waits for room, once there is enough of it.

        With nothing else working, the waiters are looked at now, whatever the amount
        freed (a stall may need its last resort: see :meth:`check_stall`).
        """
        if self.busy == self.parked:
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
        """A busy task stopped working (``busy`` was decremented), or a branch run of the
        run's (``_branch``): look for a stall."""
        if self.busy == self.parked:
            self.check_stall()

    def check_stall(self) -> None:
        """If nothing is working and someone waits for room, make sure something moves."""
        stalled = self.busy == self.parked
        if stalled and not self.closed and any(self.may_proceed(s, e) for _, s, e in self.waiting):
            # (Woken first: the pump of a checkpoint at its crash bound must not take
            # the room a generator whose child was just taken may go on into for a
            # stall, and a Feedback's run is not over while one may go on. Only when
            # nothing works: a waiter that just began to wait while others work must
            # not wake the others below the low-water mark, one token at a time: a
            # generator | filter ran at half its rate, 0.54 of 52d95b4's.)
            self.wake_waiters()
            return
        if self.on_idle is not None:
            self.on_idle()
        # A flush may complete synchronously and only fill the next batch stage's
        # accumulator, so keep going until something works or a waiter can go on.
        while self.busy == self.parked and self.waiting and not self.closed:
            if any(self.may_proceed(s, e) for _, s, e in self.waiting):
                self.wake_waiters()
                return
            if self.can_drain():
                return  # the consumer will make room (and wake the waiters)
            if self.elsewhere():
                return  # a branch run works: it tells this run when it stops (``idle``)
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
        return (
            f"<Ledger {self.tokens}/{self.limit} busy={self.busy} parked={self.parked} "
            f"waiting={len(self.waiting)}>"
        )
