"""The checkpoint: :class:`Checkpoint`, given to ``pipeline.with_checkpoint``, and a
run's :class:`Session` on it.

A checkpoint records which input items are **done** (every result derived from them has
left the pipeline) and which were handled by an error policy (``failed``: the
exception's type and message), by key; and the runs made on it. When an item is done,
and how a run skips them, is the engine's: ``conveyor._engine._checkpoint`` and
docs/checkpoint-design.md.

Where it keeps them is its store (``conveyor.abc.CheckpointStore``), found by the
argument: a file path is a SQLite file (``conveyor._stores.sqlite``), a
``postgresql://`` or ``postgres://`` URL a PostgreSQL database
(``conveyor._stores.postgres``, with ``conveyor[postgres]``), any other object
implementing the protocol is used as it is.

One run per checkpoint at a time: a run holds the store's lock (a file lock, a database
session's advisory lock: let go when the process dies, even by SIGKILL); a second run
fails at its start with :class:`CheckpointBusy`.

**The writer.** A run's :class:`Session` owns one thread, the checkpoint's writer: it
opens the store's run (the lock, the keys to skip), makes every write, and closes it.
``record`` queues a group of keys and returns a ``concurrent.futures.Future``, done when
the group is committed: the event loop never waits on the disk or the network (the
engine awaits the Future before reading more input, which keeps the crash bound).
Groups queued while the writer was busy are merged into one transaction. ``close``
flushes what is queued, ends the run's row, lets the lock go and joins the thread.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._stores.base import CheckpointBusy, CheckpointSummary
from .abc import CheckpointStore
from .cache import stable_key

if TYPE_CHECKING:
    from .abc import CheckpointRun

__all__ = ["Checkpoint", "CheckpointBusy", "CheckpointSummary"]

_URL_SCHEMES = ("postgresql://", "postgres://")


class Checkpoint:
    """Where a pipeline records the input items it is done with, to resume after a crash.

    ``where``: a file path (a SQLite file, made if missing); a ``postgresql://`` or
    ``postgres://`` URL (a PostgreSQL database shared by machines; needs
    ``pip install 'conveyor[postgres]'``), where ``name`` tells this checkpoint from the
    others kept in the same database (default ``"default"``); or an object implementing
    :class:`conveyor.abc.CheckpointStore`.

    ``key``: ``key(item)`` is the item's key; by default the item itself, which must then
    be a ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None`` or a tuple of them
    (its text is the same in every process, as ``conveyor.Cache``'s rule); ``key`` must
    return such a value too.
    """

    def __init__(
        self,
        where: str | os.PathLike[str] | CheckpointStore,
        key: Callable[[Any], Any] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if key is not None and not callable(key):
            raise TypeError(
                f"Checkpoint(key=...) must be a function of an input item returning its key, "
                f"got {key!r}; e.g. key=lambda row: row['id']"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"Checkpoint(name=...) must be a non-empty str, got {name!r}")
        self.key = key
        self.store: CheckpointStore = _store_for(where, name)
        # The SQLite file's path, or the database's URL (None for a store object).
        self.path: str | None = (
            None if not isinstance(where, (str, os.PathLike)) else (os.fspath(where))
        )

    def __repr__(self) -> str:
        return f"Checkpoint({self.store!r})"

    def key_of(self, item: Any) -> str:
        """``item``'s key, as stored; a ``TypeError`` naming ``key=`` if it has none."""
        value = item if self.key is None else self.key(item)
        text = stable_key(value)
        if text is None:
            if self.key is None:
                raise TypeError(
                    f"Checkpoint: the input item {item!r} ({type(item).__name__}) has no "
                    f"stable key: give Checkpoint(path, key=...) a function returning a str, "
                    f"int, bytes, float, bool, None or a tuple of them, e.g. "
                    f"key=lambda row: row['id']"
                )
            raise TypeError(
                f"Checkpoint(key=...) returned {value!r} ({type(value).__name__}) for the "
                f"input item {item!r}: a key must be a str, int, bytes, float, bool, None or "
                f"a tuple of them (its text is the same in every process)"
            )
        return text

    def summary(self) -> CheckpointSummary:
        """Items done and failed, and the last run's start, end, outcome and skips."""
        return self.store.summary()

    def failures(self) -> dict[str, tuple[str, str]]:
        """The items handled by a policy: key -> (exception type, message)."""
        return self.store.failures()

    def reset(self) -> None:
        """Forget every item and run (:class:`CheckpointBusy` while a run uses it)."""
        self.store.reset()

    def open_session(self, retry_failed: bool) -> Session:
        """Start a run on this checkpoint (the engine's: see ``_engine._checkpoint``):
        blocks until the store's run is open; :class:`CheckpointBusy` if it is taken."""
        return Session(self.store, retry_failed)


def _store_for(where: Any, name: str | None) -> CheckpointStore:
    """The store ``Checkpoint(where, name=name)`` names (see :class:`Checkpoint`)."""
    if isinstance(where, str) and where.startswith(_URL_SCHEMES):
        from ._stores.postgres import PostgresStore  # (asyncpg: only when asked for)

        return PostgresStore(where, "default" if name is None else name)
    if isinstance(where, (str, os.PathLike)):
        if name is not None:
            raise TypeError(
                f"Checkpoint(name=...) names a checkpoint in a database shared by several; "
                f"a SQLite checkpoint is its file: give each checkpoint a file of its own "
                f"(got a path, {os.fspath(where)!r}, and name={name!r})"
            )
        from ._stores.sqlite import SqliteStore

        return SqliteStore(os.fspath(where))
    if isinstance(where, CheckpointStore):
        if name is not None:
            raise TypeError("Checkpoint(name=...) is for a database URL, not a store object")
        return where
    raise TypeError(
        f"Checkpoint(where=...) must be a file path (SQLite), a postgresql:// URL or a "
        f"conveyor.abc.CheckpointStore, got {where!r}"
    )


class _Group:
    """A group of keys to record (``Session.record``), and its Future."""

    __slots__ = ("future", "rows")

    def __init__(self, rows: dict[str, tuple[str, str] | None]) -> None:
        self.rows = rows  # key -> None (done) or (exception type, message) (failed)
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()


class _End:
    """The run is over (``Session.close``)."""

    __slots__ = ("counts", "outcome")

    def __init__(self, outcome: str, counts: tuple[int, int, int]) -> None:
        self.outcome = outcome
        self.counts = counts


class Session:
    """One run's use of a checkpoint: its writer thread (the store's run: the lock, the
    keys to skip, the group commits). See the module's docstring."""

    __slots__ = ("_error", "_queue", "_thread", "skip")

    def __init__(self, store: CheckpointStore, retry_failed: bool) -> None:
        self._queue: queue.SimpleQueue[_Group | _End] = queue.SimpleQueue()
        self._error: BaseException | None = None  # close's, raised by close
        opened: concurrent.futures.Future[CheckpointRun] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._write, args=(store, retry_failed, opened), name="conveyor-checkpoint"
        )
        self._thread.start()
        try:
            run = opened.result()
        except BaseException:
            # Interrupted (a Ctrl-C) while the store's run opens, it may open yet: the
            # writer then closes it at once. (A writer whose open failed has returned.)
            self._queue.put(_End("failed", (0, 0, 0)))
            self._thread.join()
            raise
        self.skip: set[str] = run.skip

    def record(
        self, done: list[str], failed: dict[str, BaseException]
    ) -> concurrent.futures.Future[None]:
        """Queue ``done`` keys and ``failed`` ones (with their exception's type and
        message) for one transaction; the Future is done when it is committed (its
        exception: the store's error). A Future cancelled before the writer takes it
        is not written."""
        rows: dict[str, tuple[str, str] | None] = dict.fromkeys(done)
        for key, exc in failed.items():
            rows[key] = (type(exc).__qualname__, str(exc))
        group = _Group(rows)
        self._queue.put(group)
        return group.future

    def close(self, outcome: str, done: int, failed: int, skipped: int) -> None:
        """The run is over: what is queued is written, then the run's row gets its end
        (``outcome`` is written ``"failed"`` if a group could not be), the lock is let go
        and the writer is joined. Raises the store's error at closing, if any."""
        self._queue.put(_End(outcome, (done, failed, skipped)))
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _write(
        self,
        store: CheckpointStore,
        retry_failed: bool,
        opened: concurrent.futures.Future[CheckpointRun],
    ) -> None:
        """(The writer thread.) Open the store's run, commit the queued groups (those
        queued meanwhile merged into one transaction), close it at the end."""
        try:
            run = store.open_run(retry_failed)
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(run)
        failed_once = False
        while True:
            item: _Group | _End | None = self._queue.get()
            groups: list[_Group] = []
            while isinstance(item, _Group):
                groups.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
                    break
            if groups and not self._commit(run, groups):
                failed_once = True
            if isinstance(item, _End):
                break
        assert isinstance(item, _End)
        try:
            run.close("failed" if failed_once else item.outcome, *item.counts)
        except BaseException as exc:
            self._error = exc

    @staticmethod
    def _commit(run: CheckpointRun, groups: list[_Group]) -> bool:
        """Write ``groups`` in one transaction; False if the store failed."""
        live = [group for group in groups if group.future.set_running_or_notify_cancel()]
        rows: dict[str, tuple[str, str] | None] = {}
        for group in live:
            rows.update(group.rows)  # (a key in two groups: the later one's state)
        done = [key for key, error in rows.items() if error is None]
        failed = {key: error for key, error in rows.items() if error is not None}
        try:
            if rows:
                run.record(done, failed)
        except BaseException as exc:
            for group in live:
                group.future.set_exception(exc)
            return False
        for group in live:
            group.future.set_result(None)
        return True


@dataclass(frozen=True)
class Resumed:
    """A run's input on a checkpoint (``pipeline.with_checkpoint``): the engine reads
    ``source`` through the checkpoint (``_engine._checkpoint``)."""

    source: Any
    checkpoint: Checkpoint
    retry_failed: bool
