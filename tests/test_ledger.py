"""Unit tests of the run's window (``conveyor._engine._ledger.Ledger``).

Covers tokens (take, release, full), the low-water mark of ``room_made``, waiting for
room (at once, blocking, re-checking after a wake-up, ``CancelledError`` once closed,
``busy`` while waiting), ``may_proceed`` for the pump and for expansions (including the
ordered-run rule for a sentinel at the front), stall handling (``check_stall``,
``flush_batch``, ``can_drain``, the last resort for generators, ``idle``) and the ``on_wait`` hook.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import batch_task, single_task
from conveyor._engine._ledger import Account, Ledger
from conveyor._engine._order import OrderList


def window(limit: int, tokens: int = 0, busy: int = 0) -> Ledger:
    w = Ledger(asyncio.get_running_loop(), limit)
    w.tokens = tokens
    w.busy = busy
    return w


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def start(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


def add_waiter(w: Ledger, sentinel: Any = None, expansion: bool = False) -> asyncio.Future[bool]:
    future: asyncio.Future[bool] = w.loop.create_future()
    w.waiting.append((future, sentinel, expansion))
    return future


# -- tokens -------------------------------------------------------------------------------


async def test_take_release_full() -> None:
    w = window(3)
    assert not w.full()
    w.produced()
    w.produced(2)
    assert w.tokens == 3 and w.full()
    w.released()
    assert w.tokens == 2 and not w.full()
    w.released(2)
    assert w.tokens == 0


@pytest.mark.parametrize(("limit", "low_water"), [(1, 0), (8, 7), (16, 14), (1000, 875)])
async def test_low_water(limit: int, low_water: int) -> None:
    assert window(limit).low_water == low_water


async def test_room_made_wakes_only_at_low_water_while_busy() -> None:
    w = window(16, tokens=16, busy=2)  # the pump and one call
    task = start(w.wait_for_room())
    await settle()
    assert not task.done() and w.busy == 1  # the pump no longer counts
    w.released()  # 15 > low water 14: not worth a wake-up yet
    await settle()
    assert not task.done()
    w.released()  # 14
    await settle()
    assert task.done()
    await task
    assert w.busy == 2 and w.waiting == []


async def test_room_made_wakes_above_low_water_when_nothing_is_busy() -> None:
    w = window(16, tokens=16, busy=1)  # only the pump
    task = start(w.wait_for_room())
    await settle()
    assert not task.done() and w.busy == 0
    w.released()  # 15 > 14, but nobody else is working
    await settle()
    assert task.done()
    await task
    assert w.busy == 1


# -- waiting for room ---------------------------------------------------------------------


async def test_wait_for_room_returns_at_once_when_there_is_room() -> None:
    w = window(4, tokens=3, busy=1)
    coro = w.wait_for_room()
    with pytest.raises(StopIteration):
        coro.send(None)  # finished without suspending
    assert w.busy == 1 and w.waiting == []


async def test_wait_for_room_blocks_while_full() -> None:
    w = window(4, tokens=4, busy=2)
    task = start(w.wait_for_room())
    await settle()
    assert not task.done()
    assert len(w.waiting) == 1 and w.busy == 1
    w.tokens = 2  # without release(): nobody wakes the waiter
    await settle()
    assert not task.done()
    await stop(task)
    assert w.waiting == [] and w.busy == 2  # restored on cancellation too


async def test_wait_for_room_when_closed_and_full_raises_cancelled() -> None:
    w = window(4, tokens=4, busy=1)
    w.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(w.wait_for_room(), 5)
    assert w.waiting == [] and w.busy == 1


async def test_woken_waiter_rechecks_and_raises_once_closed() -> None:
    w = window(4, tokens=4, busy=2)
    task = start(w.wait_for_room())
    await settle()
    w.released(2)  # woken (2 <= low water 3)...
    w.produced(2)  # ...but the room is gone before it runs, and the run closes
    w.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert w.busy == 2 and w.waiting == []


async def test_woken_waiter_without_room_waits_again() -> None:
    w = window(4, tokens=4, busy=2)
    task = start(w.wait_for_room())
    await settle()
    w.released(2)
    w.produced(2)
    await settle()
    assert not task.done()
    assert len(w.waiting) == 1 and w.busy == 1
    w.released(2)
    await settle()
    await task
    assert w.busy == 2


async def test_close_does_not_wake_waiters() -> None:
    w = window(4, tokens=4, busy=2)
    task = start(w.wait_for_room())
    await settle()
    w.close()
    w.wake_waiters()
    w.check_stall()
    await settle()
    assert not task.done()  # the run cancels its tasks itself
    await stop(task)


# -- may_proceed --------------------------------------------------------------------------


async def test_may_proceed_for_the_pump() -> None:
    w = window(4, tokens=3)
    assert w.may_proceed(None, False)
    w.tokens = 4
    assert not w.may_proceed(None, False)
    w.expanding = 2  # does not count for the pump
    assert not w.may_proceed(None, False)


async def test_may_proceed_for_expansions_discounts_their_own_items() -> None:
    w = window(4, tokens=5)
    w.expanding = 2
    assert w.may_proceed(None, True)  # 5 - 2 < 4
    w.tokens = 6
    assert not w.may_proceed(None, True)  # 6 - 2 == 4


async def test_may_proceed_for_a_sentinel_at_the_front_of_an_ordered_run() -> None:
    w = window(4, tokens=10)
    order = OrderList(lambda: None, lambda n: None)
    parent = order.append()
    sentinel = order.open_sentinel(parent)
    assert not w.may_proceed(sentinel, True)  # the parent is still before it
    order.settle()  # the reader unlinks the parent (CLOSED)
    assert sentinel.prev is order.head
    assert w.may_proceed(sentinel, True)
    assert not w.may_proceed(sentinel, False)  # the rule is for expansions only


async def test_sentinel_reaching_the_front_wakes_its_generator() -> None:
    w = window(4, tokens=10, busy=2)
    order = OrderList(lambda: None, lambda n: None)
    sentinel = order.open_sentinel(order.append())
    task = start(w.wait_for_room(sentinel, expansion=True))
    await settle()
    assert not task.done()
    assert sentinel.on_front is not None
    order.settle()  # the reader unlinks the parent and tells the sentinel at the front
    await settle()
    await task
    assert sentinel.on_front is None and w.waiting == [] and w.busy == 2


async def test_wake_waiters_wakes_only_those_who_may_proceed() -> None:
    w = window(4, tokens=5)
    w.expanding = 2
    pump = add_waiter(w)
    generator = add_waiter(w, expansion=True)
    w.wake_waiters()
    assert generator.done() and not pump.done()
    assert [waiter[0] for waiter in w.waiting] == [pump]


async def test_wake_waiters_drops_cancelled_waiters() -> None:
    w = window(4, tokens=0)
    future = add_waiter(w)
    future.cancel()
    w.wake_waiters()
    assert w.waiting == []


# -- stalls -------------------------------------------------------------------------------


async def test_check_stall_flushes_batches_until_there_is_none() -> None:
    w = window(4, tokens=4)
    future = add_waiter(w)
    results = iter([True, True, False, True])
    calls: list[int] = []

    def on_stall() -> bool:
        calls.append(w.tokens)
        return next(results)

    w.flush_batch = on_stall
    w.check_stall()
    assert len(calls) == 3
    assert not future.done()


async def test_check_stall_stops_once_a_waiter_may_proceed() -> None:
    w = window(4, tokens=4)
    future = add_waiter(w)
    calls = 0

    def on_stall() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            w.tokens -= 1  # this flush made room (without release: no wake-up of its own)
        return True

    w.flush_batch = on_stall
    w.check_stall()
    assert calls == 2
    assert future.done() and w.waiting == []


@pytest.mark.parametrize(
    "state", ["busy", "busy_may_proceed", "no_waiter", "closed", "may_proceed"]
)
async def test_check_stall_does_nothing_unless_stalled(state: str) -> None:
    """(``busy_may_proceed``: a stall check made while others work, by a waiter that
    just began to wait, woke the others one token at a time, below the low-water mark:
    a ``generator | filter`` ran at 0.54 of its rate.)"""
    w = window(4, tokens=3 if "may_proceed" in state else 4, busy=int("busy" in state))
    future = None if state == "no_waiter" else add_waiter(w)
    if state == "closed":
        w.close()
    calls = 0

    def on_stall() -> bool:
        nonlocal calls
        calls += 1
        return True

    w.flush_batch = on_stall
    w.check_stall()
    assert calls == 0
    # A waiter that may proceed is woken instead.
    assert future is None or future.done() == (state == "may_proceed")


async def test_idle_checks_for_a_stall_only_when_nothing_is_busy() -> None:
    w = window(4, tokens=4, busy=1)
    add_waiter(w)
    calls = 0

    def on_stall() -> bool:
        nonlocal calls
        calls += 1
        return False

    w.flush_batch = on_stall
    w.idle()
    assert calls == 0
    w.busy = 0
    w.idle()
    assert calls == 1


async def test_waiting_on_a_stalled_window_flushes() -> None:
    w = window(4, tokens=4, busy=1)  # only the pump works, and it is about to wait
    flushes = 0

    def on_stall() -> bool:
        nonlocal flushes
        flushes += 1
        w.released(2)  # a flushed batch is done at once and gives its tokens back
        return True

    w.flush_batch = on_stall
    await asyncio.wait_for(w.wait_for_room(), 1)
    assert flushes == 1 and w.busy == 1 and w.waiting == []


# -- on_wait ------------------------------------------------------------------------------


async def test_on_wait_is_called_without_waiting() -> None:
    w = window(4, tokens=0)
    waited: list[float] = []
    w.on_wait = waited.append
    await w.wait_for_room()
    assert len(waited) == 1
    assert isinstance(waited[0], float) and waited[0] >= 0


@pytest.mark.looptime
async def test_on_wait_gets_the_seconds_waited() -> None:
    w = window(4, tokens=4, busy=2)
    waited: list[float] = []
    w.on_wait = waited.append
    task = start(w.wait_for_room())
    await asyncio.sleep(5)
    assert waited == []
    w.released(4)
    await task
    assert waited == [pytest.approx(5)]


async def test_no_flush_while_the_consumer_has_results_to_take() -> None:
    # Results waiting for the consumer hold tokens; taking them makes room, so a batch
    # must not be cut short (it used to be: 22 batches of max_size=5 instead of 20).
    w = window(4, tokens=4)
    future = add_waiter(w)
    flushes = 0

    def flush() -> bool:
        nonlocal flushes
        flushes += 1
        return True

    w.flush_batch = flush
    w.can_drain = lambda: True
    w.check_stall()
    assert flushes == 0 and not future.done()
    w.can_drain = lambda: False
    w.flush_batch = lambda: False
    w.check_stall()
    assert not future.done()  # the pump is never let past the window


async def test_last_resort_lets_one_generator_past_the_window() -> None:
    # A generator's item may hold the concurrency slot that the items queued behind it
    # (holding the rest of the window) wait for: one child past the window breaks the tie.
    w = window(2, tokens=2)
    w.expanding = 0
    pump = add_waiter(w)
    first = add_waiter(w, expansion=True)
    second = add_waiter(w, expansion=True)
    w.check_stall()
    assert first.result() is True  # let through
    assert not pump.done() and not second.done()  # one at a time, never the pump
    assert [f for f, _, _ in w.waiting] == [pump, second]


async def test_a_generator_let_through_produces_without_room() -> None:
    w = window(1, tokens=2, busy=1)
    w.expanding = 1  # tokens - expanding == limit: no room for a child
    await asyncio.wait_for(w.wait_for_room(expansion=True), 1)  # stalled: let through
    assert w.busy == 1 and w.waiting == []


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
@pytest.mark.parametrize("sync", [False, True])
async def test_a_generator_feeding_a_batch_stage_keeps_to_the_window(mode: str, sync: bool) -> None:
    """In an ordered run a generator whose children a batch stage had taken counted them
    as gone: with a window of 4 the run held 7,500 items (a bug hunt's find)."""

    async def agen(x: int) -> Any:
        for i in range(5000):
            yield i

    def gen(x: int) -> Any:
        yield from range(5000)

    @batch_task(max_size=2)
    async def slow_save(batch: list[int]) -> int:
        await asyncio.sleep(0)
        return len(batch)

    children = single_task(gen if sync else agen)
    stream = (children | slow_save).with_context(max_in_flight=4, execution_mode=mode)([0])
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            assert stream._run is not None
            peak = max(peak, stream._run.ledger.tokens)
            await asyncio.sleep(0)

    stream_started = stream.__aiter__()
    watcher = asyncio.create_task(watch())
    try:
        async with asyncio.timeout(30):
            out = [r async for r in stream_started]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert out == [2] * 2500
    assert peak <= 5  # the window, and one generator item past it


async def test_a_run_holding_resources_looks_for_a_stall_when_its_input_ends() -> None:
    """The supervisor of a run with resources waits for the run's end when its input is
    done: if it was the last to work, a generator waiting for room must still be let on
    (it was not: a model property's deadlock, flaky with processes)."""

    async def source() -> Any:
        for i in range(3):
            yield i
        await asyncio.sleep(0.01)  # the generator is waiting for room by now

    @single_task(concurrency_limit=1)
    def five(x: int) -> Any:
        yield from [x] * 5

    @batch_task(max_size=4)
    def group(batch: list[int], *, box: list[int]) -> int:
        return len(batch)

    group = group.with_resources(box=lambda: contextlib.nullcontext([]))
    async with asyncio.timeout(5):
        out = await (five | group).with_context(max_in_flight=1)(source()).collect()
    assert out == [4, 4, 4, 3]


# -- the ledger is the one writer of the accounting ---------------------------------------

LEDGER_ATTRIBUTES = frozenset(
    {
        # the window and work
        "tokens",
        "busy",
        "expanding",
        "delivered",
        "done_earlier",
        "source_done",
        "finished",
        # each stage's flow
        "running",
        "inflight",
        "held",
        # each stage's account
        "dropped",
        "by_policy",
        "skipped",
        "emitted",
        "failed",
        "retried",
        "remainder_dropped",
        # each admitted input item's origin, on a checkpoint (``_origin``)
        "live",
    }
)
"""What no engine module but ``conveyor/_engine/_ledger.py`` may write (a constructor may
set its own object's to their first value). (Public objects outside the engine may have
counts of their own: ``Feedback.dropped`` counts the items a feed refused.)"""


def accounting_writes(path: Path) -> list[str]:
    """The writes of a ledger attribute in ``path`` outside a constructor's first values."""
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def targets(node: ast.AST) -> list[ast.expr]:
        if isinstance(node, ast.Assign):
            return list(node.targets)
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            return [node.target]
        return []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        for target in targets(node):
            for leaf in ast.walk(target):
                if not (isinstance(leaf, ast.Attribute) and leaf.attr in LEDGER_ATTRIBUTES):
                    continue
                first_value = (
                    function == "__init__"
                    and isinstance(node, (ast.Assign, ast.AnnAssign))
                    and isinstance(leaf.value, ast.Name)
                    and leaf.value.id == "self"
                )
                if not first_value:
                    found.append(f"{path.name}:{getattr(node, 'lineno', 0)}: {ast.unparse(target)}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "")
    return found


def test_only_the_ledger_writes_the_accounting() -> None:
    package = Path(conveyor.__file__).parent
    engine = [*sorted((package / "_engine").glob("*.py")), package / "stream.py"]
    writes = [
        write for path in engine if path.name != "_ledger.py" for write in accounting_writes(path)
    ]
    assert writes == [], "accounting written outside conveyor/_engine/_ledger.py"


def test_the_check_finds_a_write(tmp_path: Path) -> None:
    """(The check above cannot pass by finding nothing.)"""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "class S:\n"
        "    def __init__(self):\n"
        "        self.running = 0\n"  # a first value: allowed
        "    def go(self, stage):\n"
        "        stage.inflight += 1\n"
        "        self.tokens = 3\n"
        "        stage.account.dropped += 1\n"
    )
    assert accounting_writes(sample) == [
        "sample.py:5: stage.inflight",
        "sample.py:6: self.tokens",
        "sample.py:7: stage.account.dropped",
    ]


# -- a stage's flow, its account, and the end of the run -----------------------------------


class FakeStage:
    """Plays ``_ledger.Flow`` (what the ledger counts of a stage) without a run."""

    def __init__(self, batch: bool = False) -> None:
        self.running = 0
        self.inflight = 0
        self.held = 0
        self.is_batch = batch
        self.account = Account()
        self.acc: list[Any] = []
        self.closed_input = 0
        self.pending: deque[tuple[Any, Any]] = deque()
        self.draining = False

    def start_pending(self) -> None:
        self.pending.clear()

    def accumulated(self) -> int:
        return len(self.acc)

    def close_input(self) -> None:
        self.closed_input += 1
        self.inflight -= len(self.acc)  # (as a remainder flushed and done at once)
        self.acc = []


async def test_a_waiting_call_is_counted_until_it_settles() -> None:
    w = window(10, tokens=1, busy=1)
    stage = FakeStage()
    w.call_waits(stage)
    assert (stage.running, stage.inflight, w.busy) == (1, 1, 2)
    w.waited(stage, "item", False)
    assert (stage.running, stage.inflight, w.tokens) == (0, 0, 1)  # its result holds it
    w.work_stopped()
    assert w.busy == 1
    w.call_waits(stage)
    w.waited(stage, "item", True)  # (its work stops with it)
    assert (stage.running, stage.inflight, w.busy) == (0, 0, 1)


async def test_a_batch_call_gives_its_items_tokens_back_when_it_settles() -> None:
    w = window(10)
    stage = FakeStage(batch=True)
    for _ in range(3):
        w.admitted()
        w.queued(stage)  # accumulated
    w.batch_sent(stage)  # the result's place takes a token
    assert (w.tokens, stage.inflight) == (4, 3)
    w.call_waits(stage)  # a batch's items were counted as they arrived
    assert (stage.running, stage.inflight) == (1, 3)
    w.waited(stage, [1, 2, 3], False)
    assert (w.tokens, stage.inflight, stage.running) == (1, 0, 0)


async def test_failures_behind_an_open_batch_lend_their_tokens_until_it_is_sent() -> None:
    w = window(10, tokens=3)
    stage = FakeStage(batch=True)
    w.lent(stage)
    w.lent(stage)
    assert (w.tokens, stage.held) == (1, 2)
    w.batch_sent(stage)  # the place, and the two Failures' tokens again
    assert (w.tokens, stage.held) == (4, 0)


async def test_the_remainder_rule_counts_what_it_drops() -> None:
    w = window(10, tokens=4)  # three items accumulated, a Failure behind their place
    stage = FakeStage(batch=True)
    stage.inflight = 3
    w.lent(stage)  # the Failure lends its token back while it waits
    w.remainder_dropped(stage, 3, placed=True)
    # 3 items' tokens back; the place's and the Failure's taken for their reader.
    assert (w.tokens, stage.inflight, stage.held) == (2, 0, 0)
    assert stage.account.remainder_dropped == 3


async def test_drops_are_counted_and_give_back_unplaced_tokens() -> None:
    w = window(10, tokens=2)
    stage = FakeStage()
    w.dropped(stage, placed=False)
    w.dropped(stage, placed=True)  # (its node's reader gives it back)
    assert (w.tokens, stage.account.dropped) == (1, 2)
    stage.account.policy_passed_nothing()
    assert stage.account.dropped_by_function == 1


async def test_an_expansion_holds_a_slot_and_its_item_until_it_ends() -> None:
    w = window(10, tokens=1)
    stage = FakeStage()
    w.expansion_started(stage)
    assert (stage.running, stage.inflight, w.expanding) == (1, 1, 1)
    w.produced(2)
    w.expansion_ended(stage, produced=2)
    assert (stage.running, stage.inflight, w.expanding, w.tokens) == (0, 0, 0, 2)
    assert stage.account.dropped == 0
    w.expansion_started(stage)
    w.expansion_ended(stage, produced=0)  # passed nothing on: its item is dropped
    assert stage.account.dropped == 1


async def test_gated_items_hold_a_slot() -> None:
    w = window(10)
    single, batch = FakeStage(), FakeStage(batch=True)
    w.gated(single)
    w.gated(batch)
    assert (single.running, single.inflight, batch.running, batch.inflight) == (1, 1, 1, 0)
    w.ungated(single)
    w.ungated(batch)
    assert (single.running, single.inflight, batch.running) == (0, 0, 0)


async def test_the_account_names_each_outcome() -> None:
    account = Account()
    for outcome in ("failed", "skipped", "skipped", "emitted"):
        account.gave_up(outcome)
    account.retried_once()
    assert account.outcomes() == {"retried": 1, "skipped": 2, "emitted": 1, "failed": 1}


async def test_taking_a_result_delivers_it_once_and_tells_of_the_first() -> None:
    firsts: list[int] = []
    w = Ledger(asyncio.get_running_loop(), 10, on_first=lambda: firsts.append(w.delivered))
    w.admitted()
    w.admitted()
    w.taken()
    w.taken()
    assert (w.tokens, w.delivered, firsts) == (0, 2, [1])


async def test_the_run_is_finished_once_the_input_is_read_and_nothing_is_held() -> None:
    w = window(10)
    ended: list[str] = []
    first, second = FakeStage(), FakeStage()
    w.watch([first, second], lambda: ended.append("finished"), None)
    second.inflight = 1
    w.stage_idle()  # the input is not read yet
    w.input_read()  # the second stage still holds an item
    assert ended == [] and not w.finished
    second.inflight = 1
    w.settled(second, "its last item")  # (a call made at once)
    assert ended == ["finished"] and w.finished and w.source_done
    w.stage_idle()
    assert ended == ["finished"]  # once


async def test_the_remainder_waits_for_batches_still_running() -> None:
    w = window(10)
    batch = FakeStage(batch=True)
    batch.acc = [1, 2]
    batch.inflight = 3  # two accumulated, one in a batch still running
    w.watch([batch], lambda: None, None)
    assert not w.input_ended() and batch.closed_input == 0
    batch.inflight = 2  # that batch is done: the remainder goes
    assert w.input_ended() and batch.closed_input == 1


async def test_a_closed_run_is_never_finished() -> None:
    w = window(10)
    ended: list[str] = []
    w.watch([FakeStage()], lambda: ended.append("finished"), None)
    w.close()
    w.input_read()
    assert ended == [] and not w.finished
