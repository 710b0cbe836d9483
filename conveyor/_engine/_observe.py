"""The observer seam: per-stage counts and timings, inserted only when observed.

Nothing here runs unless a run is given a :class:`RunObserver`. Then :func:`instrument`
puts probes around each stage, by composition, so the engine's own paths carry no
observer code at all:

* items in: the stage's class is swapped for an observed twin whose ``push`` counts;
* items out: the stage's downstream is wrapped in a counting sink;
* calls started, ended (with latency and the error, if any): the stage's executor is
  wrapped, so every call, however it is made, is timed where it is made;
* retries: the stage's error policy reports each one;
* backpressure: the window reports how long the input (or a generator) waited for room.

An observed stage is never fused with its neighbours and the pump never bypasses its
``push``: every item and every call is seen. Statistics, progress bars and exporters are
observers; they only read what arrives here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .._spec import StageSpec
from ._batch import BatchStage
from ._calls import AWAIT, Executor, as_awaitable, kind_of
from ._order import Sink
from ._stage import SingleStage

if TYPE_CHECKING:
    from ._run import Run


class StageObserver(Protocol):
    """Receives what happens in one stage of one run."""

    def items_in(self, n: int) -> None: ...
    def items_out(self, n: int) -> None: ...
    def call_started(self) -> None: ...
    def call_ended(self, seconds: float, error: BaseException | None) -> None: ...
    def retried(self, error: BaseException, attempt: int) -> None: ...


class RunObserver(Protocol):
    """Receives what happens in one run: gives an observer for each of its stages."""

    def stage(self, index: int, spec: StageSpec) -> StageObserver: ...
    def waited_for_room(self, seconds: float) -> None: ...


def instrument(run: Run, observer: RunObserver) -> None:
    for index, stage in enumerate(run.stages):
        probe = observer.stage(index, stage.spec)
        stage.probe = probe
        stage.__class__ = _OBSERVED[type(stage)]  # same slots: only push differs
        stage.chain = None
        stage.plain = False
        stage.downstream = _Counted(stage.downstream, probe.items_out)
        stage.executor = ObservedExecutor(stage.executor, probe)
        stage.policy.on_retry = probe.retried
    run.window.on_wait = observer.waited_for_room


class _ObservedSingle(SingleStage):
    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        self.probe.items_in(1)
        SingleStage.push(self, item, node)


class _ObservedBatch(BatchStage):
    __slots__ = ()

    def push(self, item: Any, node: Any) -> None:
        self.probe.items_in(1)
        BatchStage.push(self, item, node)


_OBSERVED: dict[type, type] = {SingleStage: _ObservedSingle, BatchStage: _ObservedBatch}


class _Counted(Sink):
    __slots__ = ("count", "inner")

    def __init__(self, inner: Sink, count: Callable[[int], None]) -> None:
        self.inner = inner
        self.count = count

    def push(self, item: Any, node: Any) -> None:
        self.count(1)
        self.inner.push(item, node)


class ObservedExecutor:
    """Times every call another executor makes, and reports how it ended."""

    def __init__(self, inner: Executor, probe: StageObserver) -> None:
        self.inner = inner
        self.probe = probe

    async def open(self, stack: Any, shared: dict[Any, Any]) -> Executor:
        """Open a run-scoped inner executor (see ``_calls.RunThreads``), observed."""
        inner = self.inner
        if hasattr(inner, "open"):
            inner = await inner.open(stack, shared)
        return ObservedExecutor(inner, self.probe)

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
                return finish(result, started)
            probe.call_ended(clock() - started, None)
            return result

        return observed

    def __repr__(self) -> str:
        return f"observed {self.inner!r}"
