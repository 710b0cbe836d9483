"""Generator results: a call that returns a generator becomes one item per yielded value.

The generator is pulled lazily, in a task of the run, paced by the window: each child
takes a token, and the expansion waits for room like the input pump does. An expansion
counts as one of its stage's running calls until the generator ends, so
``concurrency_limit`` bounds generator tasks too; it also keeps its own item's token, so
the window bounds how many expansions are under way. With a ``timeout``, each item the
generator produces must come within ``timeout`` seconds (an async generator's
``__anext__``; a plain generator runs on the loop and cannot be interrupted). The
expansion yields to the event loop at least every ``PUMP_SLICE`` seconds, as the input
pump does, so a fast generator never starves the consumer.

**On threads.** A plain generator from a task on a thread pool (``"thread"``,
``"thread:N"``, a user's ``ThreadPoolExecutor``) is stepped there too (:class:`Steps`):
each ``next()`` is a job of the pool, one at a time, so the generator's body never runs
on the loop; the steps share one context, as they do on the loop. When the expansion
ends early (the run failed or closed, the stage's policy gave up), the generator is
closed by a job of the pool as well, after the step under way if there is one; the run
waits for it. (Steps are not timed out, as a plain generator's on the loop are not.)

In an ordered run the children are inserted before a :class:`~._order.Sentinel` that
marks where the generator's output ends; the sentinel is closed when the generator is
done. Yielded ``None`` values are dropped. A generator that raises keeps the items it
produced; what stands in for the rest is decided by the stage's error policy, under the
usual return-value rules (``None``: nothing, a list: its elements, else one item).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any

from ._calls import as_awaitable
from ._input import PUMP_SLICE
from ._order import CLOSED, Sentinel
from ._origin import ORIGIN
from ._pools import PoolCalls, PoolExecutor
from ._threads import ThreadPool

if TYPE_CHECKING:
    from ._roles import StageRole


def expand(stage: StageRole, gen: Any, node: Any, origin: Any) -> None:
    """Start expanding ``gen``, the result of one of ``stage``'s calls on an item of
    ``origin``, at ``node`` (its children carry the origin, its context has it)."""
    stage.ledger.expansion_started(stage)  # (a concurrency slot until it ends, too)
    sentinel: Sentinel | None = None
    if stage.list is not None:
        sentinel = stage.list.open_sentinel(stage.place(node))  # type: ignore[arg-type]
    context = stage.context.copy()
    if origin is not None:
        context.run(ORIGIN.set, origin)
    stage.run.spawn(_expand(stage, gen, sentinel, origin), context)


async def _expand(
    stage: StageRole,
    gen: Generator[Any, Any, Any] | AsyncGenerator[Any, Any],
    sentinel: Sentinel | None,
    origin: Any,
) -> None:
    run = stage.run
    ledger = stage.ledger
    timeout = stage.timeout
    is_async = type(gen) is AsyncGeneratorType
    steps = None if is_async else on_threads(stage, gen)
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    count = 0
    produced = 0  # children passed on
    try:
        while not run.closed:
            if ledger.tokens - ledger.expanding >= ledger.limit:
                # (The slice's deadline stands: the wait may return at once, let through
                # by a stall's last resort, and the consumer must still get its turn.)
                await ledger.wait_for_room(sentinel, expansion=True)
            try:
                if steps is not None:
                    child = await steps.next()
                    if child is DONE:
                        break
                elif not is_async:
                    child = next(gen)  # type: ignore[arg-type]
                elif timeout is None:
                    child = await gen.__anext__()  # type: ignore[union-attr]
                else:
                    async with asyncio.timeout(timeout):
                        child = await gen.__anext__()  # type: ignore[union-attr]
            except (StopIteration, StopAsyncIteration):
                break
            count += 1
            if child is not None:
                produced += 1
                _produce(stage, sentinel, child, origin)
            if not count & 63 and loop_time() >= deadline:
                await asyncio.sleep(0)  # let the consumer (and everyone else) run
                deadline = loop_time() + PUMP_SLICE
    except Exception as exc:
        # Items already produced stay; the generator cannot be resumed or retried.
        try:
            result = await stage.policy.generator_failed(exc, count)
        except asyncio.CancelledError:
            raise
        except BaseException as final:
            run.fail(final)
            return
        stand_ins = _as_items(result)
        if not stand_ins and not produced:
            stage.account.policy_passed_nothing()  # (skipped: not the function's drop)
        for child in stand_ins:
            produced += 1
            _produce(stage, sentinel, child, origin)
    finally:
        if is_async:
            await gen.aclose()  # type: ignore[union-attr]
        elif steps is not None:
            await steps.close()
        else:
            gen.close()  # type: ignore[union-attr]
    if sentinel is not None:
        stage.list.resolve(sentinel, CLOSED)  # type: ignore[union-attr]
    ledger.expansion_ended(stage, produced, origin)
    ledger.slot_freed(stage)  # the slot it held is free
    if stage.gate is not None:
        stage.gate.call_ended()  # (a rate-limited pool's worker too)
    ledger.stage_idle()  # (a batch's remainder may have waited for this expansion)


DONE: Any = object()
"""What a step on a thread returns at the generator's end (a StopIteration cannot pass
through a Future)."""


def on_threads(stage: StageRole, gen: Any) -> Steps | None:
    """Steps on the stage's thread pool for ``gen``, or None (it runs on the loop)."""
    executor = stage.executor
    if isinstance(executor, ThreadPool) or (
        isinstance(executor, (PoolExecutor, PoolCalls))  # (PoolCalls: opened for the run)
        and isinstance(executor.pool, concurrent.futures.ThreadPoolExecutor)
    ):
        return Steps(gen, executor.bind)
    return None


