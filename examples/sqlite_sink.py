"""Write a stream of records into SQLite: one transaction per batch, poison rows left out.

``parse | store_batch``: text lines become order rows, and a batch task writes them with
``executemany``, one transaction per batch (``with conn:`` commits the batch, or rolls
all of it back if any row fails). Two of the lines are *poison*: rows that parse but that
the database refuses (a negative amount breaks a CHECK constraint; a repeated order id
breaks the PRIMARY KEY). With ``on_error="skip_item"``, a batch that fails is rolled
back and split into halves, and halves of halves, each written in a transaction of its
own, until only the poison rows are left out.

The connection is a run-scoped resource (``with_resources``): opened when the run
starts, shared by its calls, closed when the run ends, however it ends. ``sqlite3`` is a
blocking library, so ``store_batch`` runs on the thread executor; the connection is made
with ``check_same_thread=False`` because it is opened on the event loop's thread and
used on a pool thread, and a lock makes sure only one thread uses it at a time (see
``open_database``).

The database is a file in a temporary folder; the script reads it back at the end and
checks what it holds.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conveyor import batch_task, single_task

SCHEMA = """
CREATE TABLE orders (
    id       INTEGER PRIMARY KEY,
    customer TEXT    NOT NULL,
    amount   REAL    NOT NULL CHECK (amount >= 0)
)
"""
INSERT = "INSERT INTO orders (id, customer, amount) VALUES (?, ?, ?)"

Order = tuple[int, str, float]


@dataclass
class Database:
    """What the resource gives the calls: the connection, and the lock that guards it."""

    conn: sqlite3.Connection
    lock: threading.Lock


@contextlib.contextmanager
def open_database(path: Path) -> Iterator[Database]:
    """One connection per run.

    ``check_same_thread=False``: the connection is opened here, on the event loop's
    thread, and used by ``store_batch`` on a pool thread. That is safe as long as one
    thread at a time uses it, which the lock guarantees: a batch task runs one batch at
    a time by default, and the lock keeps it so even with ``concurrency_limit`` > 1
    (batches then queue for the connection; open one connection per thread if they
    should write in parallel -- SQLite allows one writer at a time anyway).

    When a run ends early (an error elsewhere, ``break``, cancellation), conveyor closes
    the connection only after every call on the run's threads has ended, so a batch in
    its transaction commits or rolls back whole first.
    """
    conn = sqlite3.connect(path, check_same_thread=False)
    database = Database(conn, threading.Lock())
    try:
        yield database
    finally:
        conn.close()


@single_task
def parse(line: str) -> Order:
    order_id, customer, amount = line.split(",")
    return int(order_id), customer.strip(), float(amount)


@batch_task(max_size=4, max_wait=0.5, executor="thread", on_error="skip_item")
def store_batch(orders: list[Order], *, db: Database) -> list[int]:
    """Write one batch in one transaction; return the ids written.

    ``with db.conn:`` commits when the block ends and rolls back if it raises, so a
    batch is written whole or not at all. On a failure, ``skip_item`` calls this
    function again on halves of the batch: each half is a new transaction, and the
    rolled-back rows are written at most once.
    """
    with db.lock, db.conn:
        db.conn.executemany(INSERT, orders)
    return [order_id for order_id, _, _ in orders]


def order_lines() -> Iterator[str]:
    """Twenty orders; line 7 has a negative amount and line 13 repeats order id 3."""
    for n in range(1, 21):
        if n == 7:
            yield f"{n}, customer-{n % 5}, -12.50"
        elif n == 13:
            yield f"3, customer-{n % 5}, {n}.00"
        else:
            yield f"{n}, customer-{n % 5}, {n}.00"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "orders.db"
        with contextlib.closing(sqlite3.connect(path)) as setup, setup:
            setup.execute(SCHEMA)

        pipeline = parse | store_batch.with_resources(db=functools.partial(open_database, path))
        stored = pipeline.run(order_lines())  # the sync front door: a plain script
        print(f"stored {len(stored)} orders: {stored}")

        # Read back what the database holds, with a connection of our own.
        with contextlib.closing(sqlite3.connect(path)) as check:
            ids = [row[0] for row in check.execute("SELECT id FROM orders ORDER BY id")]
            count, total = check.execute("SELECT COUNT(*), SUM(amount) FROM orders").fetchone()
            by_customer = check.execute(
                "SELECT customer, COUNT(*) FROM orders GROUP BY customer ORDER BY customer"
            ).fetchall()
        print(f"{count} rows, total amount {total:.2f}")
        for customer, orders in by_customer:
            print(f"  {customer}: {orders} orders")

        # Only the poison rows are missing: order 7 (negative amount) and the second
        # order 3 (line 13); order 3 itself, from line 3, is there once, with its amount.
        expected = [n for n in range(1, 21) if n not in (7, 13)]
        assert ids == expected, ids
        assert sorted(stored) == expected, stored
        assert total == sum(expected), total
        print("skipped the 2 poison rows; every other order is stored exactly once")


if __name__ == "__main__":
    main()
