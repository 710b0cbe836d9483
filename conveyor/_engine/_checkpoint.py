"""A run on a checkpoint (``pipeline.with_checkpoint``): what is done, what is skipped.

**Done, exactly.** An input item is done when every result derived from it has left the
pipeline (taken by the consumer, or dropped: by a function, a filter, the remainder
rule, a policy). This first core decides it at a **barrier**: the input is read through
:class:`CheckpointInput`, which keeps the keys of the items it admitted since the last
commit (``pending``); every ``window`` items (or every ``INTERVAL`` seconds) it stops
reading until the ledger holds no token at all (``Ledger.tokens == 0``: no item, no
result, no Failure is left anywhere in the run, and the consumer took every result).
Then every pending item is done, whatever expansions, filters, batches or policies did
to it, and the pending keys are committed in one transaction (a group commit, made by
the session's writer thread; the barrier waits for it before reading on). The rule
reads the ledger's one count and writes nothing of its accounting, so it is exact by
construction: an item is never recorded done while something derived from it is in the
run. A crash repeats at most the items admitted since the last commit: the window.

What a barrier costs: the run drains once per window of items (the stages idle while the
last items of the window finish). Partial batches that wait for more items would never
drain: when only they are left (no call running, every token in an accumulator), they
are sent off as they are, one at a time, as the stall rule does (``Run.flush_a_batch``):
on a checkpoint, the last batch of each window may be short. (The design that removes
the drain and keeps batches whole, an origin id counted down per input item, is in
docs/checkpoint-design.md.)

**Failures.** A policy's outcome (``emitted``, ``skipped``) is told to
:meth:`CheckpointInput.gave_up` by the stage's policy (composed when the run is built:
runs without a checkpoint pay nothing). When the failed call's item is a pending input
item (the first stage's calls, or stages that pass items on unchanged), it is recorded
``failed`` with its exception's type and message instead of ``done``; otherwise the
input item is recorded ``done`` (it was handled) without the failure's details.

**Skips.** Items whose key is recorded (done, or failed unless ``retry_failed``) are not
admitted at all: no task is called for them. They are counted (``skipped``).

**The end.** When the run is over with nothing left in it (finished and every result
taken, or closed by the consumer with no token left), the pending items are committed;
a run that failed, or was closed with items in it, commits nothing more: those items run
again next time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

from ..checkpoint import Resumed, Session
from ._input import close_source
from ._ledger import Flow, Ledger


class Checkpointed(Protocol):
    """A run (``_run.Run``), as its checkpoint sees it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def closed(self) -> bool: ...
    @property
    def error(self) -> BaseException | None: ...
    @property
    def stages(self) -> Sequence[Flow]: ...
    def flush_a_batch(self) -> bool:
        """Send off a partial batch, if there is one."""
        ...


INTERVAL = 1.0
"""Seconds between barriers when fewer than a window of items come in that time."""

_SKIP_YIELD = 4095  # yield to the loop every 4096 items skipped in a row


