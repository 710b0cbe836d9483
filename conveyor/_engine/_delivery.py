"""Where results go: the consumer's ``ready`` queue, and the feeders of batch stages.

In an as-completed run every result goes straight to ``ready``. In an ordered run, a
result that is next in order goes to ``ready`` too; one that completes behind a straggler
waits in the last segment's reorder list until the straggler is through (the consumer
reads the list: see ``Run.take`` and ``OrderList.take``). A batch stage of an ordered run
is fed by a :class:`BatchFeeder`, which reads its segment's list in order
(``OrderList.drain``), so batches are composed in input order.

On a run with a checkpoint, the consumer's ends keep each result's origins beside it
(:class:`OriginsOutput`, :class:`OrderedOriginsOutput`: ``Consumer.ready_origins``, in
step with ``ready``), for the ledger's ``taken`` and ``left``; a run without one uses the plain
ends (composed when the run is built: nothing is paid for it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ._ledger import Ledger
from ._order import OrderList, SegmentEnd, Sink


class Consumer(Protocol):
    """The run's consumer side (``_run.Run``), as the ends of a run see it."""

    ready: deque[Any]  # results the consumer can take, in order
    ready_origins: deque[Any]  # their origins, on a checkpoint (see above)
    ledger: Ledger
    closed: bool

    @property
    def consumer(self) -> asyncio.Future[None] | None:
        """The consumer's waiter, while it waits for a result."""
        ...

    def wake_consumer(self) -> None: ...
    def deliver(self, item: Any, origin: Any) -> None:
        """A result is next in order: hand it to the consumer."""
        ...


class Output(Sink):
    """The end of an as-completed run: results in completion order."""

    __slots__ = ("ready", "run")

    def __init__(self, run: Consumer) -> None:
        self.run = run
        self.ready: deque[Any] = run.ready

    def push(self, item: Any, node: Any, origin: Any) -> None:
        self.ready.append(item)
        if self.run.consumer is not None:
            self.run.wake_consumer()


class OriginsOutput(Output):
    """:class:`Output` on a checkpoint: each result's origins beside it."""

    __slots__ = ("origins",)

    def __init__(self, run: Consumer) -> None:
        super().__init__(run)
        self.origins = run.ready_origins

    def push(self, item: Any, node: Any, origin: Any) -> None:
        self.origins.append(origin)
        self.ready.append(item)
        if self.run.consumer is not None:
            self.run.wake_consumer()


class OrderedOutput(SegmentEnd):
    """The end of an ordered run: results in input order (see ``SegmentEnd``)."""

    __slots__ = ("run",)

    def __init__(self, run: Consumer, order: OrderList) -> None:
        super().__init__(order, run.deliver)
        self.run = run

    def push(self, item: Any, node: Any, origin: Any) -> None:
        # SegmentEnd.push with Run.deliver inlined: this runs once per result.
        if node is not None:
            self.list.resolve(node, item)
        elif self.list.head.next is None:
            self.run.ready.append(item)
            if self.run.consumer is not None:
                self.run.wake_consumer()
        else:
            self.list.append().value = item


class OrderedOriginsOutput(OrderedOutput):
    """:class:`OrderedOutput` on a checkpoint: each result's origins beside it (on its
    node, or in ``ready_origins``)."""

    __slots__ = ()

    def push(self, item: Any, node: Any, origin: Any) -> None:
        # SegmentEnd.push with Run.deliver inlined (as OrderedOutput.push).
        if node is not None:
            node.origin = origin
            self.list.resolve(node, item)
        elif self.list.head.next is None:
            run = self.run
            run.ready_origins.append(origin)
            run.ready.append(item)
            if run.consumer is not None:
                run.wake_consumer()
        else:
            node = self.list.append()
            node.origin = origin
            node.value = item


class Paired(Sink):
    """The end of a run whose results are paired (``with_items()``, a branch's run): each
    result goes on as ``(label(origin), result)``, with its origins (see ``_origin``)."""

    __slots__ = ("label", "sink")

    def __init__(self, sink: Sink, label: Callable[[Any], Any]) -> None:
        self.sink = sink
        self.label = label

    def push(self, item: Any, node: Any, origin: Any) -> None:
        self.sink.push((self.label(origin), item), node, origin)


class BatchFeeder:
    """Reads a segment's reorder list in order and feeds the batch stage that ends it.

    It reads eagerly (the list's ``on_front``) and keeps the tokens of the items it takes:
    they hold them in the batch until it is done (see ``_order``)."""

    __slots__ = ("batch", "list", "run")

    def __init__(self, run: Consumer, batch: Sink, origins: bool = False) -> None:
        self.run = run
        self.batch = batch
        self.list = OrderList(
            self.walk,
            run.ledger.released,
            reader_keeps_tokens=True,
            left=run.ledger.left if origins else None,  # (on a checkpoint: see _order)
        )

    def sink(self) -> SegmentEnd:
        """What the segment's last stage sends its results to."""
        return SegmentEnd(self.list, self.ready)

    def ready(self, item: Any, origin: Any) -> None:
        """An item that is next in order, with no node (see ``SegmentEnd``)."""
        self.batch.push(item, None, origin)

    def walk(self) -> None:
        self.list.drain(self.batch, self.run)
