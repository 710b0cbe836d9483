"""The SQLite checkpoint store: ``Checkpoint(path)``.

One file (stdlib ``sqlite3``, WAL, ``synchronous=NORMAL``): table ``conveyor_checkpoint``
(``key`` → ``state`` ``done``/``failed``, the exception's type and message, the time)
and ``conveyor_checkpoint_runs`` (each run's start, end, outcome and counts).

One run at a time: a run holds an exclusive lock on ``<path>.lock`` (``fcntl.flock``,
on the descriptor its writer thread opened: the OS lets it go when the process dies,
SIGKILL included); ``reset()`` takes it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time

from .._sqlite import open_database
from .base import DONE, FAILED, CheckpointBusy, CheckpointSummary

__all__ = ["SqliteRun", "SqliteStore"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS conveyor_checkpoint (key TEXT PRIMARY KEY, "
    "state TEXT NOT NULL, error_type TEXT, error_message TEXT, at REAL NOT NULL) "
    "WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS conveyor_checkpoint_runs (id INTEGER PRIMARY KEY, "
    "started REAL NOT NULL, ended REAL, outcome TEXT, done INTEGER NOT NULL DEFAULT 0, "
    "failed INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0)",
)


class SqliteStore:
    """A checkpoint in one SQLite file (made, with its tables, if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with _connect(self.path):  # (made now: a bad path fails here, not mid-run)
            pass

    def __repr__(self) -> str:
        return repr(self.path)

    def open_run(self, retry_failed: bool) -> SqliteRun:
        return SqliteRun(self.path, retry_failed)

    def summary(self) -> CheckpointSummary:
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
        with _connect(self.path) as db:
            rows = db.execute(
                "SELECT key, error_type, error_message FROM conveyor_checkpoint WHERE state = ?",
                (FAILED,),
            )
            return {key: (kind, message) for key, kind, message in rows}

    def reset(self) -> None:
        with _Lock(self.path), _connect(self.path) as db:
            db.execute("DELETE FROM conveyor_checkpoint")
            db.execute("DELETE FROM conveyor_checkpoint_runs")


class SqliteRun:
    """One run's hold on the file: its lock, its connection, its row (every method on
    the session's writer thread)."""

    __slots__ = ("db", "lock", "run_id", "skip")

    def __init__(self, path: str, retry_failed: bool) -> None:
        self.lock = _Lock(path)
        self.lock.__enter__()
        try:
            self.db = open_database(path, *_SCHEMA)
            try:
                query = "SELECT key FROM conveyor_checkpoint"
                if retry_failed:
                    query += f" WHERE state = '{DONE}'"
                # (Loaded once: the resume's skips are a set lookup each.)
                self.skip: set[str] = {key for (key,) in self.db.execute(query)}
                self.run_id = self.db.execute(
                    "INSERT INTO conveyor_checkpoint_runs (started) VALUES (?)", (time.time(),)
                ).lastrowid
            except BaseException:
                self.db.close()
                raise
        except BaseException:
            self.lock.__exit__()
            raise

    def record(self, done: list[str], failed: dict[str, tuple[str, str]]) -> None:
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
                [(key, FAILED, kind, message, now) for key, (kind, message) in failed.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self, outcome: str, done: int, failed: int, skipped: int) -> None:
        try:
            self.db.execute(
                "UPDATE conveyor_checkpoint_runs SET ended = ?, outcome = ?, done = ?, "
                "failed = ?, skipped = ? WHERE id = ?",
                (time.time(), outcome, done, failed, skipped, self.run_id),
            )
        finally:
            try:
                self.db.close()
            finally:
                self.lock.__exit__()


class _Lock:
    """The exclusive lock of one run on a checkpoint file (``<path>.lock``, ``flock``)."""

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


def _connect(path: str) -> contextlib.closing[sqlite3.Connection]:
    """A connection to the checkpoint's file (its tables made), closed on exit."""
    return contextlib.closing(open_database(path, *_SCHEMA))