class Steps:
    """A plain generator stepped by the jobs of a thread pool (see the module doc).

    A lock makes the jobs on one generator one at a time, whichever threads run them:
    the close waits for the step under way (a generator cannot be closed while running).
    """

    __slots__ = ("close_job", "context", "gen", "lock", "next_job")

    def __init__(
        self, gen: Generator[Any, Any, Any], bind: Callable[[Callable[[Any], Any]], Any]
    ) -> None:
        self.gen = gen
        self.lock = threading.Lock()
        # One context for every step, a copy of the expansion's: what the generator sets
        # in a ContextVar stays for its next steps, as on the loop.
        self.context = contextvars.copy_context()
        self.next_job: Callable[[Any], Any] = bind(self._next)
        self.close_job: Callable[[Any], Any] = bind(self._close)

    def _next(self, _: Any) -> Any:
        """(A worker thread.) The generator's next value, or DONE."""
        with self.lock:
            try:
                return self.context.run(next, self.gen)
            except StopIteration:
                return DONE

    def _close(self, _: Any) -> None:
        """(A worker thread.) Close the generator (its ``finally`` blocks run here)."""
        with self.lock:
            self.context.run(self.gen.close)

    async def next(self) -> Any:
        return await as_awaitable(self.next_job(None))

    async def close(self) -> None:
        """Close the generator on the pool, unless it has ended; awaited to its end,
        even if the expansion is cancelled again meanwhile (the run waits for it)."""
        if inspect.getgeneratorstate(self.gen) == inspect.GEN_CLOSED:
            return  # (exhausted, or it raised: nothing to close)
        try:
            closing = asyncio.ensure_future(as_awaitable(self.close_job(None)))
        except RuntimeError:  # a user's pool already shut down: close it here
            self.gen.close()
            return
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await closing
            raise


def _produce(stage: StageRole, sentinel: Sentinel | None, child: Any, origin: Any) -> None:
    """Hand one child on: it takes a token (and a count on ``origin``), and its place
    before the sentinel."""
    stage.ledger.produced(1, origin)
    if sentinel is None:
        stage.downstream.push(child, None, origin)
    else:
        assert stage.list is not None and sentinel.prev is not None
        stage.downstream.push(child, stage.list.insert_after(sentinel.prev), origin)


def _as_items(result: Any) -> list[Any]:
    """What stands in for a failed generator's rest, under the return-value rules."""
    if result is None:
        return []
    if type(result) is list:
        return [item for item in result if item is not None]
    if type(result) is GeneratorType:
        return [item for item in result if item is not None]
    return [result]
