"""An adaptive concurrency limit (``concurrency_limit="auto"``, ``conveyor.AdaptiveLimit``).

**The algorithm: Vegas, one update per round trip.** Netflix's concurrency-limits offers
AIMD, Vegas and Gradient2. AIMD reacts to drops only: against a service whose latency
grows before it sheds load, it climbs until requests are refused, then halves, and
spends its time between a queue at the service and 429s; every backoff is paid for
with errors. Gradient2 compares a short to a long *average* latency: a queue that stays
pulls the long average up with it, so it keeps part of the queue it meant to avoid (its
tolerance defaults to 2x). Vegas compares latency to the lowest seen (the service
with no queue): ``queue = limit * (1 - base / latency)`` is the estimate of the calls
waiting at the service, and the limit grows while that queue is small, shrinks when it
is large. It finds a service's capacity from latency alone, before any error, which is
what a crawler or an API client wants (few 429s, latency near the service's own), and
it still backs off on drops. So conveyor uses Vegas, with TCP's discipline:

* **Rounds.** The limit changes at most once per round: a round is ``limit // 2`` (at
  least 1) calls that *started* since the last change, so each update sees the latency
  of the limit it set (one update per round trip, as TCP Vegas). Its latency is the
  round's mean.
* **Base.** The lowest round latency so far, drifting up by 1/256 of the gap per round
  when rounds are slower (a service that got slower for good is re-learned in a few
  hundred rounds, slowly enough that a queue cannot pass itself off as the base).
* **Update.** With ``ratio = latency / base``: below ``LOW`` (1.1, no queue) the limit
  grows, doubling while it has seen no queue nor drop yet (slow start), then by
  ``max(1, log10(limit))`` a round (Vegas's step), only if the round used half the
  limit (a stage that does not use its limit learns nothing about a larger one); above
  ``HIGH`` (1.25, a queue: about a fifth of the limit waits) it shrinks, by half the
  way to ``limit * LOW / ratio`` (the limit at which the queue would be gone); between
  the two it holds.
* **Drops** (a timeout, a connection error, HTTP 429 or 503: :func:`is_drop`) multiply
  the limit by ``BACKOFF`` (0.75) at once, and the drops of calls that started before
  that are not counted again (one backoff per round trip, as TCP: a burst of 429s is one
  signal). A drop's latency is not a sample (a 429 comes back fast).
* **Capacity.** On an executor that runs at most ``n`` calls at once (``"thread:N"``,
  ``"process:N"``, a user's pool: ``_gate.capacity_of``, read at each call's end, as
  ``"auto"`` moves between executors) the limit never goes past ``n``: calls past it wait
  in the executor's queue, and when every call waits as long as the pool is busy the
  latency rises evenly, the ratio stays in the band, and the limit would climb past the
  pool's size with nothing to gain (it reached 38 on ``"thread:32"``).

Other errors (a 404, the function's own exception) are neither a sample nor a drop.

**Generators.** A generator function's call returns its generator at once, and its values
come as the run reads them, paced by the window: the call's time (microseconds, noise)
says nothing of the service, and taken as latency it walked the limit down to 1 (300
items of 3 values, 5 ms each: 4.9 s against 0.26 s at a fixed 32). So a generator is no
sample: the limit of a generator task stays at ``start`` (drops raised by the call
itself still back it off).

**What is timed** is each attempt of a call: the stage's bound call is wrapped once per
run (:meth:`Adaptive.wrap`, ``Stage.bind``, inside the cache and the span), and the
wrapper times from the call being made to its result or error coming back (a coroutine
to its end, a Future until it is done; on a task with a timeout, a Future is awaited in
the wrapper, so that the timeout's cancellation is seen: a cancelled Answer tells no one).
A rate limit's wait (``_gate``) happens before the call is made, a retry's delay
(``_policy``) between two calls: neither is timed.

**Who writes the limit.** An adaptive stage's ``limit`` (``Stage.limit``, read where
calls start: ``SingleStage.push``, ``Stage.start_pending``, the batch stage and the
rate gate) is written by its :class:`Adaptive` only, after the run built the stage with
the start value (``_plan``). A larger limit is used at the next call's end (its
``waited`` starts what waits for a slot: the sample comes first); a smaller one lets
the calls over it finish, and starts none until the stage is under it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import time
import weakref
from collections.abc import Callable
from inspect import CORO_CREATED, getcoroutinestate
from types import AsyncGeneratorType, CoroutineType, GeneratorType
from typing import Any, Protocol

from ._calls import Answer, as_awaitable
from ._gate import capacity_of

__all__ = ["Adaptive", "Controller", "is_drop"]

LOW = 1.1
HIGH = 1.25
BACKOFF = 0.75
DRIFT = 1 / 256
DROP_STATUSES = frozenset({429, 503})
# Connection errors of the HTTP clients that are not OSErrors, by class name (no import).
_GENERATORS = (GeneratorType, AsyncGeneratorType)
_FUTURES = (Answer, asyncio.Future, concurrent.futures.Future)
_CONNECTION_ERRORS = frozenset({"ClientConnectionError", "TransportError", "TimeoutException"})


def is_drop(exc: BaseException) -> bool:
    """Whether ``exc`` says the service is overloaded: a timeout, a connection error, or
    an HTTP 429/503 (aiohttp's ``status``, httpx's ``response.status_code``)."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    status = getattr(exc, "status", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and status in DROP_STATUSES:
        return True
    return any(cls.__name__ in _CONNECTION_ERRORS for cls in type(exc).__mro__)


