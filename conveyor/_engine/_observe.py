"""The observer seam: what a user's :class:`RunObserver` is told, composed when the run
is built.

A run is observed by its statistics (``_stats.Collector``, unless the context says
``statistics=False``) and by a :class:`RunObserver` the user attaches, if any. Both are
given to the stages when the run builds them, never patched in afterwards:

* items in: a stage counts the items it calls into its statistics' record (one cheap
  check on the call path, ``Stage.call``), and tells a user's observer of each item it
  receives (``SingleStage.push``, ``BatchStage.push``);
* results: a user's observer is told of each result through a counting sink
  (:class:`Counted`) around the stage's downstream; the run's results are counted by the
  ledger as the consumer takes them;
* calls: the statistics time a sample of calls (see ``_stats``); a user's observer is
  told of every call through a timing executor around the stage's own
  (:class:`ObservedExecutor`);
* retries and final failures: the stage's account in the ledger counts them, the error
  policy tells a user's observer of retries;
* batches: the batch stage counts each flush, its size, and why, into its record;
* backpressure: the ledger reports how long the input (or a generator) waited for room
  (:func:`waited_for_room`).

A user's observer is told of every item and call, so in a run it observes nothing is
fused and the pump never bypasses a stage's ``push``. Progress bars and exporters read
the statistics.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from types import CoroutineType
from typing import Any

from ..abc import RunObserver as RunObserver  # (public: users implement them)
from ..abc import StageObserver as StageObserver
from ._calls import AWAIT, Executor, as_awaitable, kind_of
from ._order import Sink
from ._registry import figures, run_scoped


def waited_for_room(
    observer: RunObserver | None, statistics: Callable[[float], None] | None
) -> Callable[[float], None] | None:
    """What the ledger tells of time spent waiting for room: to the statistics and a
    user's observer (None: nobody asks)."""
    first = statistics
    second = None if observer is None else observer.waited_for_room
    if first is None or second is None:
        return first or second

    def both(seconds: float) -> None:
        first(seconds)
        second(seconds)

    return both


class Counted(Sink):
    """A stage's downstream, telling a user's observer of each result on its way."""

    __slots__ = ("count", "inner")

    def __init__(self, inner: Sink, count: Callable[[int], None]) -> None:
        self.inner = inner
        self.count = count

    def push(self, item: Any, node: Any, origin: Any) -> None:
        self.count(1)
        self.inner.push(item, node, origin)


class ObservedExecutor:
    """Times every call another executor makes, and reports how it ended."""

    def __init__(self, inner: Executor, probe: StageObserver) -> None:
        self.inner = inner
        self.probe = probe

    async def open(self, stack: Any, shared: dict[Any, Any]) -> Executor:
        """Open a run-scoped inner executor (see ``_threads.RunThreads``), observed."""
        inner = self.inner
        if run_scoped(inner):
            inner = await inner.open(stack, shared)
        return ObservedExecutor(inner, self.probe)

    @property
    def chunker(self) -> Any:
        """The inner executor's chunks (see ``_stats``), if it sends work away."""
        return figures(self.inner)

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        call = self.inner.bind(invoke)
        probe = self.probe
        clock = time.perf_counter

        async def finish(awaitable: Any, started: float) -> Any:
            try:
                result = await as_awaitable(awaitable)
            except BaseException as exc:
                probe.call_ended(clock() - started, exc)
                raise
            probe.call_ended(clock() - started, None)
            return result

        def observed(item: Any) -> Any:
            probe.call_started()
            started = clock()
            try:
                result = call(item)
            except BaseException as exc:
                probe.call_ended(clock() - started, exc)
                raise
            if kind_of(type(result)) == AWAIT:
                wrapper = finish(result, started)
                if type(result) is CoroutineType:
                    # A wrapper closed before it starts (the run ended) never awaits the
                    # call's coroutine: close that too, or it warns "never awaited".
                    weakref.finalize(wrapper, result.close)
                return wrapper
            probe.call_ended(clock() - started, None)
            return result

        return observed

    def __repr__(self) -> str:
        return f"observed {self.inner!r}"
