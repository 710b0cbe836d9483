"""A task's circuit breaker (``circuit_breaker=``): calls ask it before they start.

:class:`BreakerState` is a :class:`~conveyor.CircuitBreaker`'s state on one event loop
(closed, open, half-open: see ``conveyor.breaker`` for the rules), shared by every stage
and run of that loop that uses the breaker. :class:`StageBreaker` is one stage's view of
it in one run: made when the stage is built, it wraps the stage's bound call once
(``Stage.bind``, inside the cache: a hit makes no call), so every call of the stage,
retries and the parts of a split batch included, goes through it.

**Admission and outcome.** The wrapped call first asks :meth:`BreakerState.admit` for a
*ticket*: the state's generation (a probe's is negative), or ``None``: refused. A refused
call raises :class:`~conveyor.CircuitOpenError` at once (``on_open="fail"``: the policy
settles it, without a task, unless a handler must be awaited), or returns a coroutine that
waits for its turn in the call's task (``on_open="wait"``). An admitted call is made; its
outcome goes back with its ticket: a plain result or a raise at once, an awaitable's when
it is out (the call then returns a coroutine awaiting it, and the run awaits that in the
call's task). A ticket of an earlier generation changes nothing: only the calls the
current state admitted move it.

**Timeouts** are applied around the call by the engine (``_waiting``, ``Stage.attempt``),
so the wrapper sees a timeout as its coroutine being cancelled: a cancellation at the
task's ``timeout`` after the call started (within :data:`SLACK`) is a ``TimeoutError``
failure; any other cancellation (the run's end) is neutral.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from inspect import CORO_CREATED, getcoroutinestate
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from ..breaker import CircuitBreaker, CircuitOpenError
from ._calls import AWAIT, discard, kind_of, settle

if TYPE_CHECKING:
    from .._spec import StageSpec
    from ._log import RunLog
    from ._roles import RunRole

__all__ = ["BreakerState", "StageBreaker"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

SLACK = 1e-3
"""Seconds by which a cancellation may come before the timeout's own deadline and still
be the timeout (the engine enters its timeout a moment before the wrapped call starts)."""


class BreakerState:
    """A breaker's state on one loop (times are ``loop.time()``)."""

    __slots__ = (
        "breaker",
        "failures",
        "generation",
        "loop",
        "probed",
        "probing",
        "reopens_at",
        "state",
        "waiters",
    )

    def __init__(self, breaker: CircuitBreaker, loop: asyncio.AbstractEventLoop) -> None:
        self.breaker = breaker
        self.loop = loop
        self.state = CLOSED
        self.generation = 1
        self.failures = 0  # consecutive counted failures (closed)
        self.reopens_at = 0.0  # when an open breaker lets probes start
        self.probing = 0  # probes out (half-open)
        self.probed = 0  # probes that succeeded (half-open)
        self.waiters: list[asyncio.Future[None]] = []  # calls waiting (on_open="wait")

    def admit(self, who: StageBreaker) -> int | None:
        """A ticket for a call to start now, or ``None``: refused."""
        state = self.state
        if state == CLOSED:
            return self.generation
        if state == OPEN:
            if self.loop.time() < self.reopens_at:
                return None
            self._to(HALF_OPEN, who, None)
        if self.probing + self.probed < self.breaker.half_open_calls:
            self.probing += 1
            return -self.generation
        return None

    def succeeded(self, ticket: int, who: StageBreaker) -> None:
        if ticket == self.generation:  # (closed)
            self.failures = 0
        elif ticket == -self.generation:  # a probe of this half-open state
            self.probing -= 1
            self.probed += 1
            if self.probed >= self.breaker.half_open_calls:
                self._to(CLOSED, who, None)

    def failed(self, ticket: int, exc: BaseException, who: StageBreaker) -> None:
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

    def _to(self, state: str, who: StageBreaker, exc: BaseException | None) -> None:
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


