"""The reorder list of ordered runs, and its one reader.

Every item of an ordered run that cannot be passed on at once owns a :class:`Node` in a
doubly linked list kept in output order. A pipeline has one list per *segment*: the
stretch before the first batch stage, between batch stages, and after the last one. The
stages of a segment write into the list; its **reader** (the consumer, for the last
segment; a batch stage's :class:`~._delivery.BatchFeeder`, for a segment that ends in a
batch stage) takes from it, in order, so ordered runs compose batches deterministically.

**What a node's value means.**

* :data:`PENDING`: its item is still being worked on (its token is with the work). The
  reader stops there.
* a result (any other object): the item's result, waiting for the reader to take it.
* :data:`EMPTY`: the item was dropped (by the function, a policy, the remainder rule).
  It holds its item's window token until it leaves the list.
* :data:`CLOSED`: the node holds nothing and no token: the node a generator result was
  expanded from (its item's token stays with the expansion, given back when the
  generator ends), or the :class:`Sentinel` of a generator that has ended.
* :data:`OPEN`: the :class:`Sentinel` of a generator that may still insert children
  before it. The reader stops there, and tells the sentinel (its ``on_front``: a
  generator waiting for room is woken; the window lets it on once
  :meth:`Sentinel.children_released`, see ``_ledger``).
* :data:`KEPT` is only ever the value of the dummy head, of a list whose reader keeps the
  tokens of the results it takes (a batch feeder: the items hold their tokens until their
  batch is done); the consumer's list has :data:`EMPTY` there.

A node is settled once: from PENDING to a result, EMPTY, or CLOSED (an expanded item's
node); a sentinel from OPEN to CLOSED.

**Who writes what.** Stages append nodes (``append``), insert a list result's elements or
a generator's children right after a node (``insert_after``), turn a node into an
expansion (``open_sentinel``), and settle a node (``resolve``). A segment's end appends a
result that completes behind others as a settled node (``SegmentEnd``). Only the reader
unlinks, and only at the front, through :meth:`~OrderList.take`,
:meth:`~OrderList.settle` and :meth:`~OrderList.drain`. When the front node is settled,
``resolve`` calls the list's ``on_front``: the reader's cue.

**Origins.** On a run with a checkpoint, a node also holds its value's origin(s)
(``Node.origin``, see ``_origin``; ``None`` otherwise): when a node with one leaves, its
count on them comes back too (``left``), as its token does; a result a batch feeder
takes is pushed on with it.

**Tokens.** A node gives its token back when it leaves the list, exactly once, through
the one ``release`` callback given at construction (the only way this module gives tokens
back): an EMPTY node always; a result only if the reader gives tokens back (the consumer:
the result is out of the run, through ``taken``, which counts it as delivered: the
ledger's ``taken``); a CLOSED node never. The token of a result taken by a
reader that keeps tokens is given back by whoever holds the result next (a batch stage,
when the batch is done).

**Eager and lazy reading.** What holds nothing for the reader (EMPTY, CLOSED) leaves as
soon as it is at the front (:meth:`~OrderList.settle`, the consumer's ``on_front``), not
at the reader's next read: a generator whose children are mostly dropped would otherwise
go one child per hand-over to the consumer (a turn of the event loop each). The consumer
takes results lazily (:meth:`~OrderList.take`, when it reads); a batch feeder takes them
eagerly (:meth:`~OrderList.drain`, its ``on_front``). The eager reads are not re-entered:
a token given back, or a result pushed on, may settle the front again (a batch flushed
into this list); the inner call returns at once and the outer one goes on. The statistics
count what waits (:meth:`~OrderList.held`); the window asks whether the reader's next
read makes room (:meth:`~OrderList.makes_room`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "CLOSED",
    "EMPTY",
    "KEPT",
    "NOTHING",
    "OPEN",
    "PENDING",
    "Closing",
    "Node",
    "OrderList",
    "SegmentEnd",
    "Sentinel",
    "Sink",
]


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PENDING: Any = _Marker("PENDING")
"""The node's item is still being worked on."""
EMPTY: Any = _Marker("EMPTY")
"""The item was dropped (it holds its token until it leaves the list); also the value of
the dummy head of a list whose reader gives tokens back."""
OPEN: Any = _Marker("OPEN")
"""A sentinel whose generator may still add children before it."""
CLOSED: Any = _Marker("CLOSED")
"""A node that holds nothing and no token: an expanded item's node, an ended sentinel."""
KEPT: Any = _Marker("KEPT")
"""The value of the dummy head of a list whose reader keeps the tokens of the items it
takes (a batch stage's feeder): taken from the list is not out of the window."""
NOTHING: Any = _Marker("NOTHING")
"""What :meth:`OrderList.take` returns when no result is at the front."""


