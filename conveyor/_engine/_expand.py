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

In an ordered run the children are inserted before a :class:`~._order.Sentinel` that
marks where the generator's output ends; the sentinel is closed when the generator is
done. Yielded ``None`` values are dropped. A generator that raises keeps the items it
produced; what stands in for the rest is decided by the stage's error policy, under the
usual return-value rules (``None``: nothing, a list: its elements, else one item).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any

from ._input import PUMP_SLICE
from ._order import CLOSED, Sentinel

if TYPE_CHECKING:
    from ._stage import Stage


def expand(stage: Stage, gen: Any, node: Any) -> None:
    """Start expanding ``gen``, the result of one of ``stage``'s calls, at ``node``."""
    stage.inflight += 1
    stage.running += 1  # it holds a concurrency slot until the generator ends
    stage.window.expanding += 1
    sentinel: Sentinel | None = None
    if stage.list is not None:
        sentinel = stage.list.open_sentinel(stage.place(node))  # type: ignore[arg-type]
    stage.run.spawn(_expand(stage, gen, sentinel), stage.context.copy())


async def _expand(
    stage: Stage,
    gen: Generator[Any, Any, Any] | AsyncGenerator[Any, Any],
    sentinel: Sentinel | None,
) -> None:
    run = stage.run
    window = stage.window
    timeout = stage.timeout
    is_async = type(gen) is AsyncGeneratorType
    loop_time = run.loop.time
    deadline = loop_time() + PUMP_SLICE
    count = 0
    try:
        while not run.closed:
            if window.tokens - window.expanding >= window.limit:
                # (The slice's deadline stands: the wait may return at once, let through
                # by a stall's last resort, and the consumer must still get its turn.)
                await window.wait_for_room(sentinel, expansion=True)
            try:
                if not is_async:
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
                _produce(stage, sentinel, child)
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
        for child in _as_items(result):
            _produce(stage, sentinel, child)
    finally:
        if is_async:
            await gen.aclose()  # type: ignore[union-attr]
        else:
            gen.close()  # type: ignore[union-attr]
    if sentinel is not None:
        stage.list.resolve(sentinel, CLOSED)  # type: ignore[union-attr]
    window.expanding -= 1
    window.release(1)
    stage.running -= 1
    stage.inflight -= 1
    if stage.pending and not stage.draining:
        stage.start_pending()  # the slot it held is free
    if stage.gate is not None:
        stage.gate.call_ended()  # (a rate-limited pool's worker too)
    run.stage_idle()  # (a batch's remainder may have waited for this expansion)


def _produce(stage: Stage, sentinel: Sentinel | None, child: Any) -> None:
    """Hand one child on: it takes a token, and its place before the sentinel."""
    stage.window.take(1)
    if sentinel is None:
        stage.downstream.push(child, None)
    else:
        assert stage.list is not None and sentinel.prev is not None
        stage.downstream.push(child, stage.list.insert_after(sentinel.prev))


def _as_items(result: Any) -> list[Any]:
    """What stands in for a failed generator's rest, under the return-value rules."""
    if result is None:
        return []
    if type(result) is list:
        return [item for item in result if item is not None]
    if type(result) is GeneratorType:
        return [item for item in result if item is not None]
    return [result]
