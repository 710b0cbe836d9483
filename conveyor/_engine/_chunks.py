"""Calls sent to other processes in chunks: measured, sized, and answered item by item.

A :class:`Chunker` serves one stage of one run on an out-of-process backend (a process
pool, a Dask cluster: anything with ``submit(fn, *args) -> concurrent.futures.Future``).
Each item's call returns an ``_calls.Answer`` at once, which the engine waits for like
any Future (``_waiting``). Items wait in ``pending`` until a chunk takes them:

* **When.** At most ``2 x workers`` chunks are out at once: every worker busy and one more
  ready behind it. Items pushed in the same loop step are gathered before a chunk leaves,
  and a chunk leaves short only when a worker would otherwise idle.
* **How many.** ``chunk_size=`` if the task fixes it. Otherwise the first chunks hold one
  item each and measure; from then on a chunk holds ``target / per_item`` items, where
  ``per_item`` is the measured work time of an item (a moving average: it follows changes)
  and ``target`` is 20 x the measured fixed cost of a chunk (its round trip above the
  work, plus pickling), kept within 100-250 ms, so that fixed costs stay small. A chunk
  never takes more than an even share of the waiting items, so that every worker has
  work, on 2 cores or 64.
* **Bytes.** Under the run's byte bound (``max_in_flight_bytes``, items weighed: see
  ``_weight``), a chunk also holds at most a ``4 x workers`` share of the bound, and its
  pickled copy takes window places as items of the mean weight would, until its answer is
  in: the input reads on only as far as the bound allows with the copies in transit.
* **Answers.** The worker calls the function on every item of its chunk and catches each
  item's exception (:func:`run_chunk`), so a failing item fails alone, under the task's
  policy, and its neighbours succeed. Results come back as soon as their chunk is done,
  *in bulk*: one future per chunk, and when it completes, one loop callback settles every
  item's Answer and hands them on in input order (``_calls.hand_on``), each under its
  task's policy; no loop callback per item.

Items and results are pickled here, on the loop, not in the backend's threads: the cost
is measured, not guessed, and an item or result that cannot be pickled fails alone, with
a message that says what to do (see ``_pickling``). A lost worker fails the items of its
chunks with the backend's error (``KilledWorker``, a user's broken pool), or is answered
by the backend item by item (``lost``): a pool that conveyor owns sends the innocent
items of its broken chunks again and fails only the item that killed a worker (see
``_deaths``). Either way an item is answered once, never twice.

**Generators** cannot travel: the worker runs one to its end (or error) and sends its
values back; here they become a generator again, expanded as inline (the values before
an error kept, the same ``<output n of a generator>`` failure, handed on as the window
allows; the generator itself is not paced: its whole output is held at once). A
**coroutine** returned in a worker is closed there and fails its item.

What runs in the worker processes is ``_worker``'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import logging
import math
import pickle
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from ._calls import _RESULT, Answer, hand_on
from ._log_fields import run_fields
from ._pickling import unpicklable_item
from ._worker import _GENERATOR, _OK, _SKIPPED, PROTOCOL

if TYPE_CHECKING:
    from .._spec import StageSpec
    from ._weight import Weigher

__all__ = ["Chunker", "Sender", "chunker_for"]

logger = logging.getLogger("conveyor")

MIN_TARGET, MAX_TARGET = 0.1, 0.25
"""Seconds of work a measured chunk aims at: its fixed cost x 20, within these bounds.

