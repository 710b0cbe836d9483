"""What the engine's parts need of the run and of a stage: the roles, as protocols.

The run (``_run.Run``) owns its stages (``_stage``), and a stage hands work to the
modules below it: a call that waits (``_waiting``), a generator (``_expand``), a rate
limit's turn (``_gate``). Those modules call back into the stage and its run; typing
them with the roles below, rather than with the classes, keeps the imports one way
(``tests/test_layout.py`` checks that no module imports, even for types only, a module
that imports it), and says in one place what each part may touch. ``mypy --strict``
checks that the classes play the roles.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ._calls import Executor
from ._ledger import Flow, Ledger
from ._log import RunLog
from ._order import Node, OrderList, Sink
from ._policy import Policy


class Outcomes(Protocol):
    """Who is told of a stage's policy outcomes (``Policy.on_gave_up``): a run's
    checkpoint (``_checkpoint.CheckpointInput``), a branch run's (``_branch``)."""

    def on_gave_up(self, is_batch: bool) -> Callable[[Any, BaseException, str, bool], None]:
        """What a stage's policy (a batch stage's if ``is_batch``) tells."""
        ...


class RunRole(Protocol):
    """A run, as its stages see it (``_run.Run``)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def context(self) -> contextvars.Context:
        """The run's context: every call runs in a fresh copy of it."""
        ...

    @property
    def ledger(self) -> Ledger: ...
    @property
    def log(self) -> RunLog:
        """The run's log (its records' run fields; each stage's policy's log)."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the run is over (failed, or closed by its consumer)."""
        ...

    @property
    def outcomes(self) -> Outcomes | None:
        """Who is told of its stages' policy outcomes: the run's checkpoint
        (``_checkpoint``), or a branch run's (``_branch``); None: nobody."""
        ...

    @property
    def origins(self) -> bool:
        """Whether the run's items carry origins (see ``_origin``)."""
        ...

    @property
    def branch(self) -> bool:
        """Whether the run is a branch's (``_branch``)."""
        ...

    @property
    def tasks(self) -> dict[asyncio.Task[Any], Any]:
        """The run's tasks (each with the awaitable a call's task was given)."""
        ...

    def fail(self, exc: BaseException) -> None:
        """Fail the run with ``exc`` (the first error wins)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> None:
        """Start a task the run owns, counted as working until it ends."""
        ...


NO_ITEM: Any = object()
"""``Turns.call_ended``'s item when the end is not one call's (an expansion's)."""


class Turns(Protocol):
    """What decides when a stage's calls start: its rate limit (``_gate.Gate``), or its
    lanes (``_lanes.Lanes``: keyed limits, priority), as the stage and the end of a call
    see it."""

    @property
    def held(self) -> int:
        """Items waiting here that hold a concurrency slot."""
        ...

    @property
    def waiting(self) -> int:
        """Items waiting here for their turn."""
        ...

    def start(self, item: Any, node: Any, origin: Any) -> None:
        """Installed as the stage's ``start``: call now, or wait for a turn."""
        ...

    def call_ended(self, item: Any = NO_ITEM) -> None:
        """One of the stage's calls is over (the call on ``item``; ``NO_ITEM``: an
        expansion): a worker, or a key's slot, may be free for the next turn."""
        ...

    async def acquire(self, item: Any) -> None:
        """A retry of the call on ``item`` waits for its turn, then takes it."""
        ...

    def over(self, run: object) -> None:
        """The run is over: drop the timer (waiting items go with the run)."""
        ...


class StageRole(Flow, Protocol):
    """A stage (``_stage.Stage``), as the work it hands on sees it (and, as a
    :class:`~._ledger.Flow`, as the ledger counts it)."""

    @property
    def run(self) -> RunRole: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def context(self) -> contextvars.Context: ...
    @property
    def executor(self) -> Executor: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def list(self) -> OrderList | None:
        """The reorder list the stage's results go into (ordered runs)."""
        ...

    @property
    def downstream(self) -> Sink: ...
    @property
    def gate(self) -> Turns | None: ...
    @property
    def limit(self) -> int: ...

    def place(self, node: Node | None) -> Node | None:
        """The item's node, created at the list's tail if it has none yet."""
        ...

    def emit(self, result: Any, node: Any, origin: Any) -> None:
        """Hand a call's result on, by the result-kind rules."""
        ...

    def emit_kind(self, kind: int, result: Any, node: Any, origin: Any) -> None:
        """Hand on a result whose kind (``_calls``: none, a list, a generator) is known."""
        ...

    def call_done(self, item: Any) -> None:
        """A call made at once has its result out: is the run over? start queued work."""
        ...

    def crashed(self, exc: BaseException, item: Any) -> None:
        """A call raised a BaseException: fail the run with it."""
        ...


class Tally(Protocol):
    """What a stage tells its statistics (``_stats.StageRecord`` is one): the items it
    calls (single stages count them at the call, batch stages as they arrive: one cheap
    check on the path), the Failures that pass through, and each batch sent off."""

    items_in: int

    def passed_through(self) -> None:
        """A Failure from an earlier stage reached the stage: passed on as is."""
        ...

    def flushed(self, size: int, expired: bool) -> None:
        """A batch of ``size`` items was sent off (``expired``: by ``max_wait``)."""
        ...


class Statistics(Protocol):
    """A run's statistics as its stages see them (``_stats.Collector`` is one)."""

    def record(self, stage: Any) -> Tally:
        """The tally of ``stage`` (made once, when the run builds the stage)."""
        ...


class Tracing(Protocol):
    """A run's traces as its stages see them (``_trace.RunTracing`` is one)."""

    def stage(self, stage: Any) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]] | None:
        """What ``stage`` wraps its bound call in, once (``None``: not traced)."""
        ...
