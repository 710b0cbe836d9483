"""The PostgreSQL checkpoint store: ``Checkpoint("postgresql://...", name=...)``, with
``conveyor[postgres]`` (asyncpg).

A database holds any number of checkpoints, told apart by ``name``: two tables, made if
absent (in the connection's current schema), shared by them all:
``conveyor_checkpoint`` (``name``, ``key`` → ``state`` ``done``/``failed``, the
exception's type and message, the time; primary key ``(name, key)``) and
``conveyor_checkpoint_runs`` (each run's checkpoint name, start, end, outcome and
counts).

**One run at a time** per name: a run's connection holds a session-level advisory lock
(``pg_try_advisory_lock``) on a 64-bit number derived from the name, from its start to
its end. The server lets it go when that connection ends, the client's process killed
(SIGKILL included: the server sees the socket close) or not; a second run, on any
machine, gets :class:`~conveyor.CheckpointBusy` at its start. ``reset()`` takes the
lock for its transaction too.

**Writes**: a group of keys is one statement (``INSERT ... SELECT FROM unnest(...)
ON CONFLICT (name, key) DO UPDATE``), one round trip and one transaction.

asyncpg is async: a run's writer thread (``conveyor.checkpoint.Session``) runs an event
loop of its own, made and closed by :class:`PostgresRun`; ``summary()``, ``failures()``
and ``reset()`` run theirs on a short-lived thread (they may be called inside a running
loop), joined before they return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover (the extra is in the test dependencies)
    raise ImportError(
        "Checkpoint('postgresql://...') needs asyncpg: pip install 'conveyor[postgres]'"
    ) from exc

from .base import DONE, FAILED, CheckpointBusy, CheckpointSummary, masked

__all__ = ["PostgresRun", "PostgresStore"]

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS conveyor_checkpoint (name TEXT NOT NULL, key TEXT NOT NULL, "
    "state TEXT NOT NULL, error_type TEXT, error_message TEXT, "
    "at DOUBLE PRECISION NOT NULL, PRIMARY KEY (name, key))",
    "CREATE TABLE IF NOT EXISTS conveyor_checkpoint_runs (id BIGSERIAL PRIMARY KEY, "
    "name TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, ended DOUBLE PRECISION, "
    "outcome TEXT, done BIGINT NOT NULL DEFAULT 0, failed BIGINT NOT NULL DEFAULT 0, "
    "skipped BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS conveyor_checkpoint_runs_name ON conveyor_checkpoint_runs "
    "(name, id)",
)
_RECORD = (
    "INSERT INTO conveyor_checkpoint (name, key, state, error_type, error_message, at) "
    "SELECT $1, k, s, t, m, $6 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) "
    "AS u(k, s, t, m) "
    "ON CONFLICT (name, key) DO UPDATE SET state = EXCLUDED.state, "
    "error_type = EXCLUDED.error_type, error_message = EXCLUDED.error_message, at = EXCLUDED.at"
)


def lock_id(name: str) -> int:
    """The advisory lock's number for checkpoint ``name`` (a signed 64-bit integer)."""
    return _number(b"conveyor.checkpoint:" + name.encode())


def _number(text: bytes) -> int:
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)


# (A fixed number, no name's: the transaction that makes the tables holds it, so that
# two first runs at once do not race on CREATE TABLE IF NOT EXISTS.)
_SCHEMA_LOCK = _number(b"conveyor.checkpoint.schema")


