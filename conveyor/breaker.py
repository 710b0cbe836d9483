"""Circuit breakers: stop calling a service that is down (``circuit_breaker=`` on a task).

A :class:`CircuitBreaker` stands for one service. Given to a task (``@single_task(
circuit_breaker=...)``, ``@batch_task(...)``), every call of the task, retries included,
asks it first; one object given to several tasks is one breaker for all of them (two
endpoints of the same API). Its states, on the clock of the event loop (``loop.time()``,
so a virtual clock in tests drives it):

* **closed**: calls start. A call that fails with an exception matching ``failure_on``
  counts one failure; ``failure_threshold`` *consecutive* counted failures (no success in
  between) open it. A success resets the count. Other exceptions are neutral: they
  neither count nor reset it.
* **open**: calls do not start. With ``on_open="fail"`` (default) a call fails at once
  with :class:`CircuitOpenError`, which the task's error policy handles as any error
  (``emit`` gives a Failure, ``skip_item`` skips the item, ``fail`` fails the run), and
  which is never retried. With ``on_open="wait"`` the call waits (in its task, holding its
  concurrency slot, cancellable with the run) until the breaker lets it start.
* **half-open**, ``recovery_timeout`` seconds after it opened: ``half_open_calls`` calls
  may start as probes; others are refused (or wait) as when open. A probe that fails (a
  counted failure) opens it again for ``recovery_timeout``; once ``half_open_calls``
  probes succeeded, it is closed. A probe that ends neutrally frees its place.

Outcomes of calls that started in an earlier state (a call in flight when the breaker
opened) are ignored: only the calls the current state admitted move it.

**Timeouts.** A task's ``timeout`` that expires counts as a failure (``TimeoutError`` is
in the default ``failure_on``). A call cancelled by the run's end is neutral.

**Retries.** A retry is a call: it asks the breaker too, so an open breaker stops the
retries as well (its ``CircuitOpenError`` is the call's error, and is not retried).

The state is kept per event loop, as a :class:`~conveyor.RateLimit`'s window is: the runs
of one loop share it; a new loop (each ``pipeline.run(...)``) starts closed. State changes
are logged (``conveyor`` logger: ``circuit_open`` as a WARNING, ``circuit_half_open`` and
``circuit_closed`` as INFO) and counted in the statistics of the stage whose call made
them (``StageStats.circuit_opened``, ``circuit_rejected``). See
``conveyor._engine._breaker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from typing import Any, Literal, Protocol

__all__ = ["CircuitBreaker", "CircuitOpenError"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


OnOpen = Literal["fail", "wait"]


CLOCK_SLACK = 1e-6
"""Seconds by which an open breaker may be asked early and still let a probe start: a
waiting call sleeps until it reopens, and a loop's timer may fire up to its clock's
resolution early (a virtual clock rounds its time), which would leave it to sleep for
ever shorter times without the clock moving."""


class Caller(Protocol):
    """Who asks a breaker's state (``_engine._breaker.StageBreaker``): told of the state
    changes its calls make, to log and count them."""

    def changed(self, state: str, exc: BaseException | None, failures: int) -> None: ...


class CircuitBreaker:
    """A circuit breaker for one service (see the module's docstring)."""

    __slots__ = (
        "__weakref__",
        "_states",
        "failure_on",
        "failure_threshold",
        "half_open_calls",
        "name",
        "on_open",
        "recovery_timeout",
    )

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        half_open_calls: int = 1,
        failure_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        on_open: OnOpen = "fail",
        name: str | None = None,
    ) -> None:
        self.failure_threshold = _count("failure_threshold", failure_threshold)
        if (
            isinstance(recovery_timeout, bool)
            or not isinstance(recovery_timeout, (int, float))
            or math.isnan(recovery_timeout)
            or not recovery_timeout > 0
        ):
            raise ValueError(
                f"recovery_timeout must be a number of seconds > 0 (how long the breaker "
                f"stays open before a probe call), got {recovery_timeout!r}"
            )
        self.recovery_timeout = float(recovery_timeout)
        self.half_open_calls = _count("half_open_calls", half_open_calls)
        if isinstance(failure_on, type):
            failure_on = (failure_on,)
        if (
            not isinstance(failure_on, tuple)
            or not failure_on
            or not all(isinstance(t, type) and issubclass(t, Exception) for t in failure_on)
        ):
            raise TypeError(
                f"failure_on must be an exception type or a tuple of them (the errors that "
                f"count as the service failing, e.g. failure_on=(aiohttp.ClientError, "
                f"TimeoutError)), got {failure_on!r}"
            )
        self.failure_on: tuple[type[BaseException], ...] = failure_on
        if on_open not in ("fail", "wait"):
            raise ValueError(
                f"on_open must be 'fail' (calls fail at once with CircuitOpenError while "
                f"the breaker is open) or 'wait' (they wait for it to close), got {on_open!r}"
            )
        self.on_open: OnOpen = on_open
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str (or None), got {name!r}")
        self.name = name
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BreakerState] = (
            weakref.WeakKeyDictionary()
        )

    def state(self, loop: asyncio.AbstractEventLoop) -> BreakerState:
        """The breaker's state on ``loop`` (made closed on first use)."""
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = BreakerState(self, loop)
        return state

    def counts(self, exc: BaseException) -> bool:
        """Whether ``exc`` counts as a failure of the service."""
        return isinstance(exc, self.failure_on) and not isinstance(exc, CircuitOpenError)

    def __repr__(self) -> str:
        name = "" if self.name is None else f"name={self.name!r}, "
        return (
            f"CircuitBreaker({name}failure_threshold={self.failure_threshold}, "
            f"recovery_timeout={self.recovery_timeout:g}, "
            f"half_open_calls={self.half_open_calls}, on_open={self.on_open!r})"
        )


