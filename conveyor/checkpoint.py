"""The checkpoint's store: :class:`Checkpoint`, given to ``pipeline.with_checkpoint``.

One SQLite file (stdlib ``sqlite3``, WAL): which input items are **done** (every result
derived from them has left the pipeline) and which were handled by an error policy
(``failed``: the exception's type and message), by key; and the runs made on it. When
an item is done, and how a run skips them, is the engine's: ``conveyor._engine._checkpoint``
and docs/checkpoint-design.md.

One run per checkpoint at a time: a run holds an exclusive lock on ``<path>.lock``
(``fcntl.flock``: released by the OS when the process dies, even by SIGKILL); a second
run on the same file, in this process or another, fails at its start with
:class:`CheckpointBusy`.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .cache import stable_key

__all__ = ["Checkpoint", "CheckpointBusy", "CheckpointSummary"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS conveyor_checkpoint (key TEXT PRIMARY KEY, "
    "state TEXT NOT NULL, error_type TEXT, error_message TEXT, at REAL NOT NULL) "
    "WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS conveyor_checkpoint_runs (id INTEGER PRIMARY KEY, "
    "started REAL NOT NULL, ended REAL, outcome TEXT, done INTEGER NOT NULL DEFAULT 0, "
    "failed INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0)",
)

DONE = "done"
FAILED = "failed"


class CheckpointBusy(RuntimeError):
    """Another run (in this process or another) is using the checkpoint."""


@dataclass(frozen=True)
class CheckpointSummary:
    """What a checkpoint holds: items ``done`` and ``failed`` (handled by a policy),
    and the last run's start, end (``None``: it did not end cleanly, or is running),
    outcome (``"finished"``, ``"failed"``, ``"closed"``, ``None``) and the items it
    skipped as done earlier. Times are ``time.time()`` values."""

    done: int
    failed: int
    last_run_started: float | None
    last_run_ended: float | None
    last_run_outcome: str | None
    last_run_skipped: int


class Checkpoint:
    """Where a pipeline records the input items it is done with, to resume after a crash.

    ``path``: the SQLite file (made if missing). ``key``: ``key(item)`` is the item's
    key; by default the item itself, which must then be a ``str``, ``bytes``, ``int``,
    ``float``, ``bool``, ``None`` or a tuple of them (its text is the same in every
    process, as ``conveyor.Cache``'s rule); ``key`` must return such a value too.
    """

    def __init__(
        self, path: str | os.PathLike[str], key: Callable[[Any], Any] | None = None
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Checkpoint(path=...) must be a file path, got {path!r}")
        if key is not None and not callable(key):
            raise TypeError(
                f"Checkpoint(key=...) must be a function of an input item returning its key, "
                f"got {key!r}; e.g. key=lambda row: row['id']"
            )
        self.path = os.fspath(path)
        self.key = key
        with _connect(self.path):  # (made now: a bad path fails here, not mid-run)
            pass

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r})"

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
        with _connect(self.path) as db:
            counts = dict(
                db.execute("SELECT state, count(*) FROM conveyor_checkpoint GROUP BY state")
            )
            last = db.execute(
                "SELECT started, ended, outcome, skipped FROM conveyor_checkpoint_runs "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
        started, ended, outcome, skipped = last if last is not None else (None, None, None, 0)
        return CheckpointSummary(
            counts.get(DONE, 0), counts.get(FAILED, 0), started, ended, outcome, skipped
        )

    def failures(self) -> dict[str, tuple[str, str]]:
        """The items handled by a policy: key -> (exception type, message)."""
        with _connect(self.path) as db:
            rows = db.execute(
                "SELECT key, error_type, error_message FROM conveyor_checkpoint WHERE state = ?",
                (FAILED,),
            )
            return {key: (kind, message) for key, kind, message in rows}

    def reset(self) -> None:
        """Forget every item and run (refused while a run uses the checkpoint)."""
        with _Lock(self.path), _connect(self.path) as db:
            db.execute("DELETE FROM conveyor_checkpoint")
            db.execute("DELETE FROM conveyor_checkpoint_runs")

    def open_session(self, retry_failed: bool) -> Session:
        """Start a run on this checkpoint (the engine's: see ``_engine._checkpoint``)."""
        return Session(self, retry_failed)


class Session:
    """One run's use of a checkpoint: the lock, the keys to skip, the group commits."""

    __slots__ = ("checkpoint", "db", "lock", "run_id", "skip")

    def __init__(self, checkpoint: Checkpoint, retry_failed: bool) -> None:
        self.checkpoint = checkpoint
        self.lock = _Lock(checkpoint.path)
        self.lock.__enter__()
        try:
            self.db = sqlite3.connect(
                checkpoint.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            _prepare(self.db)
            query = "SELECT key FROM conveyor_checkpoint"
            if retry_failed:
                query += f" WHERE state = '{DONE}'"
            # (Loaded once: the resume's skips are a set lookup each.)
            self.skip: set[str] = {key for (key,) in self.db.execute(query)}
            self.run_id = self.db.execute(
                "INSERT INTO conveyor_checkpoint_runs (started) VALUES (?)", (time.time(),)
            ).lastrowid
        except BaseException:
            self.lock.__exit__()
            raise

    def record(
        self, done: Iterable[str], failed: dict[str, BaseException]
    ) -> concurrent.futures.Future[None] | None:
        """Record ``done`` keys and ``failed`` ones (with their exception), in one
        transaction (a group commit). None: committed when it returns; a store that
        writes on a thread returns a Future, done when the group is committed."""
        now = time.time()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO conveyor_checkpoint (key, state, at) VALUES (?, ?, ?)",
                [(key, DONE, now) for key in done],
            )
            db.executemany(
                "INSERT OR REPLACE INTO conveyor_checkpoint VALUES (?, ?, ?, ?, ?)",
                [
                    (key, FAILED, type(exc).__qualname__, str(exc), now)
                    for key, exc in failed.items()
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return None

    def close(self, outcome: str, done: int, failed: int, skipped: int) -> None:
        """The run is over: its row gets its end, and the lock is let go."""
        try:
            self.db.execute(
                "UPDATE conveyor_checkpoint_runs SET ended = ?, outcome = ?, done = ?, "
                "failed = ?, skipped = ? WHERE id = ?",
                (time.time(), outcome, done, failed, skipped, self.run_id),
            )
        finally:
            self.db.close()
            self.lock.__exit__()


class _Lock:
    """The exclusive lock of one run on a checkpoint (``<path>.lock``, ``flock``)."""

    def __init__(self, path: str) -> None:
        self.path = path + ".lock"
        self.fd = -1

    def __enter__(self) -> _Lock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointBusy(
                f"the checkpoint {self.path[:-5]!r} is in use by another run (in this "
                f"process or another): one run per checkpoint at a time; wait for it to "
                f"end, or give this run a Checkpoint of its own"
            ) from None
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # (closing the descriptor lets the lock go)


def _prepare(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in _SCHEMA:
        db.execute(statement)


class _connect:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        try:
            _prepare(self.db)
        except BaseException:
            self.db.close()
            raise

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


@dataclass(frozen=True)
class Resumed:
    """A run's input on a checkpoint (``pipeline.with_checkpoint``): the engine reads
    ``source`` through the checkpoint (``_engine._checkpoint``)."""

    source: Any
    checkpoint: Checkpoint
    retry_failed: bool
