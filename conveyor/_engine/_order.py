"""The reorder list of ordered runs.

Every item of an ordered run owns a :class:`Node` in a doubly linked list kept in output
order. A node is *pending* until its item leaves the segment (it then holds the value),
is dropped (:data:`EMPTY`), or is expanded into several items:

* a list result: new nodes are linked right after it, one per element;
* a generator result: the node becomes EMPTY and a :class:`Sentinel` is linked after it;
  children are inserted before the sentinel as the generator yields them, and the
  sentinel is closed when the generator ends.

The reader of a list (the consumer, or the walker feeding a batch stage) only ever looks
at the front: ``resolve`` tells it when the front changes. A pipeline has one list per
*segment*: the stretch before the first batch stage, between batch stages, and after the
last one. A batch stage reads its segment's list in order, so ordered runs compose
batches deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "CLOSED",
    "EMPTY",
    "KEPT",
    "OPEN",
    "PENDING",
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
"""The item was dropped, or expanded into the nodes that follow."""
OPEN: Any = _Marker("OPEN")
"""A sentinel whose generator may still add children before it."""
CLOSED: Any = _Marker("CLOSED")
"""A sentinel whose generator has finished."""
KEPT: Any = _Marker("KEPT")
"""The value of the dummy head of a list whose reader keeps the tokens of the items it
takes (a batch stage's feeder): taken from the list is not out of the window."""


class Node:
    __slots__ = ("next", "prev", "value")

    def __init__(self, value: Any, prev: Node | None, next: Node | None) -> None:
        self.value = value
        self.prev = prev
        self.next = next


_new_node = Node.__new__


class Sentinel(Node):
    """End of a generator's children; ``on_front`` wakes a generator waiting for it."""

    __slots__ = ("on_front",)

    def __init__(self, prev: Node | None, next: Node | None) -> None:
        super().__init__(OPEN, prev, next)
        self.on_front: Callable[[], None] | None = None


class OrderList:
    __slots__ = ("dropping", "head", "on_front", "tail")

    def __init__(self, on_front: Callable[[], None], *, reader_keeps_tokens: bool = False) -> None:
        # The dummy (head.next is the front); its value says whether the list's reader
        # gives an item's token back when it takes it (the consumer) or keeps it (a batch
        # stage): the window's rule for a generator at the front needs to know.
        self.head = Node(KEPT if reader_keeps_tokens else EMPTY, None, None)
        self.tail = self.head
        self.on_front = on_front
        self.dropping = False  # (see drop_settled_front)

    def append(self) -> Node:
        # Node.__new__ and three stores: half the cost of a call to Node.__init__.
        node = _new_node(Node)
        node.value = PENDING
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

    def unlink_front(self) -> Node:
        node = self.head.next
        assert node is not None
        nxt = node.next
        self.head.next = nxt
        if nxt is None:
            self.tail = self.head
        else:
            nxt.prev = self.head
        node.prev = node.next = None
        return node

    def drop_settled_front(self, release: Callable[[int], None]) -> Node | None:
        """Unlink the nodes at the front that hold nothing for the reader: dropped items
        (EMPTY; ``release(1)`` gives back each one's window token) and ended generators'
        nodes (CLOSED, no token). Returns the front node left, None if there is none.

        Done when the front is settled, not at the reader's next read: a generator whose
        children are mostly dropped would otherwise go one child per hand-over to the
        reader (a turn of the event loop each, for the consumer). A ``release`` may settle
        the front again (a batch flushed into this list): that inner call returns None at
        once, and this one goes on."""
        if self.dropping:
            return None
        self.dropping = True
        try:
            head = self.head
            while (node := head.next) is not None:
                value = node.value
                if value is EMPTY:
                    self.unlink_front()
                    release(1)
                elif value is CLOSED:
                    self.unlink_front()
                else:
                    return node
            return None
        finally:
            self.dropping = False

    def makes_room(self) -> bool:
        """Whether the reader's next read gives a window token back: it finds a value or
        a dropped item (not looked past: a long look per wait for room was quadratic)."""
        node = self.head.next
        while node is not None and node.value is CLOSED:  # (no token: the reader skips it)
            node = node.next
        return node is not None and node.value is not PENDING and node.value is not OPEN

    def is_empty(self) -> bool:
        return self.head.next is None


class Sink:
    """Anything a stage can send results to: ``push(item, node)``.

    ``node`` is the item's place in its segment's reorder list in an ordered run; it is
    ``None`` in an as-completed run, and also, in an ordered run, for an item that has not
    needed a place yet: such an item belongs at the tail of the list, because nothing can
    be appended behind it while it is passed on synchronously.
    """

    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        raise NotImplementedError


class SegmentEnd(Sink):
    """End of a segment of an ordered run: a result settles its place in the list.

    A result without a node belongs at the tail: if the list is empty it is next in
    order and goes straight to ``ready`` (the reader's own input), else it gets a node.
    """

    __slots__ = ("list", "ready")

    def __init__(self, order: OrderList, ready: Callable[[Any], None]) -> None:
        self.list = order
        self.ready = ready

    def push(self, item: Any, node: Any) -> None:
        if node is not None:
            self.list.resolve(node, item)
        elif self.list.head.next is None:
            self.ready(item)
        else:
            self.list.append().value = item
