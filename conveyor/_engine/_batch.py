"""The stage of a batch task: it accumulates items and calls the task on lists of them.

Calling, results and errors work as for any stage (see ``_stages``); what is particular
to batches is here: when a batch is flushed, how its items' window tokens come back, what
happens to the remainder at the end of the input, and how ``on_error="skip_item"`` finds
the items that make a batch fail.
"""

from __future__ import annotations

import asyncio
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any

from ..errors import ErrorAction, Failure
from ._stages import Stage

if TYPE_CHECKING:
    from ..tasks import BaseTask
    from ._run import Run


class BatchStage(Stage):
    """Accumulates items into batches of ``max_size`` (see ``BatchTask`` for the rules)."""

    __slots__ = ("_expired", "_timer", "acc", "max_size", "max_wait", "min_size")

    def __init__(self, run: Run, task: BaseTask[Any, Any], limit: int) -> None:
        super().__init__(run, task, limit)
        self.is_batch = True
        self.min_size: int = task.min_size  # type: ignore[attr-defined]
        self.max_size: int = task.max_size  # type: ignore[attr-defined]
        self.max_wait: float | None = task.max_wait  # type: ignore[attr-defined]
        self.acc: list[Any] = []
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def push(self, item: Any, node: Any) -> None:
        if type(item) is Failure:
            self.downstream.push(item, None if self.list is None else self.list.append())
            return
        acc = self.acc
        acc.append(item)
        self.inflight += 1
        n = len(acc)
        if n >= self.max_size or (self._expired and n >= self.min_size):
            self.flush()
        elif n == 1 and self.max_wait is not None:
            self._timer = self.loop.call_later(self.max_wait, self._on_timer, context=self.context)

    def _on_timer(self) -> None:
        self._timer = None
        self._expired = True
        if len(self.acc) >= self.min_size and not self.run.closed:
            self.flush()

    def flush(self) -> None:
        """Send the accumulated items off as one batch (even if fewer than ``min_size``)."""
        batch, self.acc = self.acc, []
        self._expired = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not batch:
            return
        self.run.tokens += 1  # the batch's result node; the items' tokens go when it is done
        node = None if self.list is None else self.list.append()
        if self.running < self.limit:
            self.call(batch, node)
        else:
            self.pending.append((batch, node))

    def _call_done(self, item: Any) -> None:
        self.inflight -= len(item)
        self.run.release(len(item))
        if self.pending and not self._draining:
            self._start_pending()
        self.run.stage_idle()  # the remainder in the accumulator may be all that is left

    def close_input(self) -> None:
        """No more items will come: flush the remainder, or drop it below ``min_size``."""
        if len(self.acc) >= self.min_size:
            self.flush()
        elif self.acc:
            dropped = len(self.acc)
            self.acc = []
            self.inflight -= dropped
            self.run.release(dropped)

    async def _fallback(self, exc: Exception, item: Any, attempt: int) -> Any:
        if self.action is ErrorAction.SKIP_ITEM and len(item) > 1:
            return await self._isolate(item)
        return self._final_action(exc, item, attempt)

    async def _isolate(self, batch: list[Any]) -> list[Any]:
        """Split a failing batch in halves until only the failing items are left out."""
        if len(batch) == 1:
            try:
                return await self._collect(await self._attempt(batch))
            except Exception:
                return []
        middle = len(batch) // 2
        out: list[Any] = []
        for half in (batch[:middle], batch[middle:]):
            try:
                out.extend(await self._collect(await self._attempt(half)))
            except Exception:
                out.extend(await self._isolate(half))
        return out

    @staticmethod
    async def _collect(result: Any) -> list[Any]:
        """A batch result as a list of items (halves of a split batch are joined)."""
        if result is None:
            return []
        if type(result) is list:
            return result
        if type(result) is GeneratorType:
            return list(result)
        if type(result) is AsyncGeneratorType:
            return [item async for item in result]
        return [result]
