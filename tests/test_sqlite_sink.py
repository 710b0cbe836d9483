"""Writing batches into SQLite: one transaction per batch, on the thread executor.

The pattern of ``examples/sqlite_sink.py`` and ``docs/databases.md``, checked against
real database files: a batch task (``executor="thread"``) writes each batch with
``executemany`` inside ``with conn:``, and the ``sqlite3`` connection is a run-scoped
resource.

- every batch is one transaction (the statements SQLite runs are traced);
- a failing batch leaves no partial rows, under ``on_error="skip_batch"`` and ``"fail"``;
- under ``on_error="skip_item"`` exactly the poison rows are missing, and every other
  row is there once: a failed transaction is rolled back before its halves are tried;
- the connection is closed on every kind of exit;
- a hypothesis property over random inputs, poison positions and batch sizes.

Poison rows are negative values, which the table's CHECK constraint refuses. The table
has no unique key on purpose, so a row written twice would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import leftover_tasks, settle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import batch_task, single_task

SCHEMA = "CREATE TABLE rows (value INTEGER NOT NULL CHECK (value >= 0), batch INTEGER NOT NULL)"
INSERT = "INSERT INTO rows (value, batch) VALUES (?, ?)"


class RecordingConnection(sqlite3.Connection):
    """A connection that records the statements it runs and whether it was closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statements: list[str] = []
        self.closed = False
        self.set_trace_callback(self.statements.append)

    def close(self) -> None:
        self.closed = True
        super().close()

    def transactions(self) -> Counter[str]:
        """How many times each transaction statement ran: BEGIN, COMMIT, ROLLBACK."""
        return Counter(
            verb
            for statement in self.statements
            if (verb := statement.split(maxsplit=1)[0].upper()) in ("BEGIN", "COMMIT", "ROLLBACK")
        )


class Sink:
    """A resource factory for one database file, recording each connection it opens.

    Each run calls it once and gets ``(connection, lock)``. The lock is held by a
    batch's transaction and by the closing, as in the example: a call on a pool thread
    cannot be interrupted, and closing a ``sqlite3`` connection while another thread is
    in the middle of a statement crashes the interpreter.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened: list[RecordingConnection] = []
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(SCHEMA)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[tuple[RecordingConnection, threading.Lock]]:
        conn = sqlite3.connect(self.path, factory=RecordingConnection, check_same_thread=False)
        assert isinstance(conn, RecordingConnection)
        self.opened.append(conn)
        lock = threading.Lock()
        try:
            yield conn, lock
        finally:
            with lock:
                conn.close()

    def rows(self) -> list[tuple[int, int]]:
        """``(value, batch)`` of every stored row, read with a connection of its own."""
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return conn.execute("SELECT value, batch FROM rows ORDER BY rowid").fetchall()

    def values(self) -> Counter[int]:
        return Counter(value for value, _ in self.rows())

    def all_closed(self) -> bool:
        return bool(self.opened) and all(conn.closed for conn in self.opened)


class Writer:
    """The batch function: one transaction per call, each call's rows tagged with its
    number; records the batches it was called with."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.started = threading.Event()

    def __call__(
        self, values: list[int], *, db: tuple[sqlite3.Connection, threading.Lock]
    ) -> list[int]:
        conn, lock = db
        with lock:
            self.calls.append(list(values))
            self.started.set()
            number = len(self.calls)
            with conn:  # commits at the end of the block, rolls back if it raises
                conn.executemany(INSERT, [(value, number) for value in values])
        return values


def store(sink: Sink, writer: Writer, *, on_error: str = "fail", max_size: int = 4) -> Any:
    """The batch stage: ``writer`` on the thread executor, with ``sink`` as resource."""
    task = batch_task(max_size=max_size, executor="thread", on_error=on_error)(writer)
    return task.with_resources(db=sink)


async def unwound(sink: Sink | None = None) -> None:
    """Wait (up to 10 s) for a run that its consumer left to end on its own: a bare
    ``break`` or a cancelled consumer does not wait for the run's clean-up, which closes
    the connection and then waits for the pool's threads to exit."""
    for _ in range(1000):
        if not leftover_tasks() and (sink is None or sink.all_closed()):
            return
        await asyncio.sleep(0.01)


