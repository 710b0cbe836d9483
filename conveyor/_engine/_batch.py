"""The stage of a batch task: it accumulates items and calls the task on lists of them.

Calling, results and errors work as for any stage (see ``_stage``); what is particular
to batches is here: when a batch is flushed, how its items' window tokens come back, and
what happens to the remainder at the end of the input. (How ``on_error="skip_item"``
finds the failing items of a batch is the policy's: see ``_policy``.)

Each open batch is an :class:`Batch`: its items, its reserved place, its items' origins,
its ``max_wait`` timer and whether that timer has expired. A plain batch stage has one,
for the whole run; a keyed one (``key=f``) has one per key ``f(item)`` with items
waiting, made when the key's first item arrives and gone when it is flushed. Every rule
below is the same code for both, applied to the batch an item belongs to.

A batch is flushed when it holds ``max_size`` items; when ``max_wait`` seconds have
passed since its first item, if it holds at least ``min_size``; when the input has ended
(a remainder smaller than ``min_size`` is dropped, see :meth:`BatchStage.close_input`);
and when the run is stalled with the window full of items waiting here (a window smaller
than the batch, or a keyed stage's many partial batches: see ``_ledger``).

**Keys** (``key=``, at most ``max_keys`` open at once). The key function is called on
the loop, once per item, as it arrives; if it raises (or its key is not hashable), the
item fails alone under ``on_error`` (no retry, no handler: see ``Policy.key_failed``).
An item of a new key while ``max_keys`` batches are open first flushes the least
recently fed one (the one whose last item is the oldest), whatever its size, even below
``min_size``: nothing is dropped but by the remainder rule at the end of the input, which
applies to each key's batch. The stall rule flushes the least recently fed too.

In an ordered run a batch's result has its place from the moment the batch opens, so a
:class:`~conveyor.errors.Failure` that reaches the stage meanwhile (from an earlier
``on_error="emit"``) comes after it: where its item's result would be. With several
open batches (keys) it comes after all of them, and is counted as waiting behind the
oldest (first opened): it lends its token back until that batch is sent off (``held``),
and then holds it again while it waits for the younger ones. At most the window's limit
of them are lent: one more sends the oldest batch off first.

On a run that tracks origins (a checkpoint, ``with_items()``, a branch's run: see
``_origin``), each accumulated item's origin is kept beside it
(``Batch.origins``); the batch's result carries them all (``_origin.BatchOrigins``:
merged, each once, in order), and its call's context has each item's.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from ..errors import Failure
from ._calls import Executor
from ._order import EMPTY
from ._origin import BatchOrigins, Origins
from ._plan import StagePlan
from ._policy import LEFT_OUT
from ._roles import Statistics, Tracing
from ._stage import Stage

if TYPE_CHECKING:
    from ._observe import StageObserver
    from ._roles import RunRole


class Batch:
    """One open batch of a batch stage (of one key, on a keyed stage)."""

    __slots__ = ("expired", "items", "key", "node", "origins", "stage", "timer")

    def __init__(self, stage: BatchStage, key: Hashable, origins: bool) -> None:
        self.stage = stage
        self.key = key
        self.items: list[Any] = []
        # The items' origins, on a checkpoint (None: no checkpoint).
        self.origins: list[Origins] | None = [] if origins else None
        # In an ordered run, the place of the batch's result, reserved when it opens (its
        # first item): a Failure that arrives meanwhile goes after it, where its item's
        # result would be. The place takes its window token only when the batch is sent
        # off: a token taken at the opening would make a window of exactly max_size
        # items hold only max_size - 1 of them (batches cut short, and items then lost
        # to the remainder rule).
        self.node: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False  # max_wait passed below min_size: min_size items flush it

    def on_timer(self) -> None:
        self.timer = None
        self.expired = True
        stage = self.stage
        if len(self.items) >= stage.min_size and not stage.run.closed:
            stage.flush(self)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class BatchStage(Stage):
    __slots__ = (
        "held",
        "key",
        "lru",
        "max_keys",
        "max_size",
        "max_wait",
        "min_size",
        "one",
        "opened",
        "per_item",
        "with_origins",
    )

    def __init__(
        self,
        run: RunRole,
        plan: StagePlan,
        executor: Executor,
        stats: Statistics | None = None,
        observer: StageObserver | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        super().__init__(run, plan, executor, stats, observer, tracing)
        options = plan.spec.options
        self.min_size = options.min_size
        self.max_size = options.max_size
        self.max_wait = options.max_wait
        self.with_origins = run.origins  # (a run that tracks them: see ``_origin``)
        # In a branch's run, a result per item is each item's own (see ``emit_list``).
        self.per_item = run.branch
        self.key: Callable[[Any], Hashable] | None = options.key
        self.max_keys = options.max_keys or 1
        # A plain stage's one batch, for the whole run (None: a keyed stage).
        self.one = None if self.key is not None else Batch(self, None, self.with_origins)
        # A keyed stage's open batches: by key, least recently fed first (``lru``), and
        # in the order they opened (``opened``: the oldest's place is the one Failures
        # are counted behind). Empty on a plain stage.
        self.lru: OrderedDict[Hashable, Batch] = OrderedDict()
        self.opened: dict[Hashable, Batch] = {}
        # Failures waiting behind the oldest open batch's place. They lend their tokens
        # back while they wait (taken again when the batch is sent off or dropped, for
        # their reader to give back): otherwise Failures piling up behind a batch would
        # fill the window and cut the batch short, by timing. At most the window's limit
        # of them wait: one more sends the batch off early (a rule of the input alone, as
        # the model tests check), so what they hold stays bounded.
        self.held = 0

    def push(self, item: Any, node: Any, origin: Any) -> None:
        if self.observer is not None:
            self.observer.items_in(1)
        record = self.record  # (items count as they arrive: a batch is one call)
        if type(item) is Failure:
            if record is not None:
                record.passed_through()
            self.pass_failure(item, origin)
            return
        if record is not None:  # (the one cheap check, as a single stage's call has)
            record.items_in += 1
        batch = self.one
        if batch is None:
            batch = self.batch_of(item, origin)
            if batch is None:
                return  # (its key function raised: the policy had it)
        acc = batch.items
        acc.append(item)
        if batch.origins is not None:
            batch.origins.append(origin)
        self.ledger.queued(self)
        n = len(acc)
        if n == 1 and self.list is not None:
            batch.node = self.list.append()
        if n >= self.max_size or (batch.expired and n >= self.min_size):
            self.flush(batch)
        elif n == 1 and self.max_wait is not None:
            batch.timer = self.loop.call_later(self.max_wait, batch.on_timer, context=self.context)

    def batch_of(self, item: Any, origin: Any) -> Batch | None:
        """A keyed stage's open batch for ``item`` (opened if need be, the least recently
        fed flushed first if ``max_keys`` are open), or None if its key function raised."""
        lru = self.lru
        try:
            key = self.key(item)  # type: ignore[misc]
            batch = lru.get(key)  # (a TypeError if the key is not hashable)
        except Exception as exc:
            self.key_failed(exc, item, origin)
            return None
        if batch is not None:
            lru.move_to_end(key)
            return batch
        if len(lru) >= self.max_keys:
            self.flush(next(iter(lru.values())))
        batch = lru[key] = self.opened[key] = Batch(self, key, self.with_origins)
        return batch

    def key_failed(self, exc: Exception, item: Any, origin: Any) -> None:
        """The key function raised on ``item``: ``on_error`` for the item alone (in a
        call's context: a checkpoint reads the item's origin there)."""
        try:
            failure = self.call_context(origin).run(self.policy.key_failed, exc, item)
        except BaseException as error:
            self.run.fail(error)
            return
        if failure is None:  # skipped
            self.ledger.dropped(self, False, origin)
        else:
            self.pass_failure(failure, origin)

    def oldest(self) -> Batch | None:
        """The open batch whose place Failures are counted behind (ordered runs)."""
        if self.list is None:
            return None
        one = self.one
        if one is not None:
            return one if one.node is not None else None
        return next(iter(self.opened.values()), None)

    def pass_failure(self, failure: Failure[Any], origin: Any) -> None:
        """A Failure goes on, after the places of the open batches (see the module doc)."""
        oldest = self.oldest()
        if oldest is not None:
            if self.held >= self.ledger.limit:
                self.flush(oldest)  # too many wait: the batch goes, this one after it
                oldest = self.oldest()
            if oldest is not None:
                self.ledger.lent(self)  # (see ``held``)
        self.downstream.push(failure, None if self.list is None else self.list.append(), origin)

    def close(self, batch: Batch) -> tuple[list[Any], list[Origins] | None, bool]:
        """Take ``batch``'s items and origins out (a keyed batch closes), and whether it
        was the oldest open one."""
        batch.cancel_timer()
        batch.expired = False
        items, origins = batch.items, batch.origins
        batch.items = []
        if origins is not None:
            batch.origins = []
        if self.one is None and items:
            key = batch.key
            oldest = next(iter(self.opened.values())) is batch
            del self.lru[key], self.opened[key]
            return items, origins, oldest
        return items, origins, True

    def flush(self, batch: Batch) -> None:
        """Send ``batch``'s items off as one batch (even if fewer than ``min_size``)."""
        expired = batch.expired
        items, origins, oldest = self.close(batch)
        if not items:
            return
        if self.record is not None:
            self.record.flushed(len(items), expired)
        # The batch's result (the items' tokens go when it is done), and the Failures'
        # that waited behind its place (their reader gives them back).
        origin = None if origins is None else BatchOrigins(items, origins)
        self.ledger.batch_sent(self, origin, origins, oldest)
        node, batch.node = batch.node, None
        if self.running < self.limit:
            self.start(items, node, origin)
        else:
            self.pending.append((items, node, origin))

    def flush_one(self) -> bool:
        """Flush the least recently fed open batch, if any (the stall rule: ``_ledger``)."""
        batch = self.one if self.one is not None else next(iter(self.lru.values()), None)
        if batch is None or not batch.items:
            return False
        self.flush(batch)
        return True

    def emit_list(self, results: list[Any], node: Any, origin: Any) -> None:
        """A batch's list of results; in a branch's run, one result per item goes on as
        each item's own (see ``_branch``), but for the items a split batch left out
        (``LEFT_OUT`` in their places: see ``_policy``), which are through here."""
        if self.per_item and type(origin) is BatchOrigins and len(results) == len(origin.origins):
            if len(origin) > 1:
                self.emit_each(results, node, origin)
                return
            # (the batch's items all descend from one input item: its result, as any)
            results = [value for value in results if value is not LEFT_OUT]
        super().emit_list(results, node, origin)

    def emit_each(self, results: list[Any], node: Any, origin: BatchOrigins) -> None:
        """Each result of a branch's batch on as its own item's (``emit_list``)."""
        kept = [
            (value, one)
            for value, one in zip(results, origin.origins, strict=True)
            if value is not LEFT_OUT
        ]
        self.ledger.produced(len(kept) - 1)  # (never empty: see Policy.recover)
        self.ledger.attributed(origin, [one for _, one in kept])
        push = self.downstream.push
        if node is None:
            for value, one in kept:
                if self.run.closed:  # (as Stage.emit_list)
                    return
                push(value, None, one)
            return
        order = self.list
        assert order is not None
        nodes = [node]
        for _ in range(len(kept) - 1):
            node = order.insert_after(node)
            nodes.append(node)
        for (value, one), node in zip(kept, nodes, strict=True):
            push(value, node, one)

    def cancel_timer(self) -> None:
        for batch in [self.one] if self.one is not None else self.opened.values():
            batch.cancel_timer()

    @property
    def open_keys(self) -> int | None:
        """The keys with an open batch now (a keyed stage; None: a plain one)."""
        return None if self.one is not None else len(self.lru)

    def accumulated(self) -> int:
        if self.one is not None:
            return len(self.one.items)
        return sum(len(batch.items) for batch in self.opened.values())

    def close_input(self) -> None:
        """No more items will come: flush each batch's remainder, or drop it below
        ``min_size`` (oldest first)."""
        # (One at a time, the oldest first: a batch sent off and done at once may end
        # the run's last work, and the ledger then asks again, from inside the flush.)
        while True:
            batch = self.one if self.one is not None else next(iter(self.opened.values()), None)
            if batch is None or not batch.items:
                return
            if len(batch.items) >= self.min_size:
                self.flush(batch)
            else:
                node = batch.node
                dropped, origins, oldest = self.close(batch)
                batch.node = None
                # (A placed batch: its reader gives back a token for the place, and for
                # the Failures behind it.)
                self.ledger.remainder_dropped(self, len(dropped), node is not None, origins, oldest)
                if node is not None:
                    self.list.resolve(node, EMPTY)  # type: ignore[union-attr]
