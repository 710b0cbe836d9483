"""``executor="auto"``: the backend chosen by measuring the task's own calls.

The first :data:`FIRST` calls run inline, timed: wall time (``perf_counter``), CPU time
of the calling thread (``thread_time``), and what pickling the item and the result costs
(the transfer to a process). Then :func:`choose` decides:

* **inline** if a call is cheap (under :data:`CHEAP` of wall time): handing it to a
  thread or a process would cost more than the call;
* **thread** if it waits: CPU under half of the wall time (blocking I/O, sleeps, a C
  library releasing the GIL);
* **process** if it computes (CPU at least half of the wall time), one call is worth at
  least :data:`PAYOFF` x its measured transfer and hand-off cost, the function pickles,
  there is more than one core, and nothing keeps it in this process: a task with
  resources (``with_resources``) never goes to a process, since the calls there would
  use copies of the run's resources;
* otherwise **thread** for a call slower than :data:`LOOP_BUDGET` (it would hold the
  event loop too long) and **inline** below it.

Measurement goes on: inline, one call in :data:`SAMPLE` is timed; on threads, every call
(in its thread); on processes, the workers report each chunk's wall and CPU time. Every
:data:`RECHECK` calls the rule is applied again to the medians of the latest 16 samples
(one descheduled call cannot flip it), and the task moves
when the answer changes; calls under way finish where they started. Each choice is
logged (``conveyor`` logger, INFO) and recorded for ``repr(task)``. Async functions and
generator functions stay inline (their work is on the loop or lazy). Pools are opened on
first use and closed with the run.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import pickle
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._spec import StageSpec
from ._calls import AWAIT, kind_of
from ._log_fields import run_fields
from ._pickling import dumps
from ._pools import Processes, cores
from ._registry import AutoChoice, figures
from ._threads import THREADS, RunThreads

__all__ = ["Auto", "choose"]

logger = logging.getLogger("conveyor")

FIRST = 8
SAMPLE = 16
RECHECK = 256
CHEAP = 100e-6
"""Calls under 100 µs stay inline: a thread hop costs 5-12 µs of the loop time, a
process item 5-11 µs plus its transfer (benchmarks: cost/item), and the worker its own."""
PAYOFF = 4
"""A process must be given work worth 4x what sending it costs."""
HAND_OFF = 25e-6
"""The loop's own cost of a call sent to a process (its future and task): the "cost/item
process" row of ``python -m benchmarks --only executors`` measures 9-21 µs per item."""
LOOP_BUDGET = 1e-3
"""A CPU-bound call that cannot go to a process runs on a thread above 1 ms."""


def choose(
    wall: float, cpu: float, transfer: float | None, multicore: bool, stays: str | None = None
) -> tuple[str, str]:
    """The rule (see the module doc): ``(choice, reason)`` for a call's mean wall and CPU
    seconds and its transfer seconds (``None``: the function cannot be pickled).
    ``stays`` says why the calls must stay in this process (``None``: nothing does)."""
    timing = f"{wall * 1e3:.3g} ms wall, {cpu * 1e3:.3g} ms CPU per call"
    if wall < CHEAP:
        return "inline", f"{timing}: cheaper than a hand-off"
    if cpu < 0.5 * wall:
        return "thread", f"{timing}: it waits"
    if (
        stays is None
        and transfer is not None
        and multicore
        and wall >= PAYOFF * (transfer + HAND_OFF)
    ):
        return "process", f"{timing}, {transfer * 1e3:.2g} ms transfer: it computes"
    why = (
        stays
        if stays is not None
        else "cannot be pickled"
        if transfer is None
        else "one core"
        if not multicore
        else (f"transfer {transfer * 1e3:.2g} ms is too dear")
    )
    if wall >= LOOP_BUDGET:
        return "thread", f"{timing}: computes, but {why}; off the loop"
    return "inline", f"{timing}: computes, but {why}"