def is_open(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:  # Cannot operate on a closed database.
        return False
    return True


# -- transactions ---------------------------------------------------------------------


def test_each_batch_is_one_transaction(tmp_path: Path) -> None:
    sink, writer = Sink(tmp_path / "db.sqlite"), Writer()
    assert store(sink, writer).run(range(10)) == list(range(10))
    assert writer.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    [conn] = sink.opened
    assert conn.transactions() == {"BEGIN": 3, "COMMIT": 3}
    # Each BEGIN ... COMMIT holds exactly one batch's inserts.
    verbs = [statement.split(maxsplit=1)[0].upper() for statement in conn.statements]

    def transaction(inserts: int) -> list[str]:
        return ["BEGIN", *["INSERT"] * inserts, "COMMIT"]

    assert verbs == transaction(4) + transaction(4) + transaction(2)
    assert sink.rows() == [(v, v // 4 + 1) for v in range(10)]


# -- failing batches leave no partial rows ----------------------------------------------


def test_skip_batch_leaves_out_the_whole_failing_batch(tmp_path: Path) -> None:
    sink, writer = Sink(tmp_path / "db.sqlite"), Writer()
    values = [0, 1, 2, 3, 4, 5, -6, 7, 8, 9]  # -6 is poison: the batch [4, 5, -6, 7] fails
    assert store(sink, writer, on_error="skip_batch").run(values) == [0, 1, 2, 3, 8, 9]
    # 4 and 5 were inserted before the poison row, inside the transaction that rolled back.
    assert sink.values() == Counter([0, 1, 2, 3, 8, 9])
    assert sink.opened[0].transactions() == {"BEGIN": 3, "COMMIT": 2, "ROLLBACK": 1}
    assert sink.all_closed()


def test_fail_leaves_no_partial_rows_and_closes_the_connection(tmp_path: Path) -> None:
    sink, writer = Sink(tmp_path / "db.sqlite"), Writer()
    values = [0, 1, 2, 3, 4, 5, -6, 7, 8, 9]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed") as caught:
        store(sink, writer, on_error="fail").run(values)
    assert "conveyor: raised by task" in caught.value.__notes__[0]
    # The first batch was committed before the second ran (one batch at a time) and
    # the failing one left nothing. Whether the third started before the run stopped is
    # a race; if it did, it was written whole.
    assert sink.values() in (Counter([0, 1, 2, 3]), Counter([0, 1, 2, 3, 8, 9]))
    assert sink.all_closed()


def test_skip_item_leaves_out_exactly_the_poison_rows(tmp_path: Path) -> None:
    sink, writer = Sink(tmp_path / "db.sqlite"), Writer()
    values = [0, 1, -2, 3, 4, 5, 6, 7, 8, -9, -10, 11, 12]
    expected = [v for v in values if v >= 0]
    assert store(sink, writer, on_error="skip_item", max_size=8).run(values) == expected
    # Every good row exactly once: the failed transactions were rolled back before the
    # halves were written, each in a transaction of its own.
    assert sink.values() == Counter(expected)
    transactions = sink.opened[0].transactions()
    assert transactions["BEGIN"] == len(writer.calls)
    assert transactions["ROLLBACK"] == sum(any(v < 0 for v in call) for call in writer.calls)
    assert transactions["COMMIT"] == sum(all(v >= 0 for v in call) for call in writer.calls)
    assert [-2] in writer.calls and [-9] in writer.calls and [-10] in writer.calls
    # The rows of a committed call are exactly that call's values.
    committed = {n: call for n, call in enumerate(writer.calls, 1) if min(call) >= 0}
    assert sorted(sink.rows()) == sorted((v, n) for n, call in committed.items() for v in call)


# -- the connection is closed on every kind of exit -------------------------------------


@single_task
async def slow_after(value: int) -> int:
    """A stage after the writer that blocks from value 6 on, to end the run mid-stream."""
    if value >= 6:
        await asyncio.sleep(30)
    return value


@single_task
def explode_at_five(value: int) -> int:
    if value == 5:
        raise KeyError(value)
    return value


@pytest.mark.parametrize(
    "exit_how",
    ["end", "error", "break", "bare_break", "aclose", "cancel", "wait_for"],
)
async def test_the_connection_is_closed_on_every_kind_of_exit(
    tmp_path: Path, exit_how: str
) -> None:
    sink, writer = Sink(tmp_path / "db.sqlite"), Writer()
    writes = store(sink, writer, max_size=2)
    if exit_how == "end":
        assert await writes(range(10)).collect() == list(range(10))
    elif exit_how == "error":  # another stage fails (on_error="fail")
        with pytest.raises(KeyError):
            await (writes | explode_at_five)(range(100)).collect()
    elif exit_how == "break":
        async with (writes | slow_after)(range(100)) as stream:
            async for value in stream:
                if value == 3:
                    break
    elif exit_how == "bare_break":  # no async with: the run is cancelled and unwinds
        async for value in (writes | slow_after)(range(100)):
            if value == 3:
                break
        await unwound(sink)
    elif exit_how == "aclose":
        stream = (writes | slow_after)(range(100))
        assert await anext(stream) == 0
        await stream.aclose()
    else:
        consumer = asyncio.create_task((writes | slow_after)(range(100)).collect())
        while not writer.started.is_set():  # the run has opened its connection
            await asyncio.sleep(0.01)
        if exit_how == "cancel":
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
        else:  # wait_for cancels what it waits for when the time is up
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(consumer, timeout=0.05)
        await unwound(sink)  # a cancelled consumer leaves the run to unwind on its own
    await settle()
    assert len(sink.opened) == 1 and sink.all_closed(), exit_how
    assert not is_open(sink.opened[0])
    # Whatever the exit, the table holds whole batches only.
    rows = sink.rows()
    for number in {n for _, n in rows}:
        assert [v for v, n in rows if n == number] == writer.calls[number - 1]


def test_the_connection_is_closed_by_the_sync_front_door(tmp_path: Path) -> None:
    sink, writer = Sink(tmp_path / "db.sqlite"), Writer()
    assert store(sink, writer).run(range(5)) == list(range(5))
    with pytest.raises(KeyError):
        (store(sink, writer) | explode_at_five).run(range(10))
    assert len(sink.opened) == 2 and sink.all_closed()  # one connection per run
    assert not any(map(is_open, sink.opened))


async def test_a_run_cancelled_mid_transaction_commits_the_batch_whole_then_closes(
    tmp_path: Path,
) -> None:
    """The case the lock is for: the run ends while a batch is inside its transaction
    on a thread. That batch is written whole, and only then is the connection closed."""
    sink = Sink(tmp_path / "db.sqlite")
    in_transaction, cancelled = threading.Event(), threading.Event()

    @batch_task(max_size=3, executor="thread")
    def write(values: list[int], *, db: tuple[sqlite3.Connection, threading.Lock]) -> list[int]:
        conn, lock = db
        with lock, conn:
            conn.execute(INSERT, (values[0], 1))
            in_transaction.set()
            cancelled.wait(timeout=10)  # the run ends while this transaction is open
            conn.executemany(INSERT, [(value, 1) for value in values[1:]])
        return values

    consumer = asyncio.create_task(write.with_resources(db=sink)(range(9)).collect())
    while not in_transaction.is_set():
        await asyncio.sleep(0.01)
    consumer.cancel()
    cancelled.set()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await unwound(sink)
    [conn] = sink.opened
    assert conn.closed and conn.transactions() == {"BEGIN": 1, "COMMIT": 1}
    assert sink.rows() == [(0, 1), (1, 1), (2, 1)]  # the first batch, whole; no other


# -- a known problem: resources close before the run's threads have finished ------------


async def test_a_call_on_a_thread_ends_before_its_resource_closes(tmp_path: Path) -> None:
    closing = threading.Event()
    seen: list[bool] = []

    @contextlib.contextmanager
    def connection() -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(tmp_path / "db.sqlite", check_same_thread=False)
        try:
            yield conn
        finally:
            closing.set()
            conn.close()

    started = threading.Event()

    @batch_task(max_size=1, executor="thread")
    def write(values: list[int], *, db: sqlite3.Connection) -> list[int]:
        started.set()
        # Not inside a statement while waiting (a close then would crash the process):
        # wait for the resource to be closed, or 2 s if the run waits for this call.
        closing.wait(timeout=2)
        seen.append(is_open(db))
        return values

    consumer = asyncio.create_task(write.with_resources(db=connection)(range(3)).collect())
    while not started.is_set():
        await asyncio.sleep(0.01)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await unwound()
    assert seen == [True], "the call saw its connection closed while it was running"


# -- the property ------------------------------------------------------------------------

# Values below zero are poison (about one in six).
records = st.lists(st.integers(min_value=-10, max_value=50), max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=records, max_size=st.integers(1, 8))
def test_skip_item_stores_exactly_the_good_rows(values: list[int], max_size: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        sink, writer = Sink(Path(folder) / "db.sqlite"), Writer()
        results = store(sink, writer, on_error="skip_item", max_size=max_size).run(values)
        good = [v for v in values if v >= 0]
        assert results == good  # in input order
        assert sink.values() == Counter(good)
        assert sink.all_closed()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=records, max_size=st.integers(1, 8))
def test_skip_batch_stores_whole_batches_only(values: list[int], max_size: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        sink, writer = Sink(Path(folder) / "db.sqlite"), Writer()
        results = store(sink, writer, on_error="skip_batch", max_size=max_size).run(values)
        rows = sink.rows()
        # Every call is a batch; the table holds the batches without poison, whole.
        assert sorted(v for call in writer.calls for v in call) == sorted(values)
        clean = [(n, call) for n, call in enumerate(writer.calls, 1) if min(call) >= 0]
        assert sorted(rows) == sorted((v, n) for n, call in clean for v in call)
        assert results == [v for _, call in clean for v in call]
        assert sink.all_closed()
