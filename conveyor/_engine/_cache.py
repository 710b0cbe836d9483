"""The result cache: ``@single_task(cache=Cache(...))``, ``@batch_task(cache=...)``.

A :class:`~conveyor.Cache` (``conveyor.cache``) is a store of results shared by the tasks
and the runs that are given it: in memory (an LRU of ``max_entries`` entries) when
``path`` is ``None``, else in one SQLite file (stdlib ``sqlite3``, WAL, one table; values
pickled), shared across runs and processes.

**Keys.** An entry's key is the task's *namespace* and the item's key. The namespace is
the function's module and qualified name and a version: ``version=`` if given, else a hash
of the function's source (``inspect.getsource``; its qualified name when it has none, as a
builtin): changing the function's code invalidates its entries, and two tasks never share
one. The stable values a function is *made with* (see below) are part of it too: what it
closes over, its defaults, a ``functools.partial``'s arguments and a callable object's
attributes (``make(2)`` and ``make(3)`` of one ``def make(k)`` have one source: they
shared entries). Others (a client, a connection) are not.
The item's key is ``key(item)`` if ``key=`` is given, else the item itself, which
must then be *stable*: a ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None`` or a
tuple of them (its ``repr`` is the same in every process). Anything else fails the call,
with a ``TypeError`` naming ``key=``. (Side inputs and resources are not part of the key.)

**Composed once.** When a stage is built, :class:`StageCache` is made for it and wraps its
bound call (``Stage.bind``: the executor's call, in its span if traced): a hit returns the
stored result without calling the executor, so no call is made, retried or timed; a miss
calls through and stores the result when it is out (a plain value at once; a Future or an
:class:`~conveyor._engine._calls.Answer` by a done callback; a coroutine by awaiting it).
A batch stage's call looks each item up: the misses alone go to the function, and the
results are put back in the batch's order (a cached batch task must return a list with one
result per item it was given). Under a rate limit a single stage looks an item up before
its turn too (``before``), so a hit never waits for the rate limit (a batch still
takes its turn).

**What is stored.** Successful results only: not an exception (so not a Failure, nor
what the error policy makes of one), not ``None`` (the item is dropped; the next run calls
again), not a generator (its values are read lazily): a generator function with a cache is
refused when the task is made. The memory store keeps the result object itself (do not
mutate it); the SQLite store its pickle.

**Counted once per item.** ``hits`` and ``misses`` count items, not lookups: a retry and
a batch's isolation (``Stage.attempt``) call again: a failed call's key is kept in
``again``, and its next lookup (a next attempt, or a later duplicate's) is not counted.

**Expiry.** ``ttl`` seconds after it was stored an entry is a miss. The memory store
measures it on the clock of the event loop that stored it (``loop.time()``: a virtual
clock in tests drives it); the SQLite store stores the wall-clock (``time.time()``)
expiry, since other processes read it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import inspect
import pickle
import sqlite3
import time
import weakref
from collections.abc import Callable
from inspect import CORO_CREATED, getcoroutinestate
from types import AsyncGeneratorType, CoroutineType, GeneratorType, NoneType
from typing import Any

from ..cache import Cache, connect, stable_key
from ..errors import Failure
from ._calls import Answer, as_awaitable

__all__ = ["MISS", "StageCache", "namespace"]

WRITE_GROUP = 256
"""SQLite entries written in one transaction (and the rest at the run's end): other
processes see a run's entries a group at a time; a run that dies loses its last group."""

MISS: Any = object()
"""What a lookup returns when the cache holds no live entry."""
_UNCACHED = (NoneType, GeneratorType, AsyncGeneratorType, Failure)
_FUTURES = (Answer, asyncio.Future, concurrent.futures.Future)


def namespace(func: Callable[..., Any], version: str | None) -> str:
    """A task's part of its entries' keys: module, qualified name, version, and a hash of
    the stable values it was made with (see the module's docstring)."""
    made_with: list[Any] = []
    while isinstance(func, functools.partial):
        made_with += [*func.args, *sorted(func.keywords.items())]
        func = func.func
    if not hasattr(func, "__code__") and not hasattr(func, "__qualname__"):
        made_with += sorted(getattr(func, "__dict__", {}).items())  # (a callable object)
        func = type(func)  # (its repr holds its address: no two processes share it)
    for cell in getattr(func, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # (an empty cell)
            made_with.append(cell.cell_contents)
    made_with += [*(getattr(func, "__defaults__", None) or ())]
    made_with += sorted((getattr(func, "__kwdefaults__", None) or {}).items())
    texts = [text for text in map(stable_key, made_with) if text is not None]
    values = ":" + hashlib.sha256("|".join(texts).encode()).hexdigest()[:16] if texts else ""
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    if version is None:
        try:
            source = inspect.getsource(func)
        except (OSError, TypeError):  # (a builtin, code from exec: no source)
            version = "qualname"
        else:
            version = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{module}:{qualname}:{version}{values}"


class StageCache:
    """One stage's use of a :class:`Cache` in one run: lookups, stores, hits and misses.

    Everything runs on the loop, but a ``concurrent.futures.Future``'s done callback (a
    worker thread): the SQLite connection is opened on first use, shared under the
    cache's lock, and closed when the run is over (:meth:`over`).
    """

    __slots__ = (
        "again",
        "cache",
        "closed",
        "db",
        "hits",
        "key",
        "loop",
        "misses",
        "ns",
        "task",
        "unwritten",
    )

    def __init__(self, cache: Cache, stage: Any) -> None:
        self.cache = cache
        self.task = stage.name
        self.loop = stage.loop
        self.ns = namespace(stage.spec.func, cache.version)
        self.key = cache.key
        self.db: sqlite3.Connection | None = None
        # SQLite entries stored but not yet written: one transaction per WRITE_GROUP of
        # them, and the rest at the run's end (a commit per entry ran at 29k misses/s).
        self.unwritten: dict[Any, tuple[Any, bytes, float | None]] = {}
        self.closed = False  # (the run is over: a late result is not stored)
        # Keys whose call failed: their next lookup is a retry's (see the module doc; a
        # set's add, from a thread's done callback, and discard are atomic).
        self.again: set[Any] = set()
        self.hits = 0
        self.misses = 0

    # -- keys and the stores ---------------------------------------------------------

    def key_of(self, item: Any) -> Any:
        """``item``'s key in the store, or a TypeError naming key=."""
        custom = self.key
        value = item if custom is None else custom(item)
        if custom is not None and self.cache.path is None:  # (any hashable key, as is)
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"task {self.task!r}: cache key {value!r} (of item {item!r}) is not "
                    f"hashable: make Cache(key=...) return a str, int or tuple"
                ) from None
            return value
        # The item's text, its type in it: 1, 1.0 and True (equal in a dict) are three.
        text = stable_key(value)
        if text is not None:
            return text
        what = "its key" if custom is not None else "the item"
        raise TypeError(
            f"task {self.task!r} has a cache, and {what} {value!r} (a {type(value).__name__}) "
            f"is not a stable key (a str, bytes, int, float, bool, None or a tuple of "
            f"them): give Cache(key=...) a function of the item returning one, e.g. "
            f"Cache(key=lambda item: item['id'])"
        )

    def get(self, key: Any) -> Any:
        """The live entry of ``key``, or :data:`MISS` (counted)."""
        cache = self.cache
        if cache.path is None:
            with cache._lock:
                entry = cache._entries.get((self.ns, key))
                if entry is not None:
                    value, expires = entry
                    if expires is None or self.loop.time() < expires:
                        cache._entries.move_to_end((self.ns, key))
                        self.hits += 1
                        return value
                    del cache._entries[(self.ns, key)]
            self.misses += 1
            return MISS
        with cache._lock:
            pending = self.unwritten.get(key)
            if pending is not None and (pending[2] is None or time.time() < pending[2]):
                self.hits += 1
                return pending[0]
            row = (
                self._db()
                .execute(
                    "SELECT value, expires FROM conveyor_cache WHERE ns = ? AND key = ?",
                    (self.ns, key),
                )
                .fetchone()
            )
        if row is not None and (row[1] is None or time.time() < row[1]):
            self.hits += 1
            return pickle.loads(row[0])
        self.misses += 1
        return MISS

    def put(self, key: Any, value: Any) -> None:
        """Store ``value`` for ``key`` (unless it is not cached: see the module doc)."""
        if isinstance(value, _UNCACHED) or self.closed:
            return
        cache, ttl = self.cache, self.cache.ttl
        if cache.path is None:
            expires = None if ttl is None else self.loop.time() + ttl
            with cache._lock:
                entries = cache._entries
                entries[(self.ns, key)] = (value, expires)
                entries.move_to_end((self.ns, key))
                while len(entries) > cache.max_entries:
                    entries.popitem(last=False)
            return
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        with cache._lock:
            if self.closed:  # (checked again here: ``over`` may have closed it meanwhile)
                return
            self.unwritten[key] = (value, blob, None if ttl is None else time.time() + ttl)
            if len(self.unwritten) >= WRITE_GROUP:
                self._write()

    def _write(self) -> None:
        """(Under the cache's lock.) Write the unwritten entries, in one transaction."""
        if not self.unwritten:
            return
        rows = [(self.ns, key, blob, expires) for key, (_, blob, expires) in self.unwritten.items()]
        self.unwritten.clear()
        db = self._db()
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO conveyor_cache VALUES (?, ?, ?, ?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _db(self) -> sqlite3.Connection:
        """(Under the cache's lock.) This run's connection, opened on first use."""
        if self.db is None:
            assert self.cache.path is not None
            connection = connect(self.cache.path)
            self.db = connection
        return self.db

    def over(self, run: Any) -> None:
        """(``Run.on_over``.) Close the connection; results that come later (a thread's
        call the run did not wait for) are not stored."""
        with self.cache._lock:
            if self.cache.path is not None:
                self._write()  # (the entries of the run's last group)
            self.closed = True
            db, self.db = self.db, None
        if db is not None:
            db.close()

    # -- the wrapped calls -----------------------------------------------------------

    def wrap(self, call: Callable[[Any], Any], batch: bool) -> Callable[[Any], Any]:
        """A stage's bound ``call``, answered from the cache when it holds the item's
        result (see the module docstring)."""
        if batch:
            return self.wrap_batch(call)
        key_of, get, keep, recount = self.key_of, self.get, self.keep, self.recount
        again = self.again

        def cached(item: Any) -> Any:
            key = key_of(item)
            retry = key in again
            hit = get(key)
            if retry:
                recount(key, hit)
            if hit is not MISS:
                return hit
            try:
                result = call(item)
            except BaseException:
                again.add(key)
                raise
            return keep(result, lambda value: self.store(key, value), lambda: again.add(key))

        return cached

    def wrap_batch(self, call: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """A batch stage's bound ``call``: its items' hits from the cache, the misses
        alone given to the function, the results in the batch's order."""
        key_of, get, recount, again = self.key_of, self.get, self.recount, self.again
        task = self.task

        def cached(batch: list[Any]) -> Any:
            keys = [key_of(item) for item in batch]
            retries = [key in again for key in keys]
            found = [get(key) for key in keys]
            for key, retry, hit in zip(keys, retries, found, strict=True):
                if retry:
                    recount(key, hit)
            missed = [i for i, hit in enumerate(found) if hit is MISS]
            if not missed:
                return found
            misses = [batch[i] for i in missed]

            def merge(results: Any) -> list[Any]:
                if type(results) is not list or len(results) != len(misses):
                    raise TypeError(
                        f"task {task!r} has a cache: it must return a list with one result "
                        f"per item it is given ({len(misses)}), got {type(results).__name__}"
                        + (f" of {len(results)}" if type(results) is list else "")
                    )
                for i, value in zip(missed, results, strict=True):
                    found[i] = value
                    self.store(keys[i], value)
                return found

            def failed() -> None:  # (isolation looks each of them up again)
                again.update(keys)

            try:
                result = call(misses)
                if type(result) is not CoroutineType and not isinstance(result, _FUTURES):
                    return merge(result)
            except BaseException:
                failed()
                raise
            wrapper = _merged(as_awaitable(result), merge, failed)
            weakref.finalize(wrapper, _abandoned, result)
            return wrapper

        return cached

    def recount(self, key: Any, hit: Any) -> None:
        """``key``'s lookup was its item's retry: not counted again (see the module doc)."""
        self.again.discard(key)
        if hit is MISS:
            self.misses -= 1
        else:
            self.hits -= 1

    def store(self, key: Any, value: Any) -> None:
        # (A result that cannot be pickled is handed on, not stored.)
        with contextlib.suppress(pickle.PicklingError, TypeError, AttributeError):
            self.put(key, value)

    def keep(self, result: Any, store: Callable[[Any], None], failed: Callable[[], None]) -> Any:
        """``result`` (a call's), its value stored when it is out (``failed()`` if it
        fails or is cancelled)."""
        if type(result) is CoroutineType:
            wrapper = _stored(result, store, failed)
            # A wrapper closed before it starts (the run ended) never awaits the call's
            # coroutine: close that too, or it warns "never awaited".
            weakref.finalize(wrapper, _abandoned, result)
            return wrapper
        if isinstance(result, _FUTURES):

            def done(future: Any) -> None:
                if not future.cancelled() and future.exception() is None:
                    store(future.result())
                else:
                    failed()

            result.add_done_callback(done)
            return result
        store(result)
        return result

    def before(
        self, stage: Any, start: Callable[[Any, Any, Any], None]
    ) -> Callable[[Any, Any, Any], None]:
        """A rate-limited single stage's ``start``: a hit is handed on at once, without
        waiting for a turn; a miss starts as before (its call counts it)."""
        key_of, get = self.key_of, self.get

        def start_cached(item: Any, node: Any, origin: Any) -> None:
            try:
                hit = get(key_of(item))
            except Exception:  # (the call raises it again, under the error policy)
                hit = MISS
            else:
                self.misses -= hit is MISS  # (counted by its call's lookup)
            if hit is MISS:
                start(item, node, origin)
                return
            if stage.tally is not None:
                stage.tally.items_in += 1
            stage.emit(hit, node, origin)

        return start_cached


async def _stored(awaitable: Any, store: Callable[[Any], None], failed: Callable[[], None]) -> Any:
    try:
        value = await awaitable
    except BaseException:
        failed()
        raise
    store(value)
    return value


async def _merged(
    awaitable: Any, merge: Callable[[Any], list[Any]], failed: Callable[[], None]
) -> list[Any]:
    try:
        return merge(await awaitable)
    except BaseException:
        failed()
        raise


def _abandoned(awaitable: Any) -> None:
    if type(awaitable) is CoroutineType and getcoroutinestate(awaitable) == CORO_CREATED:
        awaitable.close()
