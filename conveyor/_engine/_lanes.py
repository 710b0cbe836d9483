"""Lanes: when a single stage's calls start under a keyed rate limit
(``rate_limit=RateLimit(..., key=...)``), a per-key concurrency limit
(``concurrency_limit_per_key=(key, n)``) or a priority (``priority=``).

Such a stage (:class:`LanedStage`) hands every item to its :class:`Lanes`, which alone
decides when its call starts: its items never wait in the stage's ``pending`` queue, and
an item waiting here holds **no** concurrency slot (it is queued: the ledger's
``queued``, its node placed), so items waiting for one key never keep items of another
key from starting. Items wait in *lanes*, one per (rate key, slot key) pair, each a heap
ordered by priority (highest first), then arrival (FIFO among equals). A call starts
when the stage has a free slot (``running < limit``), its executor a free worker (as
``_gate``), its slot key fewer than ``n`` calls running and its rate key a turn; among
the lane heads that may start, the highest priority (then the earliest) goes first. So
a lane blocked on its key's quota or slots never blocks another lane: no head-of-line
blocking across keys. Ordered runs keep their order: the nodes do (see ``_order``).

The heads are scanned each time something may start (a call's end, the timer of the
soonest turn, a new item): ``O(lanes)`` each, the lanes being the distinct keys with
items waiting, within the run's window.

**A key's slots.** A call holds its key's slot from its start until its result is out:
at once for a call that does not wait; for one that waits, until ``_waiting`` hands its
result on (``call_ended(item)``). A generator's expansion holds the stage's slot, not the
key's (its call has returned). Items are told apart by identity while their calls run.

A key or priority function that raises fails its item under the task's ``on_error``,
without a call (so no retry, no error handler), with a note naming ``key=`` or
``priority=``. Retries take their turn of the item's rate key (``acquire``), inside the
call, which keeps its key's slot.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from ..errors import Failure
from ..rate import SLACK
from ._gate import capacity_of
from ._roles import NO_ITEM
from ._stage import SingleStage

if TYPE_CHECKING:
    from ..rate import Cell, Keyed, Window

Entry = tuple[Any, int, Any, Any, Any, Hashable, Hashable]
"""``(rank, seq, item, node, origin, rate key, slot key)``: ``rank`` is minus the priority
(``origin``: see ``_origin``)."""


class Lanes:
    """One laned stage's waiting items, for one run (see the module's docstring)."""

    __slots__ = (
        "call",
        "calls",
        "count",
        "draining",
        "due",
        "holding",
        "lanes",
        "per_key",
        "priority",
        "quota",
        "quotas",
        "rate_key",
        "seq",
        "slot_key",
        "stage",
        "timer",
    )

    def __init__(self, stage: LanedStage, call: Callable[[Any, Any, Any], None]) -> None:
        options = stage.spec.options
        self.stage = stage
        self.call = call  # what starts a call, once its turn has come
        rate = options.rate_limit
        self.rate_key = None if rate is None else rate.key
        self.quotas: Keyed | None = None  # a keyed limit's quotas
        self.quota: Window | Cell | None = None  # an unkeyed limit's
        if rate is not None:
            if rate.key is None:
                self.quota = rate.window(stage.loop)
            else:
                self.quotas = rate.keyed(stage.loop)
        per_key = options.concurrency_limit_per_key
        self.slot_key = None if per_key is None else per_key[0]
        self.per_key = 0 if per_key is None else per_key[1]
        self.priority = options.priority
        self.lanes: dict[tuple[Hashable, Hashable], list[Entry]] = {}
        self.count = 0  # items waiting, in all lanes
        self.seq = 0
        self.calls: dict[Hashable, int] = {}  # calls running per slot key (none: absent)
        self.holding: dict[int, list[Any]] = {}  # id(item): [slot key, calls] still out
        self.timer: Any = None
        self.due = math.inf  # when the timer fires
        self.draining = False

    @property
    def held(self) -> int:
        """Items waiting here that hold a concurrency slot: none (see the docstring)."""
        return 0

    @property
    def waiting(self) -> int:
        return self.count

    def _quota(self, key: Hashable) -> Window | Cell | None:
        if self.quotas is not None:
            return self.quotas.quota(key)
        return self.quota

    def may_start(self, rate_key: Hashable, slot_key: Hashable) -> float:
        """0 if a call of these keys may start now; else how long its rate key's quota
        makes it wait (``inf``: its slot key is full, a call's end frees it)."""
        if self.per_key and self.calls.get(slot_key, 0) >= self.per_key:
            return math.inf
        quota = self._quota(rate_key)
        if quota is None:
            return 0.0
        wait = quota.wait()  # (a window's too, as the smooth mode's: see ``SLACK``)
        return wait if wait > SLACK else 0.0

    def room(self) -> bool:
        """A free concurrency slot, and a worker to start the call at once (``_gate``)."""
        stage = self.stage
        if stage.running >= stage.limit:
            return False
        capacity = capacity_of(stage.executor)
        return capacity is None or stage.running < capacity

    # -- items in -------------------------------------------------------------------

    def start(self, item: Any, node: Any, origin: Any) -> None:
        """Installed as the stage's ``start``: every item comes here (see above)."""
        stage = self.stage
        what = "key="
        try:
            rate_key = None if self.rate_key is None else self.rate_key(item)
            what = "concurrency_limit_per_key="
            slot_key = None if self.slot_key is None else self.slot_key(item)
            what = "priority="
            rank = 0 if self.priority is None else -self.priority(item)
            what = "key="
            lane = self.lanes.get((rate_key, slot_key))  # (an unhashable key raises here)
        except Exception as exc:
            self.refuse(exc, what, item, node, origin)
            return
        if (
            lane is None
            and not self.count
            and not self.draining
            and self.room()
            and self.may_start(rate_key, slot_key) == 0
        ):
            self.launch(item, node, origin, rate_key, slot_key)
            return
        stage.ledger.queued(stage)
        if lane is None:
            lane = self.lanes[(rate_key, slot_key)] = []
        heapq.heappush(lane, (rank, self.seq, item, stage.place(node), origin, rate_key, slot_key))
        self.seq += 1
        self.count += 1
        self.drain()

    def refuse(self, exc: Exception, what: str, item: Any, node: Any, origin: Any) -> None:
        """A key or priority function raised: the item fails under ``on_error``."""
        stage = self.stage
        option = "rate_limit=RateLimit(..., key=...)" if what == "key=" else what
        exc.add_note(
            f"conveyor: raised by the {option} function of task {stage.name!r} on the "
            f"item, not by the task: no call was made (no retry); fix the function, or "
            f"make it return a key for every item"
        )
        if stage.tally is not None:  # (as a call that raised at once is counted)
            stage.tally.items_in += 1
        try:
            result = stage.policy.final(exc, item, 1)
        except BaseException as final:
            stage.run.fail(final)
            return
        stage.emit(result, node, origin)

    # -- starting -------------------------------------------------------------------

    def launch(
        self, item: Any, node: Any, origin: Any, rate_key: Hashable, slot_key: Hashable
    ) -> None:
        """Start the call on ``item`` now: its rate key's turn, its slot key's slot."""
        quota = self._quota(rate_key)
        if quota is not None:
            quota.take()
        if not self.per_key:
            self.call(item, node, origin)
            return
        stage = self.stage
        calls = self.calls
        calls[slot_key] = calls.get(slot_key, 0) + 1
        # A call that waits is counted as running (``call_waits``); an expansion too,
        # but it counts itself in ``expanding`` (and its call is over).
        before = stage.running - stage.ledger.expanding
        self.call(item, node, origin)
        if stage.running - stage.ledger.expanding > before:  # its end frees the slot
            held = self.holding.get(id(item))
            if held is None:
                self.holding[id(item)] = [slot_key, 1]
            else:
                held[1] += 1
        else:
            self.release(slot_key)

    def release(self, slot_key: Hashable) -> None:
        left = self.calls[slot_key] - 1
        if left:
            self.calls[slot_key] = left
        else:
            del self.calls[slot_key]

    def pick(self) -> tuple[tuple[Hashable, Hashable] | None, float]:
        """The lane whose head starts next (None: none may now), and the soonest a
        lane's quota lets its head start (``inf``: only a call's end can help)."""
        best: tuple[Hashable, Hashable] | None = None
        best_rank: tuple[Any, int] = (0, 0)
        soonest = math.inf
        for key, lane in self.lanes.items():
            head = lane[0]
            rank = (head[0], head[1])
            if best is not None and rank > best_rank:
                continue  # (cannot go first: its wait does not matter now)
            wait = self.may_start(head[5], head[6])  # (its rate key, its slot key)
            if wait:
                soonest = min(soonest, wait)
                continue
            best, best_rank = key, rank
        return best, soonest

    def drain(self) -> None:
        """Start what may start now, best first; arm the timer for the soonest turn."""
        if self.draining:
            return  # (the loop further up the stack goes on)
        stage = self.stage
        run = stage.run
        ledger = stage.ledger
        soonest = math.inf
        self.draining = True
        try:
            while self.count and not run.closed and self.room():
                key, soonest = self.pick()
                if key is None:
                    break
                lane = self.lanes[key]
                _, _, item, node, origin, rate_key, slot_key = heapq.heappop(lane)
                if not lane:
                    del self.lanes[key]
                self.count -= 1
                self.launch(item, node, origin, rate_key, slot_key)
                ledger.dequeued(stage)  # only now: counted during its call
                soonest = math.inf
        finally:
            self.draining = False
        if soonest < math.inf and not run.closed:
            self.arm(soonest)

    def arm(self, delay: float) -> None:
        loop = self.stage.loop
        due = loop.time() + delay
        if self.timer is not None:
            if self.due <= due:
                return
            self.timer.cancel()  # (an earlier turn: still one timer, one unit of work)
        else:
            # A turn to come is work: the window must not take the run for stalled.
            self.stage.ledger.work_started()
        self.due = due
        self.timer = loop.call_at(due, self.fire)

    def fire(self) -> None:
        self.timer = None
        self.due = math.inf
        self.stage.ledger.work_ended_quietly()  # (go_on looks for the end, or a stall)
        self.go_on()

    def go_on(self) -> None:
        """Start what may start now; then, as the end of a call would, look for the
        run's end or a stall."""
        stage = self.stage
        self.drain()
        if stage.run.closed:
            return
        ledger = stage.ledger
        if not stage.inflight and ledger.source_done:
            ledger.stage_idle()
        else:
            ledger.idle()

    def call_ended(self, item: Any = NO_ITEM) -> None:
        """(From ``_waiting`` and ``_expand``.) A call is over: its key's slot is free
        (the call on ``item``), and so is a stage's slot."""
        if item is not NO_ITEM and self.per_key:
            held = self.holding.get(id(item))
            if held is not None:
                held[1] -= 1
                if not held[1]:
                    del self.holding[id(item)]
                self.release(held[0])
        if self.count and not self.stage.run.closed:
            self.go_on()

    async def acquire(self, item: Any) -> None:
        """A retry of the call on ``item`` waits for its rate key's turn, and takes it."""
        quota = self._quota(None if self.rate_key is None else self.rate_key(item))
        if quota is not None:
            while (delay := quota.wait()) > SLACK:
                await asyncio.sleep(delay)
            quota.take()

    def over(self, run: object) -> None:
        """The run is over: drop the timer (waiting items go with the run)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.stage.ledger.work_ended_quietly()
        self.lanes.clear()
        self.count = 0


class LanedStage(SingleStage):
    """A single stage whose calls start by its :class:`Lanes` (the plan's ``"lanes"``)."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = lanes = Lanes(self, self.call)
        self.start = lanes.start

    def push(self, item: Any, node: Any, origin: Any) -> None:
        if self.observer is not None:
            self.observer.items_in(1)
        if type(item) is Failure:
            if self.record is not None:
                self.record.passed_through()
            self.downstream.push(item, node, origin)
            return
        self.start(item, node, origin)  # (the lanes hold what cannot start: not ``pending``)
