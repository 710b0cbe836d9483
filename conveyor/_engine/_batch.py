"""The stage of a batch task: it accumulates items and calls the task on lists of them.

Calling, results and errors work as for any stage (see ``_stage``); what is particular
to batches is here: when a batch is flushed, how its items' window tokens come back, and
what happens to the remainder at the end of the input. (How ``on_error="skip_item"``
finds the failing items of a batch is the policy's: see ``_policy``.)

In an ordered run a batch's result has its place from the moment the batch opens, so a
:class:`~conveyor.errors.Failure` that reaches the stage meanwhile (from an earlier
``on_error="emit"``) comes after it: where its item's result would be.

A batch is flushed when it holds ``max_size`` items; when ``max_wait`` seconds have
passed since its first item, if it holds at least ``min_size``; when the input has ended
(a remainder smaller than ``min_size`` is dropped, see :meth:`BatchStage.close_input`);
and when the run is stalled with the window full of items waiting here (a window smaller
than the batch: see ``_ledger``).

On a run with a checkpoint, each accumulated item's origin is kept beside it
(``origins``); the batch's result carries them all (``_origin.BatchOrigins``: merged,
each once, in order), and its call's context has each item's.
"""

from __future__ import annotations

import asyncio
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


class BatchStage(Stage):
    __slots__ = (
        "_expired",
        "_timer",
        "acc",
        "acc_node",
        "held",
        "max_size",
        "max_wait",
        "min_size",
        "origins",
        "per_item",
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
        spec = plan.spec
        self.min_size = spec.options.min_size
        self.max_size = spec.options.max_size
        self.max_wait = spec.options.max_wait
        self.acc: list[Any] = []
        # The accumulated items' origins, on a run that tracks them (else None).
        self.origins: list[Origins] | None = [] if run.origins else None
        # In a branch's run, a result per item is each item's own (see ``emit_list``).
        self.per_item = run.branch
        # In an ordered run, the place of the accumulating batch's result, reserved when
        # the batch opens: a Failure that arrives meanwhile goes after it, where its
        # item's result would be. The place takes its window token only when the batch
        # is sent off: a token taken at the opening would make a window of exactly
        # max_size items hold only max_size - 1 of them (batches cut short, and items
        # then lost to the remainder rule).
        self.acc_node: Any = None
        # Failures waiting behind that place. They lend their tokens back while they
        # wait (taken again when the batch is sent off or dropped, for their reader to
        # give back): otherwise Failures piling up behind a batch would fill the window
        # and cut the batch short, by timing. At most the window's limit of them wait:
        # one more sends the batch off early (a rule of the input alone, as the model
        # tests check), so what they hold stays bounded.
        self.held = 0
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def push(self, item: Any, node: Any, origin: Any) -> None:
        if self.observer is not None:
            self.observer.items_in(1)
        record = self.record  # (items count as they arrive: a batch is one call)
        if type(item) is Failure:
            if record is not None:
                record.passed_through()
            if self.acc_node is not None:  # (an ordered run, with a batch open)
                if self.held < self.ledger.limit:
                    self.ledger.lent(self)  # (see above)
                else:
                    self.flush()  # too many wait: the batch goes, this one after it
            self.downstream.push(item, None if self.list is None else self.list.append(), origin)
            return
        if record is not None:  # (the one cheap check, as a single stage's call has)
            record.items_in += 1
        acc = self.acc
        acc.append(item)
        if self.origins is not None:
            self.origins.append(origin)
        self.ledger.queued(self)
        n = len(acc)
        if n == 1 and self.list is not None:
            self.acc_node = self.list.append()
        if n >= self.max_size or (self._expired and n >= self.min_size):
            self.flush()
        elif n == 1 and self.max_wait is not None:
            self._timer = self.loop.call_later(self.max_wait, self._on_timer, context=self.context)

    def _on_timer(self) -> None:
        self._timer = None
        self._expired = True
        if len(self.acc) >= self.min_size and not self.run.closed:
            self.flush()

    def flush(self) -> None:
        """Send the accumulated items off as one batch (even if fewer than ``min_size``)."""
        batch, self.acc = self.acc, []
        origins = self.origins
        if origins is not None:
            self.origins = []
        if batch and self.record is not None:
            self.record.flushed(len(batch), self._expired)
        self._expired = False
        self.cancel_timer()
        if not batch:
            return
        # The batch's result (the items' tokens go when it is done), and the Failures'
        # that waited behind its place (their reader gives them back).
        origin = None if origins is None else BatchOrigins(batch, origins)
        self.ledger.batch_sent(self, origin, origins)
        node, self.acc_node = self.acc_node, None
        if self.running < self.limit:
            self.start(batch, node, origin)
        else:
            self.pending.append((batch, node, origin))

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def accumulated(self) -> int:
        return len(self.acc)

    def close_input(self) -> None:
        """No more items will come: flush the remainder, or drop it below ``min_size``."""
        if len(self.acc) >= self.min_size:
            self.flush()
        elif self.acc:
            dropped, self.acc = len(self.acc), []
            origins = self.origins
            if origins is not None:
                self.origins = []
            node, self.acc_node = self.acc_node, None
            # (A placed batch: its reader gives back a token for the place, and for the
            # Failures behind it.)
            self.ledger.remainder_dropped(self, dropped, node is not None, origins)
            if node is not None:
                self.list.resolve(node, EMPTY)  # type: ignore[union-attr]