class StageBreaker:
    """One stage's circuit breaker in one run: wraps its call, counts, logs."""

    __slots__ = ("breaker", "log", "loop", "name", "opened", "rejected", "state", "timeout")

    def __init__(self, breaker: CircuitBreaker, run: RunRole, spec: StageSpec) -> None:
        self.breaker = breaker
        self.state = breaker.state(run.loop)
        self.loop = run.loop
        self.name = spec.name
        self.timeout = spec.options.timeout
        self.log: RunLog = run.log
        self.opened = 0  # times a call of this stage opened the breaker
        self.rejected = 0  # calls of this stage that the breaker did not let start at once

    def wrap(self, call: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``call`` (the stage's bound call), asking the breaker first."""
        state = self.state
        made = self.made
        wait = self.breaker.on_open == "wait"

        def guarded(item: Any) -> Any:
            ticket = state.admit(self)
            if ticket is None:
                self.rejected += 1
                if wait:
                    return self.waited(call, item)
                raise state.refusal()
            return made(call, item, ticket)

        return guarded

    def made(self, call: Callable[[Any], Any], item: Any, ticket: int) -> Any:
        """Make the admitted call; its outcome goes back with ``ticket``."""
        try:
            result = call(item)
        except Exception as exc:
            self.ended(ticket, exc)
            raise
        except BaseException:
            self.state.neutral(ticket)
            raise
        if kind_of(type(result)) != AWAIT:
            self.state.succeeded(ticket, self)
            return result
        wrapper = self.awaited(result, ticket, started := [False])
        # A wrapper closed before it starts (the run ended) never awaits the call's
        # awaitable: let that go too (else "never awaited"), and the ticket with it.
        weakref.finalize(wrapper, _abandoned, result, self.state, ticket, started)
        return wrapper

    async def awaited(self, result: Any, ticket: int, started: list[bool]) -> Any:
        started[0] = True
        begun = self.loop.time()
        try:
            value, _ = await settle(result, AWAIT)
        except asyncio.CancelledError:
            timeout = self.timeout
            if timeout is not None and self.loop.time() >= begun + timeout - SLACK:
                self.ended(ticket, TimeoutError(f"the call timed out after {timeout:g} s"))
            else:
                self.state.neutral(ticket)
            raise
        except Exception as exc:
            self.ended(ticket, exc)
            raise
        except BaseException:
            self.state.neutral(ticket)
            raise
        self.state.succeeded(ticket, self)
        return value

    async def waited(self, call: Callable[[Any], Any], item: Any) -> Any:
        """(``on_open="wait"``.) Wait in the call's task until admitted, then call."""
        state = self.state
        while (ticket := state.admit(self)) is None:
            await state.wait()
        result = self.made(call, item, ticket)
        if type(result) is CoroutineType:
            return await result
        return result

    def ended(self, ticket: int, exc: BaseException) -> None:
        if self.breaker.counts(exc):
            self.state.failed(ticket, exc, self)
        else:
            self.state.neutral(ticket)

    def changed(self, state: str, exc: BaseException | None, failures: int) -> None:
        """(From the state.) A call of this stage changed the breaker's state: log it."""
        fields: dict[str, Any] = {
            "conveyor_task": self.name,
            "conveyor_circuit": self.breaker.name or repr(self.breaker),
            "conveyor_outcome": state,
        }
        if exc is not None:
            fields["conveyor_error_type"] = type(exc).__name__
            fields["conveyor_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if state == OPEN:
            self.opened += 1
            fields["conveyor_delay"] = self.breaker.recovery_timeout
            if failures:
                fields["conveyor_failures"] = failures
            self.log.warning(
                "circuit_open",
                "circuit breaker %s opened by task %r (%s): calls refused for %g s",
                fields["conveyor_circuit"],
                self.name,
                "a probe failed" if not failures else f"{failures} failures in a row",
                self.breaker.recovery_timeout,
                **fields,
            )
        else:
            self.log.info(
                f"circuit_{state}",
                "circuit breaker %s is %s (task %r)",
                fields["conveyor_circuit"],
                "half-open: probe calls may start" if state == HALF_OPEN else "closed",
                self.name,
                **fields,
            )


def _abandoned(result: Any, state: BreakerState, ticket: int, started: list[bool]) -> None:
    if started[0]:
        return
    if type(result) is CoroutineType:
        if getcoroutinestate(result) == CORO_CREATED:
            result.close()
    else:
        discard(result)
    state.neutral(ticket)
