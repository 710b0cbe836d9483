"""A run on a checkpoint (``pipeline.with_checkpoint``): what is done, what is skipped.

**Done, exactly, item by item.** An input item is done when every result derived from it
has left the pipeline (taken by the consumer, or dropped: by a function, a filter, the
remainder rule, a policy). Each admitted item gets an origin (``_origin.Origin``) that
travels beside everything derived from it; the ledger keeps its count of live things
(``Origin.live``) in the same transitions as the window's tokens, and tells
:meth:`CheckpointInput.done` when it comes back to 0. Nothing here reads or writes the
accounting: the ledger decides, this module records. No drain, no barrier: the stages
never wait for the checkpoint, and batches are composed as in a run without one.

**Group commits.** Done keys are queued and handed to the store (``Session.record``) in
groups: every ``INTERVAL`` seconds, or at once when ``GROUP`` keys wait. ``record`` may
write synchronously (it returns None) or on a thread of its own (it returns a
``concurrent.futures.Future``, done when the group is committed): the loop only waits
for a commit where the crash bound needs it.

**The crash bound.** A crash repeats the items admitted but not committed: those in
flight, and those done whose group is not committed yet. Before admitting an item, the
pump keeps ``admitted - committed`` below the window (``Ledger.limit``): it hands the
queued keys to the store and waits for their commit, or, when none are queued, for an
item to be done (waiting, it does not count as working: if nothing else works and the
consumer has nothing to take, the run is stalled and the pump is let through one item:
it is what a run whose window is held by batch results of many items needs).

**Failures.** A policy's outcome (``emitted``, ``skipped``) is told to
:meth:`CheckpointInput.gave_up` (composed when the run is built: a run without a
checkpoint pays nothing) in the failed call's context, where the call's origins are
(``_origin.ORIGIN``): for any stage, they are recorded ``failed``, with the exception's
type and message, when they are done. ``failed`` (``on_error="raise"``) records
nothing: the run fails, and its item runs again next time.

**Skips.** Items whose key is recorded (done, or failed unless ``retry_failed``) are not
admitted at all: no task is called for them (the ledger's ``skipped_as_done``).

**The end.** However the run ends (finished, failed, closed by its consumer), what is
done is committed (a failed run's done items are done: their results left), and the
session is closed with the run's outcome. (A failed run's results not taken yet are
dropped, not handed over after the error: ``Run.abort``.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..cache import stable_key
from ..checkpoint import Resumed, Session
from ._input import PUMP_SLICE, close_source
from ._ledger import Flow, Ledger
from ._origin import ORIGIN, BatchOrigins, Origin, each

if TYPE_CHECKING:
    from ._order import Sink
    from ._weight import Weigher


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
    @property
    def entry(self) -> Sink: ...
    @property
    def weigher(self) -> Weigher | None: ...
    @property
    def direct_entry(self) -> Callable[[Any, Any, Any], None] | None: ...
    def fail(self, exc: BaseException) -> None: ...


INTERVAL = 0.005
"""Seconds a done key waits at most before its group is handed to the store."""

GROUP = 2048
"""Keys that make a group at once."""

_SKIP_YIELD = 4095  # yield to the loop every 4096 items skipped in a row

_NOTE = "conveyor: raised while reading the pipeline's input"


class CheckpointInput:
    """The run's input read through its checkpoint, and what is done recorded (see the
    module's docstring)."""

    __slots__ = (
        "admitted",
        "committed",
        "done_keys",
        "ended",
        "failed_keys",
        "let_through",
        "n_done",
        "n_failed",
        "resumed",
        "run",
        "session",
        "timer",
        "waiter",
        "writing",
    )

    def __init__(self, run: Checkpointed, resumed: Resumed) -> None:
        self.run = run
        self.resumed = resumed
        self.session: Session | None = None
        self.done_keys: list[str] = []  # done, not handed to the store yet
        self.failed_keys: dict[str, BaseException] = {}  # (the same, handled by a policy)
        self.writing: list[tuple[concurrent.futures.Future[Any], int]] = []  # groups
        self.admitted = 0  # items admitted by this run
        self.committed = 0  # of those, done and known to be committed
        self.ended = 0  # of those, done (or failed)
        self.n_done = 0  # keys handed to the store, done
        self.n_failed = 0  # ... and failed
        self.timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None  # the pump, at the crash bound
        self.let_through = False

    def open(self) -> None:
        """Take the checkpoint (its lock: a second run on it fails here, at its start)
        and read what is recorded. The run calls it last, once it is built."""
        self.session = self.resumed.checkpoint.open_session(self.resumed.retry_failed)

    # -- the input ------------------------------------------------------------------------

    async def pump(self, source: Any) -> None:
        """Feed ``source`` into the run: items done earlier are skipped, each other one
        is admitted with its origin (within the window, and the crash bound)."""
        if isinstance(source, AsyncIterable):
            iterator = aiter(source)
            try:
                await self._pump(iterator, True)
            finally:
                if iterator is not source:  # (an iterable's iterator is the run's own)
                    await close_source(iterator)
        else:
            try:
                items = iter(source)
            except Exception as exc:
                exc.add_note(_NOTE)
                raise
            await self._pump(items, False)

    async def _pump(self, items: Any, is_async: bool) -> None:
        run = self.run
        ledger = run.ledger
        session = self.session
        assert session is not None  # (closed only when the run is over)
        skip = session.skip
        checkpoint = self.resumed.checkpoint
        key_fn = checkpoint.key
        # The first stage's call, when the pump may make it (as ``_input``'s pump does).
        push = run.entry.push if run.direct_entry is None else run.direct_entry
        weigher = run.weigher
        loop_time = run.loop.time
        deadline = loop_time() + PUMP_SLICE
        count = skipped = 0
        try:
            while not run.closed:
                try:
                    item = await anext(items) if is_async else next(items)
                except (StopIteration, StopAsyncIteration):
                    return
                except Exception as exc:
                    exc.add_note(_NOTE)
                    raise
                # (``Checkpoint.key_of`` inlined: it raises what it must for an item
                # without a stable key; a resume's skips cost this and a set lookup.)
                key = stable_key(item if key_fn is None else key_fn(item))
                if key is None:
                    key = checkpoint.key_of(item)
                if key in skip:
                    skipped += 1
                    if not skipped & _SKIP_YIELD:
                        ledger.skipped_as_done(skipped)
                        skipped = 0
                        await asyncio.sleep(0)
                    continue
                if self.admitted - self.committed >= ledger.limit:
                    await self.bound()
                if ledger.tokens >= ledger.admit:
                    await ledger.wait_for_room()
                    deadline = loop_time() + PUMP_SLICE
                if run.closed:
                    return
                if weigher is not None and weigher.active:
                    weigher.weigh(item)
                ledger.admitted()
                self.admitted += 1
                push(item, None, ledger.origin_admitted(key, item))
                count += 1
                if not count & 63 and loop_time() >= deadline:
                    await asyncio.sleep(0)
                    deadline = loop_time() + PUMP_SLICE
        finally:
            if skipped:
                ledger.skipped_as_done(skipped)

    async def bound(self) -> None:
        """Until ``admitted - committed`` is below the window: commit what is done, wait
        for items to be done (see "The crash bound" in the module's docstring)."""
        run = self.run
        ledger = run.ledger
        while self.admitted - self.committed >= ledger.limit and not run.closed:
            self.flush()
            if self.writing:
                # (Left in ``writing`` until committed: what a crash would repeat.)
                await asyncio.wrap_future(self.writing[0][0])  # (the store's error: raised)
                self.collect()
                continue
            if self.let_through:
                break
            waiter = self.waiter = run.loop.create_future()
            ledger.work_stopped()  # waiting is not working (a stall? see ``idle``)
            try:
                await waiter
            finally:
                self.waiter = None
                ledger.resumed(waiter)
        self.let_through = False

    def idle(self) -> None:
        """(The ledger's ``on_idle``, and the consumer's wait.) The pump at the crash
        bound, with nothing working, no item done and nothing for the consumer to take:
        the run is stalled (partial batches wait for items the bound holds back, behind
        Failures or batch results that stand for more items than the window): let the
        pump through one item, as a plain run would have admitted it."""
        waiter = self.waiter
        ledger = self.run.ledger
        if waiter is None or waiter.done() or ledger.working() or ledger.can_drain():
            return
        self.let_through = True
        ledger.wake(waiter, None)

    # -- what is done -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Items admitted and not done yet (what a crash now would repeat, with the done
        ones not committed)."""
        return self.admitted - self.ended

    def done(self, origin: Origin) -> None:
        """(The ledger's ``on_done``.) Nothing derived from ``origin`` is left in the run:
        queue its key (failed if a policy gave up on something derived from it)."""
        run = self.run
        if run.closed:
            return  # (the run is unwinding: nothing more is done)
        self.ended += 1
        if origin.error is None:
            done = self.done_keys
            done.append(origin.key)
            queued = len(done)
        else:
            self.failed_keys[origin.key] = origin.error
            queued = len(self.failed_keys)
        if (
            queued >= GROUP
            # (past the window, let through a stall: what is done must not wait)
            or self.admitted - self.committed > run.ledger.limit
        ):
            self.flush()
        elif self.timer is None:
            self.timer = run.loop.call_later(INTERVAL, self.flush)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            run.ledger.wake(waiter, None)

    def flush(self) -> None:
        """Hand the queued keys to the store, as one group (one transaction)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        session = self.session
        done, failed = self.done_keys, self.failed_keys
        if session is None or not (done or failed):
            return
        self.done_keys, self.failed_keys = [], {}
        n = len(done) + len(failed)
        try:
            written = session.record(done, failed)
        except Exception as exc:
            self.run.fail(exc)
            return
        self.n_done += len(done)
        self.n_failed += len(failed)
        if isinstance(written, concurrent.futures.Future):
            self.writing.append((written, n))
            self.collect()
        else:  # (written at once)
            self.committed += n

    def collect(self) -> None:
        """Count the groups committed since; a group the store failed fails the run."""
        while self.writing and self.writing[0][0].done():
            future, n = self.writing.pop(0)
            error = future.exception()
            if error is not None:
                self.run.fail(error)
                return
            self.committed += n

    def gave_up(self, item: Any, exc: BaseException, outcome: str, batch: bool) -> None:
        """(A single stage's policy.) The call on ``item`` failed for good with
        ``outcome``: its origins are recorded failed, unless the run fails with it."""
        if outcome == "failed":
            return
        value = ORIGIN.get(None)
        if value is not None:
            self.run.ledger.origin_failed(each(value), exc)

    def gave_up_in_batch(self, item: Any, exc: BaseException, outcome: str, batch: bool) -> None:
        """(A batch stage's policy.) As :meth:`gave_up`: the whole batch's origins if
        ``batch``, else ``item``'s (an item of the batch called alone)."""
        if outcome == "failed":
            return
        value = ORIGIN.get(None)
        if value is None:
            return
        if not batch and type(value) is BatchOrigins:
            self.run.ledger.origin_failed(value.of(item), exc)
        else:
            self.run.ledger.origin_failed(each(value), exc)

    def on_gave_up(self, is_batch: bool) -> Callable[[Any, BaseException, str, bool], None]:
        """What a stage's policy tells of its outcomes (see ``Policy.on_gave_up``)."""
        return self.gave_up_in_batch if is_batch else self.gave_up

    def over(self, run: Checkpointed) -> None:
        """(The run's ``on_over``.) Commit what is done, close the session."""
        session = self.session
        if session is None:
            return
        try:
            self.flush()
        finally:
            self.session = None
            ledger = run.ledger
            if run.error is not None:
                outcome = "failed"
            elif ledger.finished and not ledger.tokens:
                outcome = "finished"
            else:
                outcome = "closed"
            session.close(outcome, self.n_done, self.n_failed, ledger.done_earlier)
