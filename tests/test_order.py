"""Unit tests of the reorder list of ordered runs (``conveyor._engine._order``).

Covers ``OrderList`` (append, insert_after, resolve, unlink_front, open_sentinel, tail
maintenance), when ``on_front`` is called, the semantics of generator sentinels, and
``SegmentEnd.push``; a hypothesis property checks that a reader driven by ``on_front``
sees values in list order, against a plain Python list as the model.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conveyor import single_task
from conveyor._engine._order import (
    CLOSED,
    EMPTY,
    OPEN,
    PENDING,
    Node,
    OrderList,
    SegmentEnd,
    Sentinel,
)


class Recorder:
    """An ``on_front`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def nodes(order: OrderList) -> list[Node]:
    """The nodes from the front, checking the back links on the way."""
    out: list[Node] = []
    node = order.head
    while node.next is not None:
        assert node.next.prev is node
        node = node.next
        out.append(node)
    assert order.tail is node
    return out


def values(order: OrderList) -> list[Any]:
    return [node.value for node in nodes(order)]


# -- OrderList --------------------------------------------------------------------------


def test_append_links_pending_nodes_at_the_tail() -> None:
    order = OrderList(Recorder())
    assert order.is_empty() and order.tail is order.head and order.head.value is EMPTY
    a = order.append()
    b = order.append()
    assert not order.is_empty()
    assert nodes(order) == [a, b]
    assert a.value is PENDING and b.value is PENDING
    assert a.prev is order.head and b.next is None


def test_insert_after_a_middle_node_keeps_the_tail() -> None:
    order = OrderList(Recorder())
    a, c = order.append(), order.append()
    b = order.insert_after(a)
    assert b.value is PENDING
    assert nodes(order) == [a, b, c]
    assert order.tail is c


def test_insert_after_the_tail_moves_the_tail() -> None:
    order = OrderList(Recorder())
    a = order.append()
    b = order.insert_after(a)
    assert order.tail is b
    c = order.append()
    assert nodes(order) == [a, b, c]


def test_insert_after_links_a_given_node() -> None:
    order = OrderList(Recorder())
    a, c = order.append(), order.append()
    given_node = Node("x", None, None)
    assert order.insert_after(a, given_node) is given_node
    assert nodes(order) == [a, given_node, c]
    assert given_node.value == "x"


def test_resolve_front_calls_on_front() -> None:
    on_front = Recorder()
    order = OrderList(on_front)
    a = order.append()
    order.append()
    order.resolve(a, 1)
    assert a.value == 1
    assert on_front.calls == 1


def test_resolve_behind_the_front_does_not_call_on_front() -> None:
    on_front = Recorder()
    order = OrderList(on_front)
    a, b, c = order.append(), order.append(), order.append()
    order.resolve(c, 3)
    order.resolve(b, 2)
    assert on_front.calls == 0
    assert values(order) == [PENDING, 2, 3]
    order.resolve(a, 1)
    assert on_front.calls == 1


def test_node_becomes_front_after_unlink() -> None:
    on_front = Recorder()
    order = OrderList(on_front)
    a, b = order.append(), order.append()
    order.resolve(a, 1)
    assert order.unlink_front() is a
    assert a.prev is None and a.next is None
    assert b.prev is order.head
    order.resolve(b, 2)
    assert on_front.calls == 2


def test_unlink_of_the_last_node_resets_the_tail() -> None:
    order = OrderList(Recorder())
    a = order.append()
    order.unlink_front()
    assert order.is_empty()
    assert order.tail is order.head
    # Appending after that links from the head again, not from the unlinked node.
    b = order.append()
    assert nodes(order) == [b]
    assert b.prev is order.head
    assert a.next is None


def test_unlink_keeps_the_tail_while_nodes_remain() -> None:
    order = OrderList(Recorder())
    a, b, c = order.append(), order.append(), order.append()
    assert order.unlink_front() is a
    assert order.tail is c
    assert nodes(order) == [b, c]


# -- sentinels ------------------------------------------------------------------------


def test_open_sentinel_closes_the_node_and_links_an_open_sentinel() -> None:
    on_front = Recorder()
    order = OrderList(on_front)
    a, b = order.append(), order.append()
    sentinel = order.open_sentinel(a)
    assert isinstance(sentinel, Sentinel)
    assert nodes(order) == [a, sentinel, b]
    assert a.value is CLOSED
    assert sentinel.value is OPEN
    assert sentinel.on_front is None
    assert on_front.calls == 1  # a was the front
    assert order.tail is b


def test_open_sentinel_on_a_later_node() -> None:
    on_front = Recorder()
    order = OrderList(on_front)
    a, b = order.append(), order.append()
    sentinel = order.open_sentinel(b)
    assert on_front.calls == 0  # b is not the front
    assert order.tail is sentinel
    assert nodes(order) == [a, b, sentinel]


def test_children_inserted_before_the_sentinel_keep_their_order() -> None:
    on_front = Recorder()
    order = OrderList(on_front)
    parent, after = order.append(), order.append()
    sentinel = order.open_sentinel(parent)
    children = [order.insert_after(sentinel.prev) for _ in range(3)]
    assert nodes(order) == [parent, *children, sentinel, after]
    for i, child in enumerate(children):
        order.resolve(child, i)
    sentinel.value = CLOSED
    assert values(order) == [CLOSED, 0, 1, 2, CLOSED, PENDING]


def test_children_of_the_last_node_stay_before_its_sentinel() -> None:
    order = OrderList(Recorder())
    parent = order.append()
    sentinel = order.open_sentinel(parent)
    first = order.insert_after(sentinel.prev)
    second = order.insert_after(sentinel.prev)
    assert order.tail is sentinel
    assert nodes(order) == [parent, first, second, sentinel]


# -- SegmentEnd -----------------------------------------------------------------------


def test_segment_end_push_with_a_node_resolves_it() -> None:
    on_front = Recorder()
    order = OrderList(on_front)
    ready: list[Any] = []
    end = SegmentEnd(order, ready.append)
    a, b = order.append(), order.append()
    end.push("b", b)
    assert b.value == "b" and on_front.calls == 0
    end.push("a", a)
    assert a.value == "a" and on_front.calls == 1
    assert ready == []


def test_segment_end_push_without_a_node_on_an_empty_list_is_ready() -> None:
    on_front = Recorder()
    order = OrderList(on_front)
    ready: list[Any] = []
    SegmentEnd(order, ready.append).push("x", None)
    assert ready == ["x"]
    assert order.is_empty()
    assert on_front.calls == 0


def test_segment_end_push_without_a_node_behind_others_appends() -> None:
    order = OrderList(Recorder())
    ready: list[Any] = []
    end = SegmentEnd(order, ready.append)
    pending = order.append()
    end.push("x", None)
    assert ready == []
    assert values(order) == [PENDING, "x"]
    assert nodes(order)[0] is pending


# -- property: an on_front-driven reader sees values in list order ------------------------

operations = st.lists(
    st.one_of(
        st.just(("append", 0)),
        st.tuples(st.just("resolve"), st.integers(min_value=0)),
        st.tuples(st.just("insert"), st.integers(min_value=0)),
        st.just(("read", 0)),
    ),
    max_size=60,
)


@given(operations)
def test_reader_sees_values_in_list_order(ops: list[tuple[str, int]]) -> None:
    out: list[int] = []
    woken = Recorder()
    order = OrderList(woken)
    model: list[int] = []  # keys in list order
    pending: dict[int, Node] = {}
    resolved: set[int] = set()
    counter = 0

    def read() -> None:
        while (node := order.head.next) is not None and node.value is not PENDING:
            out.append(order.unlink_front().value)

    def new_key(node: Node) -> int:
        nonlocal counter
        counter += 1
        pending[counter] = node
        return counter

    for op, arg in ops:
        if op == "append":
            model.append(new_key(order.append()))
        elif op == "insert" and pending:
            key = sorted(pending)[arg % len(pending)]
            model.insert(model.index(key) + 1, new_key(order.insert_after(pending[key])))
        elif op == "resolve" and pending:
            key = sorted(pending)[arg % len(pending)]
            was_front = order.head.next is pending[key]
            before = woken.calls
            order.resolve(pending.pop(key), key)
            resolved.add(key)
            assert woken.calls == before + was_front
        elif op == "read":
            read()
        # What was read is a prefix of the model, and only resolved values.
        assert out == model[: len(out)]
        assert set(out) <= resolved
    for key in sorted(pending):
        order.resolve(pending[key], key)
    read()
    assert out == model
    assert order.is_empty() and order.tail is order.head


@given(st.permutations(range(8)))
def test_eager_reader_on_front_delivers_the_resolved_prefix(resolve_order: list[int]) -> None:
    out: list[int] = []

    def read() -> None:
        while (node := order.head.next) is not None and node.value is not PENDING:
            out.append(order.unlink_front().value)

    order = OrderList(read)  # the reader reads only when told the front changed
    all_nodes = [order.append() for _ in range(8)]
    done: set[int] = set()
    for i in resolve_order:
        order.resolve(all_nodes[i], i)
        done.add(i)
        prefix = 0
        while prefix in done:
            prefix += 1
        assert out == list(range(prefix))
    assert order.is_empty()


# -- a generator whose children are mostly dropped (issue 17, item 2) -------------------


async def test_dropped_children_of_a_generator_stay_within_the_window() -> None:
    """Children a filter drops wait at the list's front for the consumer to give their
    tokens back: the consumer makes room, so the generator waits for it. (It used to be
    let past the window item after item by the stall's last resort, never yielding to the
    consumer: the list grew to the whole output, each item scanned it, quadratic.)"""

    window = 50
    peaks: list[int] = []

    @single_task
    def explode(n: int) -> Any:
        for i in range(n):
            run = stream._run
            assert run is not None
            peaks.append(run.ledger.tokens)
            yield i

    @single_task
    def rare(x: int) -> int | None:
        return x if x % 1000 == 0 else None

    stream = (explode | rare).with_context(max_in_flight=window)([5000])
    assert await stream.collect() == [0, 1000, 2000, 3000, 4000]
    assert len(peaks) == 5000
    # The generator's own item, and its children within the window (plus one let through).
    assert max(peaks) <= window + 2


@single_task
def explode(n: int) -> Any:
    """Yields 0 .. n - 1."""
    yield from range(n)


@single_task
def rare(x: int) -> int | None:
    """Keeps one item in 100,000."""
    return x if x % 100_000 == 0 else None


async def test_a_large_expansion_followed_by_a_filter_is_linear() -> None:
    """400,000 children, all but four dropped: well under a second once linear (before:
    10k took 0.7 s, 40k 13 s, 400k never finished). The bound is generous on purpose."""
    import time

    started = time.perf_counter()
    assert await (explode | rare)([400_000]).collect() == [0, 100_000, 200_000, 300_000]
    assert time.perf_counter() - started < 20


async def test_dropped_children_leave_the_front_without_the_consumer() -> None:
    """Two generators, children mostly dropped: once the second one's children (behind
    the first one's sentinel) fill the window, the first may go on only while its own
    children are all passed on. Dropped children at the front used to wait for the
    consumer's next read: a hand-over per child, one turn of the event loop each (117,687
    turns for 200k children, 4x slower). They now leave the list when they are settled."""
    turns = 0
    done = False

    async def count_turns() -> None:
        nonlocal turns
        while not done:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    try:
        assert await (explode | rare)([100_000, 100_000]).collect() == [0, 0]
    finally:
        done = True
        await counter
    assert turns < 10_000, turns  # ~100 (slices of the expansion), not one per child


def test_drop_settled_front_unlinks_what_holds_nothing_and_gives_tokens_back() -> None:
    order = OrderList(Recorder())
    a, b, c, d = (order.append() for _ in range(4))
    order.resolve(a, EMPTY)
    order.resolve(b, CLOSED)
    order.resolve(c, EMPTY)
    released: list[int] = []
    assert order.drop_settled_front(released.append) is d
    assert released == [1, 1]  # the two dropped items' tokens; CLOSED holds none
    assert values(order) == [PENDING]
    order.resolve(d, EMPTY)
    assert order.drop_settled_front(released.append) is None
    assert order.is_empty() and order.tail is order.head and released == [1, 1, 1]


def test_drop_settled_front_stops_at_a_value_or_a_sentinel() -> None:
    order = OrderList(Recorder())
    a = order.append()
    sentinel = order.open_sentinel(a)
    assert order.drop_settled_front(lambda n: None) is sentinel
    b = order.append()
    b.value = "x"
    order.resolve(sentinel, CLOSED)
    assert order.drop_settled_front(lambda n: None) is b


def test_drop_settled_front_re_entered_from_release_leaves_it_to_the_outer_call() -> None:
    order = OrderList(Recorder())
    a, b = order.append(), order.append()
    order.resolve(a, EMPTY)
    order.resolve(b, EMPTY)
    inner: list[Node | None] = []

    def release(n: int) -> None:  # a release that settles the front again (a flush)
        inner.append(order.drop_settled_front(release))

    assert order.drop_settled_front(release) is None
    assert inner == [None, None] and order.is_empty()


def test_makes_room_looks_past_ended_generators_only() -> None:
    order = OrderList(Recorder())
    assert not order.makes_room()
    a, b, c = order.append(), order.append(), order.append()
    order.resolve(a, CLOSED)
    assert not order.makes_room()  # b is pending
    order.resolve(b, EMPTY)
    assert order.makes_room()  # a dropped item: taking it gives its token back
    order.resolve(b, PENDING)
    c.value = 1
    assert not order.makes_room()  # not looked past a pending item
