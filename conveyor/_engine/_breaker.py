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

from ..breaker import HALF_OPEN, OPEN, BreakerState, CircuitBreaker
from ._calls import AWAIT, discard, kind_of, settle

if TYPE_CHECKING:
    from .._spec import StageSpec
    from ._log import RunLog
    from ._roles import RunRole

__all__ = ["StageBreaker"]

SLACK = 1e-3
"""Seconds by which a cancellation may come before the timeout's own deadline and still
be the timeout (the engine enters its timeout a moment before the wrapped call starts)."""


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
    state.abandoned(ticket)