class Controller:
    """The limit's algorithm (see the module's docstring), with no clock of its own:
    told each call's ``epoch`` (read at its start), latency and the calls in flight."""

    __slots__ = (
        "base",
        "count",
        "drops",
        "epoch",
        "estimate",
        "high",
        "limit",
        "low",
        "recovering",
        "slow_start",
        "top",
        "total",
        "used",
    )

    def __init__(self, low: int, high: int, start: int) -> None:
        self.low, self.high = low, high
        self.top = high  # (the bounds' max: ``high`` is it, or the executor's capacity)
        self.estimate = float(start)
        self.limit = start
        self.base: float | None = None  # the lowest round latency (drifting up slowly)
        self.epoch = 0  # calls started since the last change carry this number
        self.recovering = 0  # drops of calls started before this epoch are not counted
        self.slow_start = True
        self.drops = 0
        self.total = 0.0  # this round's latencies, summed
        self.count = 0
        self.used = 0  # most calls in flight at one of this round's samples

    def sample(self, epoch: int, seconds: float, in_flight: int) -> None:
        """A call started in ``epoch`` took ``seconds``; ``in_flight`` calls ran then."""
        if epoch != self.epoch:
            return  # (started under an earlier limit: it says nothing of this one)
        self.total += seconds
        self.count += 1
        self.used = max(self.used, in_flight)
        if self.count >= max(1, self.limit // 2):
            self._update(self.total / self.count)

    def _update(self, latency: float) -> None:
        base = self.base
        if base is None or latency < base:
            base = latency
        else:
            base += (latency - base) * DRIFT
        self.base = base
        ratio = latency / base if base > 0 else 1.0
        estimate = self.estimate
        if ratio > HIGH:
            self.slow_start = False
            estimate *= (1 + LOW / ratio) / 2
        elif ratio >= LOW:
            self.slow_start = False
        elif 2 * self.used >= self.limit:
            estimate = 2 * estimate if self.slow_start else estimate + max(1, math.log10(estimate))
        self._set(estimate)

    def drop(self, epoch: int) -> None:
        """A call started in ``epoch`` came back with a drop (see :func:`is_drop`)."""
        self.drops += 1
        if epoch < self.recovering:
            return  # (its backoff was made already: one per round trip)
        self.slow_start = False
        self._set(self.estimate * BACKOFF)
        self.recovering = self.epoch

    def cap(self, capacity: int | None) -> None:
        """The executor runs at most ``capacity`` calls at once (None: no such bound):
        the limit stays at or under it (and the bounds' min too, as under the window)."""
        high = self.top if capacity is None else max(1, min(self.top, capacity))
        if high != self.high:
            self.high = high
            if self.limit > high or self.low > high:
                self._set(self.estimate)  # (clamped to it: a new round)

    def _set(self, estimate: float) -> None:
        """A new round: the estimate within the bounds, the limit its whole part."""
        low = min(self.low, self.high)
        self.estimate = min(float(self.high), max(float(low), estimate))
        self.limit = max(low, int(self.estimate))
        self.epoch += 1
        self.total = 0.0
        self.count = self.used = 0


class Limited(Protocol):
    """A stage, as its adaptive limit sees it (``_stage.Stage`` is one)."""

    limit: int  # written here only (see the module's docstring)
    executor: Any  # (its capacity bounds the limit: see the module's docstring)

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def running(self) -> int:
        """Its calls running, and items waiting for a rate limit's turn (``gate``)."""
        ...

    @property
    def gate(self) -> Any: ...


class Adaptive:
    """The adaptive limit of one stage in one run: its :class:`Controller`, and the
    wrapper of its calls that tells the controller of each (see the module's docstring)."""

    __slots__ = ("control", "stage")

    def __init__(self, stage: Limited, bounds: tuple[int, int, int]) -> None:
        self.stage = stage
        self.control = Controller(*bounds)

    def wrap(self, call: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``call`` (a stage's bound call), each attempt timed and told to the controller."""
        control, stage = self.control, self.stage
        loop = stage.loop
        clock = time.perf_counter
        timeout = stage.timeout
        # The run has opened the stage's executor: its capacity bounds the first calls.
        control.cap(capacity_of(stage.executor))
        stage.limit = control.limit

        def ended(epoch: int, started: tuple[float, float], exc: BaseException | None) -> None:
            """(On the loop.) A call started in ``epoch`` at ``started`` is over."""
            seconds = clock() - started[0]
            on_loop = loop.time() - started[1]
            # A virtual clock (looptime) moves the loop's time only: then it is the call's.
            seconds = on_loop if on_loop > seconds + 0.002 else seconds
            if exc is None:
                gate = stage.gate
                queued = 0 if gate is None else len(gate.queue)
                control.sample(epoch, seconds, stage.running - queued)
            elif isinstance(exc, asyncio.CancelledError):
                # The task's timeout (cancelled at ``timeout``), or the run's end.
                if timeout is not None and seconds >= 0.99 * timeout:
                    control.drop(epoch)
            elif is_drop(exc):
                control.drop(epoch)
            else:
                return
            control.cap(capacity_of(stage.executor))  # (read each time: "auto" moves)
            if stage.limit != control.limit:
                stage.limit = control.limit  # (this module is its one writer: see above)

        async def measured(awaitable: Any, epoch: int, started: tuple[float, float]) -> Any:
            try:
                result = await as_awaitable(awaitable)
            except BaseException as exc:
                ended(epoch, started, exc)
                raise
            if not isinstance(result, _GENERATORS):  # (no sample: see the module's doc)
                ended(epoch, started, None)
            return result

        def on_future(epoch: int, started: tuple[float, float], future: Any) -> None:
            if future.cancelled():
                return  # (the run's end)
            exc = future.exception()
            if exc is None and isinstance(future.result(), _GENERATORS):
                return  # (a generator made on a thread: no sample, see the module's doc)
            ended(epoch, started, exc)

        def on_thread(epoch: int, started: tuple[float, float], future: Any) -> None:
            # (In the pool's thread: the controller is the loop's.)
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                loop.call_soon_threadsafe(on_future, epoch, started, future)

        def adaptive(item: Any) -> Any:
            epoch = control.epoch
            started = (clock(), loop.time())
            try:
                result = call(item)
            except BaseException as exc:
                ended(epoch, started, exc)
                raise
            if type(result) is CoroutineType:
                wrapper = measured(result, epoch, started)
                # A wrapper closed before it starts (the run ended) never awaits the
                # call's coroutine: close that too, or it warns "never awaited".
                weakref.finalize(wrapper, _abandoned, result)
                return wrapper
            if timeout is not None and isinstance(result, _FUTURES):
                # Awaited in the call's task, which the timeout cancels: a cancelled
                # Answer tells no one (``_calls.Answer.cancel``), so a done callback never
                # saw a thread's timeout, and timeouts on threads were never drops.
                return measured(result, epoch, started)
            if isinstance(result, (Answer, asyncio.Future)):
                result.add_done_callback(functools.partial(on_future, epoch, started))
            elif isinstance(result, concurrent.futures.Future):
                result.add_done_callback(functools.partial(on_thread, epoch, started))
            elif hasattr(result, "__await__"):
                return measured(result, epoch, started)
            elif isinstance(result, _GENERATORS):
                pass  # (no sample: see the module's docstring)
            else:
                ended(epoch, started, None)  # (a call made at once)
            return result

        return adaptive


def _abandoned(awaitable: Any) -> None:
    if type(awaitable) is CoroutineType and getcoroutinestate(awaitable) == CORO_CREATED:
        awaitable.close()