class PostgresStore:
    """The checkpoint ``name`` in the PostgreSQL database at ``url``."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.lock = lock_id(name)

    def __repr__(self) -> str:
        return f"{masked(self.url)!r}, name={self.name!r}"

    async def connect(self) -> Any:
        """A connection, the tables made if absent."""
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                for statement in _SCHEMA:
                    await conn.execute(statement)
        except BaseException:
            await close(conn)
            raise
        return conn

    def busy(self) -> CheckpointBusy:
        return CheckpointBusy(
            f"the checkpoint {self.name!r} in {masked(self.url)} is in use by another run "
            f"(in this process or another, on this machine or another): one run per "
            f"checkpoint at a time; wait for it to end, or give this run a name of its own "
            f"(Checkpoint(url, name=...))"
        )

    def open_run(self, retry_failed: bool) -> PostgresRun:
        return PostgresRun(self, retry_failed)

    def summary(self) -> CheckpointSummary:
        async def query(conn: Any) -> CheckpointSummary:
            counts = dict(
                await conn.fetch(
                    "SELECT state, count(*) FROM conveyor_checkpoint WHERE name = $1 "
                    "GROUP BY state",
                    self.name,
                )
            )
            last = await conn.fetchrow(
                "SELECT started, ended, outcome, skipped FROM conveyor_checkpoint_runs "
                "WHERE name = $1 ORDER BY id DESC LIMIT 1",
                self.name,
            )
            started, ended, outcome, skipped = (None, None, None, 0) if last is None else last
            return CheckpointSummary(
                counts.get(DONE, 0), counts.get(FAILED, 0), started, ended, outcome, skipped
            )

        return in_own_loop(self.with_connection(query))

    def failures(self) -> dict[str, tuple[str, str]]:
        async def query(conn: Any) -> dict[str, tuple[str, str]]:
            rows = await conn.fetch(
                "SELECT key, error_type, error_message FROM conveyor_checkpoint "
                "WHERE name = $1 AND state = $2",
                self.name,
                FAILED,
            )
            return {key: (kind, message) for key, kind, message in rows}

        return in_own_loop(self.with_connection(query))

    def reset(self) -> None:
        async def delete(conn: Any) -> None:
            async with conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self.lock):
                    raise self.busy()
                await conn.execute("DELETE FROM conveyor_checkpoint WHERE name = $1", self.name)
                await conn.execute(
                    "DELETE FROM conveyor_checkpoint_runs WHERE name = $1", self.name
                )

        in_own_loop(self.with_connection(delete))

    def with_connection(
        self, use: Callable[[Any], Coroutine[Any, Any, T]]
    ) -> Callable[[], Coroutine[Any, Any, T]]:
        async def main() -> T:
            conn = await self.connect()
            try:
                return await use(conn)
            finally:
                await close(conn)

        return main


class PostgresRun:
    """One run's hold on the checkpoint: an event loop and a connection of its own,
    holding the advisory lock (every method on the session's writer thread)."""

    __slots__ = ("conn", "loop", "run_id", "skip", "store")

    def __init__(self, store: PostgresStore, retry_failed: bool) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()
        try:
            self.conn = self.loop.run_until_complete(store.connect())
            try:
                self.skip, self.run_id = self.loop.run_until_complete(self.open(retry_failed))
            except BaseException:
                self.loop.run_until_complete(close(self.conn))
                raise
        except BaseException:
            self.loop.close()
            raise

    async def open(self, retry_failed: bool) -> tuple[set[str], int]:
        conn, store = self.conn, self.store
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", store.lock):
            raise store.busy()
        query = "SELECT key FROM conveyor_checkpoint WHERE name = $1"
        if retry_failed:
            query += f" AND state = '{DONE}'"
        # (Loaded once: the resume's skips are a set lookup each.)
        skip = {key for (key,) in await conn.fetch(query, store.name)}
        run_id = await conn.fetchval(
            "INSERT INTO conveyor_checkpoint_runs (name, started) VALUES ($1, $2) RETURNING id",
            store.name,
            time.time(),
        )
        return skip, run_id

    def record(self, done: list[str], failed: dict[str, tuple[str, str]]) -> None:
        keys = [*done, *failed]
        states = [DONE] * len(done) + [FAILED] * len(failed)
        kinds = [None] * len(done) + [kind for kind, _ in failed.values()]
        messages = [None] * len(done) + [message for _, message in failed.values()]
        self.loop.run_until_complete(
            self.conn.execute(_RECORD, self.store.name, keys, states, kinds, messages, time.time())
        )

    def close(self, outcome: str, done: int, failed: int, skipped: int) -> None:
        loop = self.loop
        try:
            loop.run_until_complete(
                self.conn.execute(
                    "UPDATE conveyor_checkpoint_runs SET ended = $1, outcome = $2, done = $3, "
                    "failed = $4, skipped = $5 WHERE id = $6",
                    time.time(),
                    outcome,
                    done,
                    failed,
                    skipped,
                    self.run_id,
                )
            )
        finally:
            try:
                # (Ending the connection lets the advisory lock go.)
                loop.run_until_complete(close(self.conn))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()


async def close(conn: Any) -> None:
    """Close ``conn``; if that fails (a broken connection), drop it."""
    try:
        await asyncio.wait_for(conn.close(), 10)
    except BaseException:
        conn.terminate()
        raise


def in_own_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``main()`` run on an event loop of its own, on a thread of its own (joined): the
    caller may be running a loop (a ``summary()`` inside ``async def main``)."""
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def target() -> None:
        try:
            result.set_result(asyncio.run(main()))
        except BaseException as exc:
            result.set_exception(exc)

    thread = threading.Thread(target=target, name="conveyor-checkpoint-query")
    thread.start()
    thread.join()
    return result.result()
