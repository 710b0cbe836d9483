"""A sampled call, timed (:class:`TimedCall`): its latency, and its stage's time on the
event loop; and the loop's lag. What the statistics (``_stats``) measure of calls and of
the loop.

* **A stage's time on the loop** (:class:`LoopTime`): a call the statistics time (see
  ``_stats``) also measures how long the stage's code held the loop, step by step: the
  call of a plain function; each resumption of an ``async def``'s coroutine
  (:func:`stepped`: the time between two awaits that suspend, not the time it waits);
  each value of a generator expanded on the loop; the hand-off of a call sent to a
  thread or a process. A stage's first :data:`WARM` calls on the loop are all timed.
  Its time on the loop is estimated as its timed calls' mean times its calls.
* **The loop's lag** (:class:`LagProbe`): the statistics' sampling timer is the probe:
  how late each tick ran past its due time is time the loop could not run it, blocked
  by a long step or saturated by many short ones. A tick :data:`BLOCKED_WARNING` late
  logs a warning, once per run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
import types
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TYPE_CHECKING, Any

from . import _log_fields
from ._calls import INLINE, Answer, settle

if TYPE_CHECKING:
    from ._stage import Stage

logger = logging.getLogger("conveyor")

WARM = 8
"""The first calls of a stage on the loop timed one after the other, ticks or not: the
mean of a few calls (not one, which may have opened a connection) for the estimate of
its time on the loop, even when all its calls come in one burst between two ticks."""
BLOCKED_WARNING = 0.25
"""A tick this many seconds late (the event loop blocked that long) logs a warning, once
per run: long enough that a busy machine's scheduling does not reach it, short enough
that a user sees it long before a slow run ends."""
LOOP_FIX = (
    'run it with executor="thread" (blocking I/O, or code that releases the GIL) or '
    'executor="process" (CPU work)'
)


class LoopTime:
    """One stage's time on the event loop, from its timed calls (see the module doc)."""

    __slots__ = ("calls", "inline", "seconds", "steps", "warm")

    def __init__(self, inline: bool) -> None:
        self.inline = inline  # its calls run on the loop (not sent to threads, processes)
        self.seconds = 0.0  # the timed calls' time on the loop
        self.calls = 0  # timed calls
        self.steps = 0  # their steps
        self.warm = 0  # calls still to time after the next one, whatever the ticks

    def opened(self, inline: bool) -> None:
        """The run opened the stage's executor: ``inline``, its calls run on the loop."""
        self.inline = inline
        self.warm = WARM - 1 if inline else 0

    def add(self, seconds: float, steps: int = 1) -> None:
        """A timed call held the loop ``seconds`` in all, in ``steps`` steps."""
        self.seconds += seconds
        self.calls += 1
        self.steps += steps

    def timed(self, result: Any, on_loop: float) -> Any:
        """The result of a timed plain call that took ``on_loop`` seconds: a generator
        expanded on the loop is timed at each step (the result wraps it)."""
        if self.inline:
            kind = type(result)
            if kind is types.GeneratorType:
                return _stepped_generator(result, on_loop, self.add)
            if kind is types.AsyncGeneratorType:
                return _stepped_async_generator(result, on_loop, self.add)
        self.add(on_loop)
        return result

    def estimate(self, calls: int) -> float:
        """Seconds the stage's code held the loop over ``calls`` calls: its timed calls'
        mean times ``calls``. Calls sent off the loop count their timed hand-offs only:
        not extrapolated, as the first ones start the pool's threads or processes, and a
        short run may time only those."""
        if not self.calls or not self.inline:
            return self.seconds
        return self.seconds / self.calls * max(calls, self.calls)

    @property
    def call_seconds(self) -> float | None:
        return self.seconds / self.calls if self.calls else None

    @property
    def step_seconds(self) -> float | None:
        return self.seconds / self.steps if self.steps else None


class LagProbe:
    """How late the statistics' ticks ran (see the module's docstring)."""

    __slots__ = ("due", "longest", "seconds", "warned")

    def __init__(self) -> None:
        self.due = 0.0  # the loop's time the next tick is due at
        self.seconds = 0.0  # seconds ticks ran late, summed
        self.longest = 0.0
        self.warned = False

    def ticked(self, now: float, dt: float, culprit: Callable[[float], str]) -> None:
        """A tick ran at the loop's time ``now``, ``dt`` after the one before; if it ran
        long late, warn (once) with what ``culprit(late)`` says of the cause."""
        late = now - self.due
        if late <= 0:
            return
        self.seconds += min(late, dt)
        self.longest = max(self.longest, late)
        if late >= BLOCKED_WARNING and not self.warned:
            self.warned = True
            logger.warning(
                "conveyor: the event loop was blocked for %.2f s (a timer ran that late); %s",
                late,
                culprit(late),
                extra=_log_fields.run_fields("loop_blocked"),
            )