class Closing(Protocol):
    """The run a draining reader feeds (see ``OrderList.drain``): it stops once the run is
    ``closed`` (failed, or closed by its consumer)."""

    closed: bool


class Node:
    __slots__ = ("next", "origin", "prev", "value")

    def __init__(self, value: Any, prev: Node | None, next: Node | None) -> None:
        self.value = value
        self.prev = prev
        self.next = next
        self.origin: Any = None  # (its value's origins, on a checkpoint: see above)


_new_node = Node.__new__


class Sentinel(Node):
    """End of a generator's children; ``on_front`` wakes a generator waiting for it."""

    __slots__ = ("on_front",)

    def __init__(self, prev: Node | None, next: Node | None) -> None:
        super().__init__(OPEN, prev, next)
        self.on_front: Callable[[], None] | None = None

    def children_released(self) -> bool:
        """Whether every child before the sentinel has left the list with its token given
        back: it is the front of a list whose reader gives tokens back (the consumer's).
        (A batch feeder keeps the tokens of what it took: there, it is never true.)"""
        prev = self.prev
        return prev is not None and prev.prev is None and prev.value is not KEPT


class OrderList:
    __slots__ = ("head", "keeps", "left", "on_front", "reading", "release", "tail", "taken")

    def __init__(
        self,
        on_front: Callable[[], None],
        release: Callable[[int], None],
        *,
        reader_keeps_tokens: bool = False,
        taken: Callable[[], None] | None = None,
        left: Callable[[Any], None] | None = None,
    ) -> None:
        # The dummy (head.next is the front); its value says whether the list's reader
        # gives an item's token back when it takes it (the consumer) or keeps it (a batch
        # stage): the window's rule for a generator at the front needs to know.
        self.head = Node(KEPT if reader_keeps_tokens else EMPTY, None, None)
        self.tail = self.head
        self.keeps = reader_keeps_tokens
        self.on_front = on_front  # the front was settled: the reader's cue
        self.release = release  # the one place a node's token is given back
        # (The consumer's list: a result it takes is delivered, its token given back.)
        self.taken: Callable[[], None] = taken if taken is not None else lambda: release(1)
        self.reading = False  # (see settle and drain: not re-entered)
        # A node's origins leave with it (the ledger's ``left``: see "Origins" above).
        self.left: Callable[[Any], None] = left if left is not None else lambda origin: None

    # -- the writers' side ---------------------------------------------------------------

    def append(self) -> Node:
        # Node.__new__ and three stores: half the cost of a call to Node.__init__.
        node = _new_node(Node)
        node.value = PENDING
        node.origin = None
        node.next = None
        node.prev = tail = self.tail
        tail.next = node
        self.tail = node
        return node

    def insert_after(self, node: Node, new: Node | None = None) -> Node:
        if new is None:
            new = Node(PENDING, node, node.next)
        else:
            new.prev, new.next = node, node.next
        if node.next is None:
            self.tail = new
        else:
            node.next.prev = new
        node.next = new
        return new

    def open_sentinel(self, node: Node) -> Sentinel:
        """Turn ``node`` into the start of a lazily expanded run of children.

        The node is settled as CLOSED: its item's window token stays with the expansion
        (released when the generator ends), not with the node.
        """
        sentinel = Sentinel(None, None)
        self.insert_after(node, sentinel)
        self.resolve(node, CLOSED)
        return sentinel

    def resolve(self, node: Node, value: Any) -> None:
        node.value = value
        if node.prev is self.head:
            self.on_front()

    # -- the reader's side ---------------------------------------------------------------

    def settle(self) -> None:
        """Unlink what holds nothing at the front (EMPTY, CLOSED), up to a result, a
        PENDING node or an OPEN sentinel (told, as by :meth:`take`).

        A token given back may settle the front again (a batch flushed into this list):
        that inner call returns at once, and this one goes on."""
        if self.reading:
            return
        self.reading = True
        try:
            self.take(False)
        finally:
            self.reading = False

    def drain(self, to: Sink, run: Closing) -> None:
        """Take every result at the front, in order, and push each on ``to`` (as an item
        with no node: next in order; with its origins), until none is left or ``run`` is
        closed. A push (or a token given back) that settles the front again leaves it to
        this call: the inner call returns at once."""
        if self.reading or run.closed:
            return
        self.reading = True
        try:
            self.take(True, to, run)
        finally:
            self.reading = False

    def take(self, taking: bool = True, to: Sink | None = None, run: Closing | None = None) -> Any:
        """The result at the front, unlinked, or :data:`NOTHING` if there is none.

        What holds nothing before it leaves too (EMPTY, CLOSED). Stops at a PENDING node,
        and at an OPEN sentinel, which it tells (``on_front``). Each node that leaves
        gives its token back as the module's docstring says.

        The one walk of the front (the reader calls it with no arguments): ``settle``
        walks with ``taking=False`` (a result ends the walk, left in place), ``drain``
        with ``to`` (each result is pushed there instead of returned, while ``run`` is
        open). One method, not one per use: it is the consumer's hot path.
        """
        head = self.head
        release = self.release
        while (node := head.next) is not None:
            value = node.value
            if value is PENDING:
                return NOTHING
            if value is OPEN:
                if node.on_front is not None:  # type: ignore[attr-defined]
                    node.on_front()  # type: ignore[attr-defined]
                return NOTHING
            if not taking and value is not EMPTY and value is not CLOSED:
                return NOTHING  # a result: it waits for the reader
            nxt = node.next
            head.next = nxt
            if nxt is None:
                self.tail = head
            else:
                nxt.prev = head
            node.prev = node.next = None
            if value is CLOSED:
                continue
            origin = node.origin
            if value is EMPTY:
                release(1)
                if origin is not None:
                    self.left(origin)
            else:
                if not self.keeps:
                    self.taken()
                    if origin is not None:
                        self.left(origin)
                if to is None:
                    return value
                to.push(value, None, origin)
            if run is not None and run.closed:  # (drain: the push, or a release, failed it)
                return NOTHING
        return NOTHING

    def makes_room(self) -> bool:
        """Whether the reader's next :meth:`take` gives a window token back: it finds a
        result or a dropped item (not looked past: a long look per wait for room was
        quadratic). For the consumer's list (a result taken by a batch feeder keeps its
        token)."""
        node = self.head.next
        while node is not None and node.value is CLOSED:  # (no token: the reader skips it)
            node = node.next
        return node is not None and node.value is not PENDING and node.value is not OPEN

    def held(self) -> int:
        """How many results wait in the list for the reader (held back for order)."""
        held = 0
        node = self.head.next
        while node is not None:
            value = node.value
            if (
                value is not PENDING
                and value is not EMPTY
                and value is not CLOSED
                and value is not OPEN
            ):
                held += 1
            node = node.next
        return held


