"""The one way conveyor opens a SQLite file (the result cache's, a checkpoint's)."""

from __future__ import annotations

import sqlite3

__all__ = ["open_database"]


def open_database(path: str, *schema: str) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path``: autocommit (transactions are the
    caller's ``BEGIN``), WAL with ``synchronous=NORMAL`` (readers never wait for the
    writer; a commit survives the process dying), a 30 s wait for another writer's lock,
    and the ``schema`` statements run (``CREATE ... IF NOT EXISTS``). It may be used from
    another thread than its maker's (its users serialize their use). Closed if making it
    fails."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            db.execute(statement)
    except BaseException:
        db.close()
        raise
    return db