class CheckpointInput:
    """The run's input read through its checkpoint (an async iterator the pump reads;
    see the module's docstring)."""

    __slots__ = (
        "deadline",
        "failures",
        "items",
        "n_done",
        "n_failed",
        "pending",
        "resumed",
        "run",
        "session",
        "since_try",
    )

    def __init__(self, run: Checkpointed, resumed: Resumed) -> None:
        self.run = run
        self.resumed = resumed
        self.items: Iterator[Any] | AsyncIterator[Any] | None = None
        self.pending: dict[str, None] = {}  # keys admitted since the last commit
        self.failures: dict[str, BaseException] = {}  # of those, handled by a policy
        self.n_done = 0
        self.n_failed = 0
        self.since_try = 0
        self.deadline = 0.0
        self.session: Session | None = None

    def open(self) -> None:
        """Take the checkpoint (its lock: a second run on it fails here, at its start)
        and read what is recorded. The run calls it last, once it is built."""
        self.session = self.resumed.checkpoint.open_session(self.resumed.retry_failed)

    def __aiter__(self) -> CheckpointInput:
        return self

    async def __anext__(self) -> Any:
        items = self.items
        if items is None:
            source = self.resumed.source
            items = self.items = aiter(source) if hasattr(source, "__aiter__") else iter(source)
            self.deadline = self.run.loop.time() + INTERVAL
        session = self.session
        assert session is not None  # (closed only when the run is over)
        skip = session.skip
        key_of = self.resumed.checkpoint.key_of
        skipped = 0
        while True:
            if self.since_try >= self.run.ledger.limit or (
                self.pending and self.run.loop.time() >= self.deadline
            ):
                await self.barrier()
            if isinstance(items, Iterator):
                try:
                    item = next(items)
                except StopIteration:
                    raise StopAsyncIteration from None
            else:
                item = await anext(items)
            key = key_of(item)
            if key in skip:
                self.run.ledger.skipped_as_done()
                skipped += 1
                if not skipped & _SKIP_YIELD:
                    await asyncio.sleep(0)
                continue
            self.pending[key] = None
            self.since_try += 1
            return item

    async def barrier(self) -> None:
        """Wait until nothing is left in the run, then commit the pending items (see the
        module's docstring)."""
        self.since_try = 0
        run = self.run
        ledger = run.ledger
        # Waiting is not working (as a wait for room): with the pump off ``busy``, the
        # ledger's stall rule still sees when nothing else works (a generator waiting
        # for room whose item holds a slot that others wait for), and lets it on.
        ledger.work_stopped()
        try:
            await self.drain()
        finally:
            ledger.work_started()
        if not ledger.tokens and not run.closed and self.session is not None:
            written = self.commit(self.session)
            if written is not None:
                # The session's writer thread commits the group; reading on only once
                # it is committed keeps the crash bound (at most a window not recorded),
                # and the loop never waits on the disk or the network.
                await asyncio.wrap_future(written)
        self.deadline = run.loop.time() + INTERVAL

    async def drain(self) -> None:
        """Until the ledger holds no token (partial batches left alone are sent off), or
        only partial batches that cannot be sent are left."""
        run = self.run
        ledger = run.ledger
        spins = 0
        while ledger.tokens and not run.closed:
            accumulated = sum(stage.accumulated() for stage in run.stages)
            if (
                accumulated
                and ledger.tokens <= accumulated
                and not any(stage.running for stage in run.stages)
                and not run.flush_a_batch()
            ):
                break  # (only partial batches left, and none could be sent off)
            # (The stages and the consumer go on meanwhile; a few turns of the loop first.)
            await asyncio.sleep(0 if spins < 32 else 0.001)
            spins += 1

    def commit(self, session: Session) -> concurrent.futures.Future[None] | None:
        """Every pending item is done: record them, in one transaction (queued to the
        session's writer; the Future is done when it is committed)."""
        if not self.pending:
            return None
        failures = {key: exc for key, exc in self.failures.items() if key in self.pending}
        done = [key for key in self.pending if key not in failures]
        written = session.record(done, failures)
        self.n_done += len(done)
        self.n_failed += len(failures)
        self.pending = {}
        self.failures = {}
        return written

    def gave_up(self, item: Any, exc: BaseException, outcome: str, batch: bool) -> None:
        """A stage's policy gave up on ``item`` (a batch's list if ``batch``) with
        ``outcome``: an item handled by ``emitted`` or ``skipped`` is recorded failed."""
        if outcome == "failed":  # (the run fails: nothing more is committed)
            return
        key_of = self.resumed.checkpoint.key_of
        for one in item if batch and type(item) is list else (item,):
            try:
                key = key_of(one)
            except Exception:  # (an item a later stage made: not an input item's key)
                continue
            if key in self.pending:
                self.failures[key] = exc

    def over(self, run: Checkpointed) -> None:
        """(The run's ``on_over``.) Commit what is done, close the session."""
        session, self.session = self.session, None
        if session is None:
            return
        written = None
        if run.error is None and not run.ledger.tokens and self.items is not None:
            outcome = "finished" if run.ledger.finished else "closed"
            written = self.commit(session)
        else:
            outcome = "failed" if run.error is not None else "closed"
        # (Flushes the last group, then lets the lock go: the writer thread is joined.)
        session.close(outcome, self.n_done, self.n_failed, self.run.ledger.done_earlier)
        if written is not None:
            written.result()  # (the store's error, if the last group could not be written)

    async def aclose(self) -> None:
        """Close the input the run was given (see ``_input.close_source``)."""
        items = self.items
        if items is not None and items is not self.resumed.source:
            await close_source(items)
        await close_source(self.resumed.source)
