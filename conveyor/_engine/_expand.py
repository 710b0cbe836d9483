"""Generator results: a call that returns a generator becomes one item per yielded value.

The generator is pulled lazily, in a task of the run, paced by the window: each child
takes a token, and the expansion waits for room like the input pump does. The expansion
keeps its stage busy, and its own item's token, until the generator ends, so the window
also bounds how many expansions are under way. In an ordered run the children are
inserted before a :class:`~._order.Sentinel` that marks where the generator's output
ends; the sentinel is closed when the generator is done. Yielded ``None`` values are
dropped. A generator that raises keeps the items it produced; what stands in for the rest
is decided by the stage's error policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator
from types import AsyncGeneratorType
from typing import TYPE_CHECKING, Any

from ._order import CLOSED, Sentinel

if TYPE_CHECKING:
    from ._stage import Stage


def expand(stage: Stage, gen: Any, node: Any) -> None:
    """Start expanding ``gen``, the result of one of ``stage``'s calls, at ``node``."""
    stage.inflight += 1
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
    order = stage.list
    push = stage.downstream.push
    is_async = type(gen) is AsyncGeneratorType
    count = 0
    try:
        while not run.closed:
            if window.tokens - window.expanding >= window.limit:
                await window.wait_for_room(sentinel, expansion=True)
            try:
                if is_async:
                    child = await gen.__anext__()  # type: ignore[union-attr]
                else:
                    child = next(gen)  # type: ignore[arg-type]
            except (StopIteration, StopAsyncIteration):
                break
            count += 1
            if child is None:
                continue
            window.take(1)
            if sentinel is None:
                push(child, None)
            else:
                assert order is not None and sentinel.prev is not None
                push(child, order.insert_after(sentinel.prev))
    except Exception as exc:
        # Items already produced stay; the generator cannot be resumed or retried.
        try:
            result = await stage.policy.generator_failed(exc, count)
        except asyncio.CancelledError:
            raise
        except BaseException as final:
            run.fail(final)
            return
        if result is not None:
            window.take(1)
            node = None
            if sentinel is not None:
                assert order is not None and sentinel.prev is not None
                node = order.insert_after(sentinel.prev)
            stage.downstream.push(result, node)
    finally:
        if is_async:
            await gen.aclose()  # type: ignore[union-attr]
        else:
            gen.close()  # type: ignore[union-attr]
    if sentinel is not None:
        assert order is not None
        order.resolve(sentinel, CLOSED)
    window.expanding -= 1
    window.release(1)
    stage.inflight -= 1
    if not stage.inflight:
        run.stage_idle()
