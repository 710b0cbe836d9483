"""A stage's error policy: what stands in for a call that failed.

In order: **retries** (``retry_attempts`` in all, for exceptions matching ``retry_on``,
with the backoff of :class:`~conveyor.errors.RetryConfig`), then the task's
**error handler**, then its **on_error** action: raise (annotated with the task and the
item), drop (``None``), or a :class:`~conveyor.errors.Failure` record. For a batch task
under ``skip_item`` the failing batch is split in halves until only the failing items are
left out; in a branch's run (``per_item``: see ``_branch``) the parts' results keep their
items' places when each part made one result per item (:data:`LEFT_OUT` where an item
was left out), so that the batch stage hands each one on as its own item's.

Recovery always runs inside the call's own task (it sleeps between attempts); only a
call that fails for good with nothing to await is settled synchronously (:meth:`final`).

An :class:`Unrecoverable` error is not the item's: no retry, handler or ``on_error``
applies, and the run fails with it (an executor that cannot go on, e.g. a process pool
that kept breaking: see ``_pools``).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any

from .._spec import StageSpec
from ..errors import ErrorAction, Failure, short_repr

if TYPE_CHECKING:
    from ._ledger import Account
    from ._log import StageLog


ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("conveyor_attempt", default=1)
"""Which attempt at its item the call being made is: 1, or the number the policy sets
while it makes a retry; 0 while it calls a part of a failing batch alone (see
:meth:`Policy._isolate`). Read by the call's span (``_trace``)."""


class _LeftOut:
    def __repr__(self) -> str:
        return "LEFT_OUT"


LEFT_OUT: Any = _LeftOut()
"""The place of an item left out of a split batch, in a result of one element per item
(a branch's run: see :meth:`Policy.recover`); never handed on as a result."""


class Unrecoverable(Exception):
    """An error that no policy handles: the call fails the run (see the module doc)."""


def annotate(exc: BaseException, task_name: str, item: Any, batch: bool) -> BaseException:
    """Add the note naming the task and the item a call failed on (PEP 678)."""
    what = f"a batch of {len(item)} items {short_repr(item)}" if batch else short_repr(item)
    exc.add_note(f"conveyor: raised by task {task_name!r} on {what}")
    return exc


