"""The tight loop: a run of fused plain stages that hand their results straight over.

When every stage of a run is a plain function on the loop, fused with the next one (see
``_stage``), and the last one's results go to the consumer, the pump does not push each
item through ``Stage.call``: it reads a slice of the input (at most the window's room,
at most ``SLICE`` items) and calls the chain on each item in a tight loop, through one
function generated for the chain (:func:`_compose`), each item in its own copy of the
run's context (one copy per item, shared by its fused calls, as ``Stage.call`` does). The
slice's results are handed to the consumer's ``ready`` queue at once: the consumer is
woken once per slice, not once per item.

Only the common case is inlined: a call that returns a plain value (``_calls.VALUE``). An
item that is anything else, at any stage, *escapes*: what the tight loop holds is settled
first (the results before it reach the consumer before anything of its own), then the
item goes on by the engine's own rules from where it is, in its context (a copy): a raised
error to the stage's policy, ``None``/a list/a generator/an awaitable to
``Stage.settle_call``, a value of a type not seen before to the next fused call. A
``Failure`` from the input, and an item of a slice whose stage the statistics armed to
time its next call (``_stats``), take the stage's own ``push``. So every rule of a call
holds (order, the window, failures and the error policies, Failure pass-through): the
tight loop only leaves out the steps that a plain value does not need.

**Accounting.** Everything the loop owes the run is written by :meth:`TightLoop.settle`,
in bulk, before anything else can look at it (an escape, the end of a slice): the
window's tokens of the items it admitted, the items each stage was called on and the
results delivered (statistics), the results themselves. Between two settlements nothing
else runs: the loop never suspends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextvars import Context, copy_context
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import Failure
from ._calls import VALUE, VALUE_TYPES, kind_of
from ._delivery import OrderedOutput, Output
from ._roles import RunRole, Tally
from ._stage import SingleStage

if TYPE_CHECKING:
    from collections import deque

    from ._plan import Plan


class Looped(RunRole, Protocol):
    """A run (``_run.Run``), as its tight loop sees it."""

    ready: deque[Any]  # results the consumer can take, in order
    consumer: asyncio.Future[None] | None  # the consumer's waiter, while it waits

    @property
    def plan(self) -> Plan: ...
    @property
    def stages(self) -> Sequence[Any]: ...
    def wake_consumer(self) -> None: ...


SLICE = 256
"""At most this many items between two hand-overs to the consumer (and two looks at the
clock: the pump yields to the loop every ``PUMP_SLICE`` seconds, so fewer if the calls
are slow: see :meth:`TightLoop.pump`)."""


ESCAPES_JUDGED = 64
"""The items after which the share of escapes is judged (see :meth:`TightLoop.pump`)."""


class TightLoop:
    """The tight loop of one run (see the module's docstring)."""

    __slots__ = (
        "calls",
        "context",
        "escaped",
        "first",
        "fns",
        "ledger",
        "output",
        "ready",
        "records",
        "run",
        "stages",
    )

    def __init__(self, run: Looped, stages: list[SingleStage], output: Output | OrderedOutput):
        self.run = run
        self.ledger = run.ledger
        self.context = run.context
        self.ready = run.ready
        self.stages = stages
        self.output = output
        self.first = stages[0]
        # (statistics: each stage's record, to count the calls made here in bulk)
        self.records: list[Tally] = [stage.tally for stage in stages if stage.tally is not None]
        self.escaped: tuple[int, Any, Any, bool, Any] = _NOT_ESCAPED
        # Bound per run (after ``Run._bind``): the functions the chain was composed of.
        self.fns: list[Callable[[Any], Any]] = []
        self.calls: list[Callable[[Any], Any]] = []

    def bind(self) -> None:
        """Compose the chain from the stages' bound calls (once the run has bound
        them): on the loop a stage's call is its function (``_calls.INLINE``), or, in a
        traced run, the function in its span (``_trace``); the statistics' timing call
        (``Stage.time_next_call``) is made by the stage instead (see :meth:`armed`)."""
        self.fns = [stage.executor_call for stage in self.stages]
        self.calls = [_compose(self.fns[k:], k, self.escape) for k in range(len(self.fns))]

    def escape(self, index: int, item: Any, outcome: Any, raised: bool) -> Any:
        """Called by the composed chain, in the item's context: stage ``index`` called on
        ``item`` raised ``outcome`` or returned it (not a value of a known plain type);
        ``index`` -1: the item is a ``Failure``, which no call is made on. Ends the
        slice's ``map`` where it is (see :meth:`pump`)."""
        # (a copy of the item's own context, which nothing else holds: the same state)
        self.escaped = (index, item, outcome, raised, copy_context())
        raise _Escaped

    def armed(self) -> bool:
        """Whether the statistics will time a stage's next call (``Stage.time_next_call``)."""
        return any(stage.call_fn is not stage.executor_call for stage in self.stages)

    # -- the loop --------------------------------------------------------------------

    async def pump(self, items: Iterator[Any], note: str, every: float) -> bool:
        """Feed ``items`` through the chain to the consumer (the pump's loop, see
        ``_input``: ``note`` is added to what the input raises, and the loop is yielded
        to every ``every`` seconds), reading on only while the window has room.

        A slice is one ``map`` of the composed chain over the input, each call in a fresh
        copy of the run's context (``Context.run``): the loop runs in C. An escape raises
        out of it after the results before it were appended; the item is let go on (see
        :meth:`finish_escaped`), and the same ``map`` goes on with the next item.

        An escape costs more than a call through the stage (about a microsecond): if a
        third of the items escape (a generator, a filter), the tight loop is no gain,
        and it returns True, every item so far settled, for the caller to go on item by
        item. False: the input ended, or the run failed.
        """
        seen = escapes = 0  # (items, and items that escaped, since the start)
        run = self.run
        ledger = self.ledger
        loop_time = run.loop.time
        contexts = iter(self.context.copy, None)  # (a fresh copy at each step)
        chain = repeat(self.calls[0])
        deadline = loop_time() + every
        span = 1  # (the slice's length: see below)
        while True:
            began = loop_time()
            size = min(ledger.admit - ledger.tokens, span)
            if size <= 0:
                await ledger.wait_for_room()
                deadline = loop_time() + every
                continue
            results: list[Any] = []
            settled = 0  # items of the slice settled before its end (at escapes)
            source = islice(items, size)
            try:
                if self.armed():  # (looked at once per slice: a look per stage)
                    for item in source:  # one item, by the stage's own call: it is timed
                        settled += 1
                        self.settle(results, 1, 0)
                        self.first.push(item, None, None)
                        break
                calls = map(Context.run, contexts, chain, source)
                while not run.closed:
                    try:
                        results.extend(calls)
                        break
                    except _Escaped:
                        settled += len(results) + 1
                        escapes += 1
                        self.finish_escaped(results)
            except Exception as exc:  # (from the input: calls' errors escape above)
                self.settle(results, 0, 0)
                exc.add_note(note)
                raise
            settled += len(results)
            self.settle(results, 0, 0)
            if run.closed or settled < size:
                return False  # (the input ended, or the run failed while an item went on)
            seen += settled
            if escapes * 3 > seen >= ESCAPES_JUDGED:
                return True
            # The loop is yielded to between slices only, so a slice is kept to about a
            # quarter of ``every``: it starts at one item and doubles while its calls
            # are fast, halves when they are slow (early results whatever the calls).
            now = loop_time()
            if (now - began) * 4 < every:
                span = min(span * 2, SLICE)
            elif now - began > every:
                span = max(span // 2, 1)
            if now >= deadline:
                await asyncio.sleep(0)
                deadline = loop_time() + every

    def finish_escaped(self, results: list[Any]) -> None:
        """An item left the composed chain: settle what came before it, then let it go
        on by the engine's rules, from where it left (see the module's docstring)."""
        while True:
            index, item, outcome, raised, context = self.escaped
            self.escaped = _NOT_ESCAPED
            if index < 0:  # a Failure: the first stage passes it on
                self.settle(results, 1, 0)
                self.first.push(item, None, None)
                return
            stage = self.stages[index]
            if raised:
                self.settle(results, 1, index + 1)
                if isinstance(outcome, Exception):
                    stage.failed(outcome, item, None, context, None)
                else:
                    stage.crashed(outcome, item)
                return
            kind = kind_of(type(outcome))  # (a type not seen before is learnt here)
            if kind != VALUE:
                self.settle(results, 1, index + 1)
                stage.settle_call(kind, outcome, context, item, None, None)
                return
            following = index + 1
            if following < len(self.stages):
                try:
                    outcome = context.run(self.calls[following], outcome)
                except _Escaped:
                    continue
            results.append(outcome)
            self.settle(results, 0, 0)
            return

    def settle(self, results: list[Any], extra: int, called: int) -> None:
        """Write what the loop owes the run, and hand ``results`` to the consumer.

        The only place the tight loop writes the run's accounting: ``results`` (each
        through every stage) and ``extra`` items more (0 or 1: an item that goes on
        elsewhere, called on by the first ``called`` stages here) each take a window
        token; each stage's count of items in (statistics) grows by the calls made on
        it; the results delivered are counted.
        """
        n = len(results)
        if not n and not extra:
            return
        self.ledger.admitted(n + extra)
        for index, record in enumerate(self.records):  # (statistics: the calls made here)
            record.items_in += n + (index < called)
        if not n:
            return
        output = self.output
        if not isinstance(output, OrderedOutput) or output.list.head.next is None:
            self.ready.extend(results)
        else:  # (earlier items still in the reorder list: these queue behind them)
            order = output.list
            for value in results:
                order.append().value = value
        results.clear()
        run = self.run
        if run.consumer is not None:
            run.wake_consumer()


def tight_loop(run: Looped) -> TightLoop | None:
    """The run's tight loop, if its plan says its stages from the input on are fused
    plain functions that end at the consumer (``Plan.tight_loop``); None if they are not."""
    if not run.plan.tight_loop:
        return None
    stages: list[SingleStage] = list(run.stages)
    output = stages[-1].downstream
    assert isinstance(output, (Output, OrderedOutput))  # (no observer: see _plan)
    return TightLoop(run, stages, output)


def _compose(fns: list[Callable[[Any], Any]], first: int, escape: Callable[..., Any]) -> Any:
    """One function calling ``fns`` in turn while each returns a plain value: the chain
    composed by hand (a loop over the stages would cost a turn of the loop and a look-up
    per call). What is not a plain value, or an error, goes to ``escape(index, item,
    outcome, raised)`` (``index`` counts from ``first``); the whole chain (``first`` 0)
    passes a ``Failure`` to it first (index -1). The code is generated once per shape
    (how many functions, from which stage), then closed over each run's functions."""
    shape = (len(fns), first)
    make = _MAKERS.get(shape)
    if make is None:
        make = _MAKERS[shape] = _maker(*shape)
    return make(escape, VALUE_TYPES, Failure, *fns)


_MAKERS: dict[tuple[int, int], Callable[..., Any]] = {}
"""The generated makers of chains, by shape (a few: one per stage of the longest run)."""


def _maker(length: int, first: int) -> Callable[..., Any]:
    params = ", ".join(f"f{k}" for k in range(length))
    lines = [f"def make(escape, values, failure, {params}):", "    def chain(x):"]
    if first == 0:
        lines += ["        if type(x) is failure:", "            escape(-1, x, x, False)"]
    for k in range(length):
        lines += [
            "        try:",
            f"            r = f{k}(x)",
            "        except BaseException as e:",
            f"            escape({first + k}, x, e, True)",
            "        if type(r) not in values:",
            f"            escape({first + k}, x, r, False)",
            "        x = r",
        ]
    lines += ["        return x", "    return chain"]
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # (our own code, from the fixed template above)
    return namespace["make"]  # type: ignore[no-any-return]


class _Escaped(Exception):
    """Ends a slice's ``map`` at an item that leaves the tight loop (see ``escape``)."""


_NOT_ESCAPED: Any = (0, None, None, False, None)