The floor is measured, not guessed: on the CPU benchmark (2 workers on 2 cores, ~1 ms
items), chunks of ~20 ms of work ran at 0.79-0.80x the best hand-tuned
``ProcessPoolExecutor.map`` and 1.5-1.6x a plain loop; chunks of 100-200 ms at 0.91-1.10x
and 1.8-2.1x (every round trip also costs the main process CPU that the workers share)."""
MAX_CHUNK = 10_000


class Sender(Protocol):
    """A cluster executor (``_dask``, ``_ray``), as the :class:`Chunker` of each of its
    stages sees it: where chunks go, how a lost one is answered, how many run at once."""

    spec: StageSpec
    threads: int
    weigher: Weigher | None

    def submit(self, function: bytes, items: bytes) -> concurrent.futures.Future[bytes]: ...

    def lost(
        self, error: BaseException, sent: concurrent.futures.Future[bytes] | None, count: int
    ) -> list[BaseException | None]: ...


def chunker_for(sender: Sender, function: bytes) -> Chunker:
    """The :class:`Chunker` of a cluster executor's stage (``function``: pickled by the
    executor's ``dumps``), on the running loop, sized by the task's ``chunk_size``."""
    return Chunker(
        asyncio.get_running_loop(),
        function,
        sender.submit,
        sender.lost,
        sender.threads,
        sender.spec.options.chunk_size,
        sender.weigher,
    )


class Chunker:
    """One stage's calls on an out-of-process backend, for one run (see the module doc).

    ``submit(function_payload, items_payload)`` sends a chunk and returns a
    ``concurrent.futures.Future`` of :func:`run_chunk`'s answer. ``lost(exc, sent, count)``
    is told when a chunk fails (``sent``: its future, or None if ``submit`` refused it) and
    answers for each of its ``count`` items: the exception it fails with (each item gets a
    copy of its own), or ``None``: send it again (only for a chunk that was sent).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        function: bytes,
        submit: Callable[[bytes, bytes], concurrent.futures.Future[bytes]],
        lost: Callable[
            [BaseException, concurrent.futures.Future[bytes] | None, int],
            list[BaseException | None],
        ],
        workers: int,
        chunk_size: int | None,
        weigher: Weigher | None = None,
    ) -> None:
        self.loop = loop
        self.function = function
        self.submit = submit
        self.lost = lost
        self.workers = workers
        self.fixed = chunk_size
        self.weigher = weigher
        # The run's fields for the log (built in the run: its answers may be handed on
        # from another context).
        self.log_fields = run_fields("chunk")
        self.size = chunk_size or 1
        self.pending: list[Answer] = []  # (each holds its item)
        self.out: set[concurrent.futures.Future[bytes]] = set()
        self.gathering = False
        self.per_item: float | None = None  # seconds of work per item (moving average)
        self.cpu_per_item: float | None = None
        self.latency: float | None = None  # a chunk's round trip above work and pickling
        self.warm = False  # whether a chunk has been answered (the workers are up)
        # Totals for the run's statistics (per chunk answered, never per item).
        self.chunks = self.items = 0
        self.work_total = self.transfer_total = self.round_trip_total = 0.0

    # -- sending ---------------------------------------------------------------------

    def call(self, item: Any) -> Answer:
        answer = Answer(item)
        pending = self.pending
        pending.append(answer)
        if len(pending) >= self.size and len(self.out) < 2 * self.workers:
            self.send()
        elif not self.gathering:
            self.gathering = True
            self.loop.call_soon(self.flush)
        return answer

    def flush(self) -> None:
        """Send what is waiting: a short chunk only if a worker would otherwise idle (so
        tiny items gather into full chunks while every worker is busy)."""
        self.gathering = False
        while self.pending and (
            len(self.out) < self.workers
            or (len(self.pending) >= self.size and len(self.out) < 2 * self.workers)
        ):
            self.send()

    def send(self) -> None:
        share = math.ceil(len(self.pending) / self.workers)
        count = max(1, min(self.size, share))
        if self.weigher is not None and (by_bytes := self.weigher.chunk_items(self.workers)):
            count = min(count, by_bytes)
        chunk = [answer for answer in self.pending[:count] if not answer.state]
        del self.pending[:count]
        if not chunk:
            return
        started = time.perf_counter()
        items = [answer.item for answer in chunk]
        try:
            payload = pickle.dumps(items, PROTOCOL)
        except Exception:
            chunk = self._drop_unpicklable(chunk)
            if not chunk:
                return
            items = [answer.item for answer in chunk]
            payload = pickle.dumps(items, PROTOCOL)
        pickled = time.perf_counter() - started
        held = self.weigher.hold(len(payload)) if self.weigher is not None else 0
        try:
            sent = self.submit(self.function, payload)
        except Exception as exc:  # a broken or closed pool refuses at once
            self._unhold(held)
            self._hand_on_later(self._fail(chunk, exc))
            return
        del payload  # (the pool holds it until the answer: counted by ``held``)
        self.out.add(sent)
        # Sent while nothing else was out, once the workers are up (before the first
        # answer, a round trip includes starting them): its round trip measures latency.
        idle = self.warm and len(self.out) == 1
        sent.add_done_callback(
            lambda done: self._call_soon(self.answered, done, chunk, started, pickled, idle, held)
        )

    def _call_soon(self, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the run is long over
            self.loop.call_soon_threadsafe(*args)  # (from the backend's thread)

    def _drop_unpicklable(self, chunk: list[Answer]) -> list[Answer]:
        """Fail the items that cannot be pickled, alone; keep the others."""
        kept, failed = [], []
        for answer in chunk:
            try:
                pickle.dumps(answer.item, PROTOCOL)
            except Exception as exc:
                answer.set_exception(unpicklable_item(answer.item, exc))
                failed.append(answer)
            else:
                kept.append(answer)
        self._hand_on_later(failed)
        return kept

    # -- answers ---------------------------------------------------------------------

    def answered(
        self,
        done: concurrent.futures.Future[bytes],
        chunk: list[Answer],
        started: float,
        pickled: float,
        idle: bool,
        held: int = 0,
    ) -> None:
        self.out.discard(done)
        self._unhold(held)
        self.warm = True
        if done.cancelled():  # the pool shut down with the chunk unsent: the run is over
            settled = [answer for answer in chunk if answer.cancel()]
        elif (error := done.exception()) is not None:
            settled = self._fail(chunk, error, done)
        else:
            unpickling = time.perf_counter()
            results, work, cpu, loaded = pickle.loads(done.result())
            now = time.perf_counter()
            transfer = pickled + now - unpickling + loaded
            self.measure(len(chunk), now - started, work, cpu, transfer, idle)
            self.chunks += 1
            self.items += len(chunk)
            self.work_total += work
            self.transfer_total += transfer
            self.round_trip_total += now - started
            # Every item's outcome first, then their waiters, in order: the engine hands
            # each result on (a new item it starts here joins ``pending``).
            settled = []
            for answer, (status, value) in zip(chunk, results, strict=True):
                if answer.state:  # cancelled meanwhile: a timeout, or the run's end
                    continue
                if status == _OK:
                    answer.state, answer.value = _RESULT, value
                elif status == _GENERATOR:
                    answer.set_result(_replay(*value))
                elif status == _SKIPPED:  # not run: the run had ended (the stop flag)
                    answer.cancel()
                else:
                    answer.set_exception(value)
                settled.append(answer)
        # The worker that answered takes what waits before the loop settles this chunk's
        # items (a chunk of tiny items takes the loop about as long as the worker).
        if self.pending:
            self.flush()
        hand_on(self.loop, settled)

    def _unhold(self, held: int) -> None:
        if held and self.weigher is not None:
            self.weigher.unhold(held)

    def _fail(
        self,
        chunk: list[Answer],
        error: BaseException,
        sent: concurrent.futures.Future[bytes] | None = None,
    ) -> list[Answer]:
        """Answer the items of a chunk that failed as a whole, as ``lost`` says: fail an
        item, or put it back first in line (it was sent before what waits now). Returns
        the failed, for the caller to hand on."""
        verdicts = self.lost(error, sent, len(chunk))
        again, failed = [], []
        for answer, verdict in zip(chunk, verdicts, strict=True):
            if answer.state:  # cancelled meanwhile: a timeout, or the run's end
                continue
            if verdict is None and sent is not None:
                again.append(answer)
            else:
                answer.set_exception(_own_copy(verdict or error))
                failed.append(answer)
        self.pending[:0] = again
        return failed

    def _hand_on_later(self, answers: list[Answer]) -> None:
        """Hand ``answers`` on at the loop's next step: from :meth:`send`, which runs
        inside a stage's call (``call``), settling them now would run the engine's rules for
        other items in the middle of that call, before it is counted."""
        if answers:
            self.loop.call_soon(hand_on, self.loop, answers)

    # -- sizing ----------------------------------------------------------------------

    def measure(
        self, count: int, round_trip: float, work: float, cpu: float, pickling: float, idle: bool
    ) -> None:
        """Learn from a chunk's answer, and choose the next chunks' size."""
        per_item, cpu_per_item = work / count, cpu / count
        if self.per_item is None or self.cpu_per_item is None:
            self.per_item, self.cpu_per_item = per_item, cpu_per_item
        else:
            self.per_item += 0.3 * (per_item - self.per_item)
            self.cpu_per_item += 0.3 * (cpu_per_item - self.cpu_per_item)
        if idle:  # nothing else was out: the round trip above the work is the chunk's cost
            above = max(0.0, round_trip - work - pickling)
            self.latency = above if self.latency is None else min(self.latency, above)
        if self.fixed is None:
            fixed_cost = (self.latency or 0.0) + pickling
            target = min(MAX_TARGET, max(MIN_TARGET, 20 * fixed_cost))
            self.size = max(1, min(MAX_CHUNK, round(target / max(self.per_item, 1e-7))))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "chunk of %d answered: next size %d",
                count,
                self.size,
                extra={**self.log_fields, "conveyor_chunk_size": self.size},
            )


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for one item, so that the notes the policy adds (the item it
    failed on) are its own; ``error`` itself if it cannot be copied."""
    try:
        own = copy.copy(error)
    except Exception:
        return error
    if hasattr(error, "__notes__"):
        own.__notes__ = list(error.__notes__)  # (copy.copy shares the list)
    return own.with_traceback(error.__traceback__)


def _replay(values: list[Any], error: BaseException | None) -> Generator[Any, None, None]:
    """A generator's values as they came back from a worker, then its error, if any: the
    stage expands it as it expands a generator inline."""
    yield from values
    if error is not None:
        raise error