class Policy:
    """The error policy of one stage in one run.

    ``attempt(item)`` makes one complete call again (the stage's call, awaited, under its
    timeout). Retries and calls that failed for good (``"failed"``, ``"emitted"`` or
    ``"skipped"``; isolated items of a batch that fail alone count as ``"skipped"``) are
    counted in the stage's ``account`` (see ``_ledger``: the statistics and the log's
    summary read it) and told to its ``log`` (``_log.StageLog``: a record with the task,
    the item, the attempt; under ``retry_log="summary"`` retries are tallied instead);
    ``on_retry`` tells a user's observer of each retry (``None``: not observed).
    """

    __slots__ = (
        "account",
        "action",
        "attempt",
        "batch",
        "handler",
        "log",
        "name",
        "on_gave_up",
        "on_retry",
        "per_item",
        "retry",
    )

    def __init__(
        self,
        spec: StageSpec,
        attempt: Callable[[Any], Awaitable[Any]],
        account: Account,
        log: StageLog,
        on_retry: Callable[[BaseException, int], None] | None = None,
        *,
        per_item: bool = False,
    ) -> None:
        self.name = spec.name
        # A branch's run: a split batch's results keep their items' places (see above).
        self.per_item = per_item
        self.batch = spec.batch
        self.retry = spec.options.retry_config
        self.handler = spec.options.error_handler
        self.action = spec.options.on_error
        self.attempt = attempt
        self.account = account
        self.log = log
        self.on_retry = on_retry
        # The run's checkpoint, told of each outcome (``_checkpoint``; set by the stage
        # when the run builds it; None: no checkpoint).
        self.on_gave_up: Callable[[Any, BaseException, str, bool], None] | None = None

    def annotate(self, exc: BaseException, item: Any) -> BaseException:
        return annotate(exc, self.name, item, self.batch)

    def settles_at_once(self, exc: Exception, item: Any) -> bool:
        """Whether a failed first attempt is settled without awaiting anything."""
        return isinstance(exc, Unrecoverable) or not (
            self.handler is not None
            or self.retry.should_retry(exc, 1)
            or (self.batch and self.action is ErrorAction.SKIP_ITEM and len(item) > 1)
        )

    def outcome(self, exc: Exception, item: Any, attempt: int) -> str:
        """What :meth:`recover` makes of ``exc``, raised by the ``attempt``-th call on
        ``item`` (0: a part of a failing batch called alone): ``"retried"``,
        ``"handled"`` (the error handler decides), ``"split"`` (a batch under
        ``skip_item`` called again in halves), or given up: ``"failed"``,
        ``"emitted"``, ``"skipped"``. (Asked by the call's span: ``_trace``.)"""
        if isinstance(exc, Unrecoverable):
            return "failed"
        if attempt == 0:
            return "split" if len(item) > 1 else "skipped"
        if self.retry.should_retry(exc, attempt):
            return "retried"
        if self.handler is not None:
            return "handled"
        if self.batch and self.action is ErrorAction.SKIP_ITEM and len(item) > 1:
            return "split"
        return _OUTCOMES[self.action]

    async def recover(self, exc: Exception, item: Any) -> Any:
        """Retries, then the handler, then ``on_error``: the call's result, or raise."""
        try:
            retry = self.retry
            attempt = 1
            while not isinstance(exc, Unrecoverable) and retry.should_retry(exc, attempt):
                if self.on_retry is not None:
                    self.on_retry(exc, attempt)
                delay = retry.delay_for(exc, attempt)
                self.account.retried_once()
                self.log.retrying(item, exc, attempt, delay)
                await asyncio.sleep(delay)
                attempt += 1
                numbered = ATTEMPT.set(attempt)
                try:
                    return await self.attempt(item)
                except Exception as again:
                    exc = again
                finally:
                    ATTEMPT.reset(numbered)
            if isinstance(exc, Unrecoverable):
                return self.final(exc, item, attempt)
            if self.handler is not None:
                seen = list(item) if self.batch else item  # the handler may keep it
                go_on, value = await self._ask_handler(exc, seen, attempt)
                if go_on:
                    return value
            if self.batch and self.action is ErrorAction.SKIP_ITEM and len(item) > 1:
                placed, left_out, aligned = await self._isolate(item)
                kept = [value for value in placed if value is not LEFT_OUT]
                if not kept and left_out == len(item):
                    # Every item left out (not a part's None). Counted by this call alone: a
                    # look at the stage's count of skipped items would see other calls' too.
                    self.account.policy_passed_nothing()
                if self.per_item and aligned and kept:
                    return placed  # (one element per item: see the module's docstring)
                return kept
            return self.final(exc, item, attempt)
        finally:
            # (``exc`` may be an error raised here, whose traceback holds this frame:
            # let go of it, or each retried item leaves a reference cycle that only
            # a full collection frees)
            del exc

    def final(self, exc: Exception, item: Any, attempt: int) -> Any:
        """``on_error`` for a call that failed for good: raise, drop, or a Failure."""
        action = ErrorAction.FAIL if isinstance(exc, Unrecoverable) else self.action
        self.gave_up(item, exc, _OUTCOMES[action], attempt)
        if action is ErrorAction.FAIL:
            raise self.annotate(exc, item)
        if action is ErrorAction.EMIT:
            if self.batch:
                return [Failure(one, exc, self.name, attempt) for one in item]
            return Failure(item, exc, self.name, attempt)
        self.account.policy_passed_nothing()
        return None  # skip_item / skip_batch

    def key_failed(self, exc: Exception, item: Any) -> Any:
        """A keyed batch task's ``key=`` function raised on ``item`` (before any call):
        ``on_error`` for that item alone, with no retry and no handler (the key is not
        the call): raise, a Failure, or ``None`` (the item is skipped)."""
        action = self.action
        self.gave_up(item, exc, _OUTCOMES[action], 1, batch=False)
        if action is ErrorAction.FAIL:
            exc.add_note(
                f"conveyor: the key= function of task {self.name!r} raised on "
                f"{short_repr(item)}: it must return a hashable key for every item (or "
                f"use on_error='emit' or 'skip_item' to let such items go)"
            )
            raise exc
        if action is ErrorAction.EMIT:
            return Failure(item, exc, self.name, 1)
        self.account.policy_passed_nothing()
        return None  # skip_item / skip_batch: the item alone

    async def generator_failed(self, exc: Exception, count: int) -> Any:
        """What stands in for the rest of a generator that raised after ``count`` items."""
        where = f"<output {count} of a generator>"
        if self.handler is not None:
            go_on, value = await self._ask_handler(exc, where, 1)
            if go_on:
                return value
        self.gave_up(where, exc, _OUTCOMES[self.action], 1)
        if self.action is ErrorAction.FAIL:
            raise annotate(exc, self.name, where, False)
        if self.action is ErrorAction.EMIT:
            return Failure(where, exc, self.name, 1)
        return None

    async def _ask_handler(self, exc: Exception, item: Any, attempt: int) -> tuple[bool, Any]:
        """The handler's ``(continue, value)``, or a TypeError that names what is wrong."""
        assert self.handler is not None
        answer = await self.handler.handle_error(exc, item, self.name, attempt)
        if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], bool)):
            error = TypeError(
                f"{type(self.handler).__name__}.handle_error returned {short_repr(answer)} "
                f"for task {self.name!r}; it must return a (bool, value) pair: (True, value) "
                f"to use value as the call's result, (False, None) to apply on_error"
            )
            error.__cause__ = exc
            raise self.annotate(error, item)
        return answer

    async def _isolate(self, batch: list[Any]) -> tuple[list[Any], int, bool]:
        """Split a failing batch (of two or more) in halves until only the failing items
        are left out: an item is called alone at most once. The results of the parts
        that did not fail (:data:`LEFT_OUT` at each item left out), how many items were
        left out, and whether the results are one per item, in the batch's order (each
        part that did not fail made one result per item)."""
        middle = len(batch) // 2
        out: list[Any] = []
        left_out = 0
        aligned = True
        for half in (batch[:middle], batch[middle:]):
            try:
                part = ATTEMPT.set(0)
                try:
                    result = await self.attempt(half)
                finally:
                    ATTEMPT.reset(part)
                made = await _collect(result)
                aligned = aligned and len(made) == len(half)
                out.extend(made)
            except Exception as exc:
                if isinstance(exc, Unrecoverable):
                    raise self.annotate(exc, half) from None
                if len(half) > 1:  # a single item that failed alone is left out: once
                    kept, more, whole = await self._isolate(half)
                    out.extend(kept)
                    left_out += more
                    aligned = aligned and whole
                else:
                    self.gave_up(half[0], exc, "skipped", None, batch=False)
                    out.append(LEFT_OUT)
                    left_out += 1
        return out, left_out, aligned

    def gave_up(
        self, item: Any, exc: BaseException, outcome: str, attempt: int | None, batch: bool = True
    ) -> None:
        """A call failed for good (after ``attempt`` attempts; ``None``: an item of a split
        batch, called alone once): count it, log it."""
        self.account.gave_up(outcome)
        self.log.gave_up(item, exc, outcome, self.batch and batch, attempt)
        if self.on_gave_up is not None:
            self.on_gave_up(item, exc, outcome, self.batch and batch)


_OUTCOMES = {
    ErrorAction.FAIL: "failed",
    ErrorAction.EMIT: "emitted",
    ErrorAction.SKIP_ITEM: "skipped",
    ErrorAction.SKIP_BATCH: "skipped",
}


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