class Sink:
    """Anything a stage can send results to: ``push(item, node, origin)``.

    ``node`` is the item's place in its segment's reorder list in an ordered run; it is
    ``None`` in an as-completed run, and also, in an ordered run, for an item that has not
    needed a place yet: such an item belongs at the tail of the list, because nothing can
    be appended behind it while it is passed on synchronously. ``origin`` is the item's
    origin(s) on a run with a checkpoint, else ``None`` (see ``_origin``).
    """

    __slots__ = ()

    def push(self, item: Any, node: Any, origin: Any) -> None:
        raise NotImplementedError


class SegmentEnd(Sink):
    """End of a segment of an ordered run: a result settles its place in the list.

    A result without a node belongs at the tail: if the list is empty it is next in
    order and goes straight to ``ready`` (the reader's own input), else it gets a node.
    """

    __slots__ = ("list", "ready")

    def __init__(self, order: OrderList, ready: Callable[[Any, Any], None]) -> None:
        self.list = order
        self.ready = ready

    def push(self, item: Any, node: Any, origin: Any) -> None:
        if node is not None:
            node.origin = origin
            self.list.resolve(node, item)
        elif self.list.head.next is None:
            self.ready(item, origin)
        else:
            node = self.list.append()
            node.origin = origin
            node.value = item