def culprit(name: str | None, per_call: float | None, inline: bool = True) -> str:
    """What the warning of a blocked loop says of its cause: a stage that holds it (its
    calls on the loop, or, ``inline`` False, the hand-offs of calls it sends off the
    loop: no executor to advise), or none found."""
    if name is None or per_call is None:
        return (
            "no stage's timed calls account for it: the code reading the stream, other "
            "tasks on the loop, or the engine's work on many items in flight"
        )
    if not inline:
        return (
            f"stage {name!r} held it handing its calls to its executor "
            f"({per_call * 1e3:.1f} ms each: its workers starting, or items slow to pickle)"
        )
    return (
        f"stage {name!r} holds it (its calls run on the loop, {per_call * 1e3:.1f} ms "
        f"each): {LOOP_FIX}"
    )


class TimedCall:
    """A call of ``stage`` (its ``call_fn`` now) that tells ``latency`` how long it took
    and ``loop_time`` how long it held the loop; ``made`` is told as it is made, and the
    stage's calls after it are made directly again (``Stage.call_untimed``).

    An object, not a closure: a closure that names itself (to be told apart from the
    stage's next ``call_fn``) is a reference cycle, garbage only a full collection frees;
    one per timed call piled up between full collections (a run of 200,000 items peaked
    0.6 MB higher than one of 20,000 in a process holding many objects)."""

    __slots__ = ("coroutines", "latency", "loop", "loop_time", "made", "plain", "stage")

    def __init__(
        self,
        stage: Stage,
        latency: Callable[[float], None],
        loop_time: LoopTime,
        made: Callable[[], None],
    ) -> None:
        self.stage = stage
        self.plain = stage.call_fn
        self.loop = stage.loop
        self.latency = latency
        self.loop_time = loop_time
        self.made = made
        # An async def on the loop returns a coroutine; other calls are made now (work
        # sent off the loop is timed until its Future is done), so their order holds.
        self.coroutines = stage.spec.is_async and stage.executor is INLINE

    def __call__(self, item: Any) -> Any:
        self.stage.call_untimed(self)
        self.made()
        if self.coroutines:
            return self.timed_coroutine(item)
        clock = time.perf_counter
        latency = self.latency
        started = clock()
        try:
            result = self.plain(item)
        except BaseException:
            latency(clock() - started)
            self.loop_time.add(clock() - started)
            raise
        # (the call, or its hand-off to another executor; a generator: each step)
        result = self.loop_time.timed(result, clock() - started)
        if isinstance(result, (asyncio.Future, Answer)):  # (settled on the loop)
            result.add_done_callback(lambda _: latency(clock() - started))
        elif isinstance(result, concurrent.futures.Future):  # (on the pool's thread)
            loop = self.loop
            result.add_done_callback(
                lambda _: _on_loop(loop, functools.partial(latency, clock() - started))
            )
        else:
            latency(clock() - started)
        return result

    async def timed_coroutine(self, item: Any) -> Any:
        # The call is made inside this coroutine, so a coroutine closed before it
        # starts (the run ended) leaves no call behind, awaited or not.
        clock, loop = time.perf_counter, self.loop
        started, loop_started = clock(), loop.time()
        try:
            result = self.plain(item)
            if type(result) is types.CoroutineType:
                result = await stepped(result, self.loop_time.add)  # (each step timed)
            return (await settle(result, None))[0]
        finally:
            seconds = clock() - started
            on_loop = loop.time() - loop_started
            # A virtual clock (looptime) moves the loop's time, not perf_counter's:
            # then the loop's is the call's time. (uvloop's loop time is in whole
            # milliseconds, so it is read only when it is clearly ahead.)
            self.latency(on_loop if on_loop > seconds + 0.002 else seconds)


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the run is long over
        loop.call_soon_threadsafe(callback)


@types.coroutine
def stepped(coro: Any, add: Callable[[float, int], None]) -> Generator[Any, Any, Any]:
    """Await ``coro`` as ``yield from`` would, timing each of its steps: the time its
    code held the event loop and its steps, told to ``add`` at its end (however it
    ends)."""
    clock = time.perf_counter
    send, throw = coro.send, coro.throw
    held = 0.0
    steps = 0
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            steps += 1
            started = clock()
            try:
                yielded = send(value) if error is None else throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                held += clock() - started
            value = error = None
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # (a cancellation, thrown in: passed on to it)
                error = exc
    finally:
        del error  # (no cycle through the traceback)
        add(held, steps)


def _stepped_generator(
    gen: Generator[Any, Any, Any], held: float, add: Callable[[float, int], None]
) -> Generator[Any, Any, Any]:
    """``gen``, expanded on the loop, each step timed (``held``: its call's time)."""
    clock = time.perf_counter
    steps = 1
    try:
        while True:
            steps += 1
            started = clock()
            try:
                value = next(gen)
            except StopIteration:
                return
            finally:
                held += clock() - started
            yield value
    finally:
        gen.close()  # (its own finally blocks run now, as when _expand closes it)
        add(held, steps)


async def _stepped_async_generator(
    gen: AsyncGenerator[Any, Any], held: float, add: Callable[[float, int], None]
) -> AsyncGenerator[Any, Any]:
    """``gen``, expanded on the loop, each step of each ``__anext__`` timed."""
    total = [held, 1.0]

    def step(seconds: float, steps: int) -> None:
        total[0] += seconds
        total[1] += steps

    try:
        while True:
            try:
                value = await stepped(gen.__anext__(), step)
            except StopAsyncIteration:
                return
            yield value
    finally:
        await gen.aclose()
        add(total[0], int(total[1]))