class Auto:
    """One task's measured choice, for one run (run-scoped: pools open on first use)."""

    def __init__(self, spec: StageSpec, record: AutoChoice) -> None:
        self.spec = spec
        self.record = record
        self.stack: contextlib.AsyncExitStack | None = None
        self.shared: dict[Any, Any] = {}
        self.invoke: Callable[[Any], Any] = spec.func
        self.current: Callable[[Any], Any] = self.measured
        self.choice = "inline"
        self.calls = 0
        # The latest samples (wall, CPU): the rule reads their medians, so one call that
        # was descheduled (its CPU clock stopped) cannot flip the choice on its own.
        self.samples: deque[tuple[float, float]] = deque(maxlen=16)
        self.announced = False
        self.transfer: float | None = None
        self.pickles = True
        self.routes: dict[str, Callable[[Any], Any]] = {}
        self.processes: Any = None
        # Resources belong to the run, in this process: a worker would get a copy.
        self.stays = "it has resources, which stay in this process" if spec.resources else None

    async def open(self, stack: contextlib.AsyncExitStack, shared: dict[Any, Any]) -> Auto:
        self.stack, self.shared = stack, shared
        return self

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        self.invoke = invoke
        func = self.spec.func
        if (
            inspect.iscoroutinefunction(func)
            or inspect.isgeneratorfunction(func)
            or (inspect.isasyncgenfunction(func))
        ):
            self.decided("inline", "an async or generator function runs on the loop")
            return invoke
        self.routes["inline"] = self.sampled
        return self.call

    def call(self, item: Any) -> Any:
        self.calls += 1
        if self.calls % RECHECK == 0:
            self.recheck()
        return self.current(item)

    # -- measuring -------------------------------------------------------------------

    def measured(self, item: Any) -> Any:
        """An inline call, timed (with its transfer cost, while that is unknown)."""
        wall, cpu = time.perf_counter(), time.thread_time()
        result = self.invoke(item)
        self.sample(time.perf_counter() - wall, time.thread_time() - cpu)
        if (
            self.transfer is None
            and self.pickles
            and self.stays is None
            and kind_of(type(result)) != AWAIT
        ):
            self.measure_transfer(item, result)
        if self.calls == FIRST:
            self.recheck()
        return result

    def sampled(self, item: Any) -> Any:
        if self.calls % SAMPLE == 0:
            return self.measured(item)
        return self.invoke(item)

    def timed_in_thread(self, item: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.invoke(item)
        finally:  # (a float's update is atomic enough: a sample may be lost, not torn)
            self.sample(time.perf_counter() - wall, time.thread_time() - cpu)

    def sample(self, wall: float, cpu: float) -> None:
        self.samples.append((wall, cpu))  # (deque.append is atomic: threads call it too)

    def measure_transfer(self, item: Any, result: Any) -> None:
        """Pickling the item and the result there and back, and the function once."""
        started = time.perf_counter()
        try:
            pickle.loads(dumps(self.invoke))
            sent = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
            back = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
            pickle.loads(sent)
            pickle.loads(back)
        except Exception:
            self.pickles = False
            return
        self.transfer = time.perf_counter() - started

    # -- deciding --------------------------------------------------------------------

    def recheck(self) -> None:
        chunker = figures(self.processes)
        if (
            self.choice == "process"
            and chunker is not None
            and chunker.per_item is not None
            and chunker.cpu_per_item is not None  # (both are measured together)
        ):
            self.sample(chunker.per_item, chunker.cpu_per_item)
        if not self.samples:
            return
        samples = list(self.samples)
        wall = statistics.median(wall for wall, _ in samples)
        cpu = statistics.median(cpu for _, cpu in samples)
        transfer = self.transfer if self.pickles else None
        choice, reason = choose(wall, cpu, transfer, cores() > 1, self.stays)
        if choice != self.choice or not self.announced:
            self.announced = True
            self.decided(choice, reason)

    def decided(self, choice: str, reason: str) -> None:
        self.choice = choice
        self.record.choice, self.record.reason = choice, reason
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "task %r: executor 'auto' chose %s (%s)",
                self.spec.name,
                choice,
                reason,
                extra=run_fields("auto", conveyor_task=self.spec.name, conveyor_executor=choice),
            )
        if choice in self.routes:
            self.current = self.routes[choice]
            return
        assert self.stack is not None
        if choice == "thread":
            pool = RunThreads(THREADS).create(self.stack, self.shared)
            self.current = self.routes["thread"] = pool.bind(self.timed_in_thread)
        elif choice == "process":
            self.processes = Processes(self.spec, cores()).create(self.stack, self.shared)
            self.current = self.routes["process"] = self.processes.bind(self.invoke)
        else:
            self.current = self.invoke

    @property
    def chunker(self) -> Any:
        """The process chunks' figures, once ``"process"`` was chosen (for statistics)."""
        return figures(self.processes)

    def __repr__(self) -> str:
        return f"auto ({self.choice})"