class CircuitOpenError(Exception):
    """A call did not start: its task's circuit breaker is open (or half-open with its
    probes all out). ``breaker`` is the :class:`CircuitBreaker`; ``reopens_at`` the time,
    on the event loop's clock (``loop.time()``), when it lets a probe call start
    (``reopens_in``: seconds from when the call was refused). Never retried."""

    def __init__(self, breaker: CircuitBreaker, reopens_at: float, reopens_in: float) -> None:
        named = "" if breaker.name is None else f" {breaker.name!r}"
        super().__init__(
            f"circuit breaker{named} is open: the call was not made; a probe call may "
            f"start in {reopens_in:.3g} s"
        )
        self.breaker = breaker
        self.reopens_at = reopens_at
        self.reopens_in = reopens_in


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def as_breaker(name: str, value: Any) -> CircuitBreaker | None:
    """The ``circuit_breaker`` option: ``None`` or a :class:`CircuitBreaker`."""
    if value is None or isinstance(value, CircuitBreaker):
        return value
    raise TypeError(
        f"{name} must be a conveyor.CircuitBreaker (or None), got {value!r}; e.g. "
        f"{name}=conveyor.CircuitBreaker(failure_threshold=5, recovery_timeout=30.0), "
        f"one object shared by the tasks that call the same service"
    )


class BreakerState:
    """A breaker's state on one loop (times are ``loop.time()``). A call asks
    :meth:`admit` for a ticket (the state's generation; a probe's is negative) or is
    refused (``None``), and hands its outcome back with it; a ticket of an earlier
    generation changes nothing (see ``conveyor._engine._breaker``)."""

    __slots__ = (
        "_loop",
        "breaker",
        "failures",
        "generation",
        "probed",
        "probing",
        "reopens_at",
        "state",
        "waiters",
    )

    def __init__(self, breaker: CircuitBreaker, loop: asyncio.AbstractEventLoop) -> None:
        self.breaker = breaker
        # (Weakly: the breaker keeps its states by loop in a WeakKeyDictionary, which a
        # strong reference from the state to its key would keep alive for ever.)
        self._loop = weakref.ref(loop)
        self.state = CLOSED
        self.generation = 1
        self.failures = 0  # consecutive counted failures (closed)
        self.reopens_at = 0.0  # when an open breaker lets probes start
        self.probing = 0  # probes out (half-open)
        self.probed = 0  # probes that succeeded (half-open)
        self.waiters: list[asyncio.Future[None]] = []  # calls waiting (on_open="wait")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None  # (used only on its loop, which is then alive)
        return loop

    def admit(self, who: Caller) -> int | None:
        """A ticket for a call to start now, or ``None``: refused."""
        state = self.state
        if state == CLOSED:
            return self.generation
        if state == OPEN:
            if self.loop.time() < self.reopens_at - CLOCK_SLACK:
                return None
            self._to(HALF_OPEN, who, None)
        if self.probing + self.probed < self.breaker.half_open_calls:
            self.probing += 1
            return -self.generation
        return None

    def succeeded(self, ticket: int, who: Caller) -> None:
        if ticket == self.generation:  # (closed)
            self.failures = 0
        elif ticket == -self.generation:  # a probe of this half-open state
            self.probing -= 1
            self.probed += 1
            if self.probed >= self.breaker.half_open_calls:
                self._to(CLOSED, who, None)

    def failed(self, ticket: int, exc: BaseException, who: Caller) -> None:
        """A counted failure."""
        if ticket == self.generation:
            self.failures += 1
            if self.failures >= self.breaker.failure_threshold:
                self._to(OPEN, who, exc)
        elif ticket == -self.generation:
            self._to(OPEN, who, exc)

    def neutral(self, ticket: int) -> None:
        """The call ended with no outcome for the breaker: a probe frees its place."""
        if ticket == -self.generation:
            self.probing -= 1
            self._wake()

    def abandoned(self, ticket: int) -> None:
        """A call admitted with ``ticket`` will never be made (its run ended first): as
        :meth:`neutral`, on the loop (this may be called by a finalizer, in any thread)."""
        loop = self._loop()
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: its state with it
                loop.call_soon_threadsafe(self.neutral, ticket)

    def refusal(self) -> CircuitOpenError:
        now = self.loop.time()
        at = self.reopens_at if self.state == OPEN else now
        return CircuitOpenError(self.breaker, at, max(0.0, at - now))

    async def wait(self) -> None:
        """(A refused call, under ``on_open="wait"``.) Until the state may admit it."""
        if self.state == OPEN:
            await asyncio.sleep(max(0.0, self.reopens_at - self.loop.time()))
            return
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():  # (cancelled while it waited)
                self.waiters.remove(waiter)

    def _to(self, state: str, who: Caller, exc: BaseException | None) -> None:
        failures = self.failures
        self.state = state
        self.generation += 1
        self.failures = self.probing = self.probed = 0
        if state == OPEN:
            self.reopens_at = self.loop.time() + self.breaker.recovery_timeout
        who.changed(state, exc, failures)
        self._wake()

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
