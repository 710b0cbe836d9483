"""The result cache's store: :class:`Cache`, given to tasks as ``cache=``.

In memory (an LRU of ``max_entries`` entries, this process only) when ``path`` is
``None``; else one SQLite file (stdlib ``sqlite3``, WAL, one table ``conveyor_cache``;
values pickled), shared by runs and processes. How tasks use it (keys, versions, what is
stored, expiry, statistics) is the engine's: ``conveyor._engine._cache``, and
docs/durable-runs.md.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from types import NoneType
from typing import Any

from ._sqlite import open_database

__all__ = ["Cache"]

STABLE = (str, bytes, int, float, bool, NoneType)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS conveyor_cache (ns TEXT NOT NULL, key TEXT NOT NULL, "
    "value BLOB NOT NULL, expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID"
)


def stable_key(value: Any) -> str | None:
    """``value``'s text, the same in every process; ``None`` if it has none."""
    if type(value) in STABLE:
        return f"{type(value).__name__}:{value!r}"
    if type(value) is tuple:
        parts = [stable_key(part) for part in value]
        if any(part is None for part in parts):
            return None
        return "(" + ",".join(parts) + ")"  # type: ignore[arg-type]
    return None


class Cache:
    """A store of task results, given to tasks as ``cache=`` (see the module docstring).

    ``path``: ``None`` for memory (this process), else a SQLite file. ``ttl``: seconds an
    entry lives (``None``: forever). ``key``: ``key(item)`` is the item's key (default:
    the item, if stable). ``version``: the tasks' version (default: their source's hash).
    ``max_entries``: the memory store's bound (least recently used entries go first).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        ttl: float | None = None,
        key: Callable[[Any], Hashable] | None = None,
        version: str | None = None,
        max_entries: int = 100_000,
    ) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Cache(path=...) must be a file path or None, got {path!r}")
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0
        ):
            raise ValueError(f"Cache(ttl=...) must be seconds > 0 or None (forever), got {ttl!r}")
        if key is not None and not callable(key):
            raise TypeError(
                f"Cache(key=...) must be a function of an item returning its key, got {key!r}; "
                f"e.g. key=lambda row: row['id']"
            )
        if version is not None and not isinstance(version, str):
            raise TypeError(f"Cache(version=...) must be a str or None, got {version!r}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"Cache(max_entries=...) must be an int >= 1, got {max_entries!r}")
        self.path = None if path is None else os.fspath(path)
        self.ttl = None if ttl is None else float(ttl)
        self.key = key
        self.version = version
        self.max_entries = max_entries
        self._lock = threading.Lock()
        # The memory store: (namespace, key) -> (value, expiry on the loop's clock).
        self._entries: OrderedDict[tuple[str, Any], tuple[Any, float | None]] = OrderedDict()

    def __repr__(self) -> str:
        where = "memory" if self.path is None else repr(self.path)
        return f"Cache({where}, ttl={self.ttl}, version={self.version!r})"

    def clear(self) -> None:
        """Remove every entry (of every task)."""
        with self._lock:
            self._entries.clear()
        if self.path is not None:
            with contextlib.closing(connect(self.path)) as db:
                db.execute("DELETE FROM conveyor_cache")

    def __len__(self) -> int:
        """Entries stored (expired ones included until they are looked up)."""
        if self.path is None:
            return len(self._entries)
        with contextlib.closing(connect(self.path)) as db:
            return int(db.execute("SELECT count(*) FROM conveyor_cache").fetchone()[0])


def connect(path: str) -> sqlite3.Connection:
    """A connection to a SQLite cache file (see ``_sqlite.open_database``), its table made."""
    return open_database(path, _SCHEMA)
