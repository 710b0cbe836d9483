"""What runs in a worker process: a chunk's calls, item by item, and the worker's record.

:func:`run_chunk` calls the function on every item of a chunk and catches each item's
exception, so a failing item fails alone (see ``_chunks``, which sends the chunks and
reads the answers). **Generators** cannot travel: one is run to its end (or error) here
and its values sent back. A **coroutine** returned here is closed and fails its item.

**Worker records.** A worker of a pool conveyor owns writes its pid in its slot of a
shared array (:func:`start_worker`), then the chunk and index of each item before calling
on it (-1 between calls): a worker that dies leaves the item that killed it there (see
``_deaths``). It also keeps its pool's stop flag: once the run has ended, it skips what it
has not started (a first Ctrl-C waits only for the calls under way).
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Generator
from types import CoroutineType, GeneratorType
from typing import Any

from ._pickling import coroutine_returned, unpicklable_result

__all__ = ["PROTOCOL", "run_chunk", "start_worker"]

PROTOCOL = pickle.HIGHEST_PROTOCOL
_OK, _ERROR, _GENERATOR, _SKIPPED = 0, 1, 2, 3
"""An item's answer: its result, its exception, a generator's values, or not run."""

_functions: dict[bytes, Callable[[Any], Any]] = {}
"""Functions a worker has unpickled, by payload (a few per worker: the tasks it serves)."""

_record: Any = None
"""This worker's slot in its pool's shared record, ``(array, offset)`` (see the module
doc), once :func:`start_worker` has run; None in other workers (Dask's)."""
_stop: Any = None
"""The pool's stop flag (a shared byte, set once the run has ended), in a worker of a pool
conveyor created; None elsewhere (a user's pool, Dask)."""


def start_worker(array: Any, taken: Any, stop: Any) -> None:
    """(The initializer of a pool's workers.) Take the next free slot of ``array`` (three
    integers per worker: pid, chunk, item index) and write this worker's pid there; keep
    the stop flag; ignore SIGINT: a Ctrl-C reaches every process of the terminal's group,
    and it is the main process's to handle (the first lets the calls under way finish;
    see ``_interrupt``)."""
    global _record, _stop
    _stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with taken.get_lock():
        slot = taken.value
        taken.value += 1
    if 3 * slot + 2 < len(array):
        array[3 * slot] = os.getpid()
        array[3 * slot + 2] = -1
        _record = (array, 3 * slot)


def run_chunk(function: bytes, items: bytes, chunk: int = 0) -> bytes:
    """Call the function on every item; an item's exception is its answer, not the chunk's.

    Returns the pickled ``(answers, work seconds, CPU seconds, unpickling seconds)``,
    where each answer is ``(_OK, result)``, ``(_ERROR, exception)``, for a generator
    (which cannot travel) ``(_GENERATOR, (values, exception or None))``: its values up to
    its end or its error, or ``(_SKIPPED, None)`` for an item not run because the pool's
    stop flag was set (the run ended). A result or exception that cannot be pickled is
    replaced, alone, by an exception that says so. ``chunk`` is the chunk's number in the
    worker record.
    """
    record = _record
    if record is not None:
        array, at = record
        array[at + 1] = chunk
    loading = time.perf_counter()
    call = _functions.get(function)
    if call is None:
        call = pickle.loads(function)
        if len(_functions) >= 16:
            _functions.clear()
        _functions[function] = call
    batch = pickle.loads(items)
    started = time.perf_counter()
    cpu = time.process_time()
    answers: list[tuple[int, Any]] = []
    stop = _stop
    for index, item in enumerate(batch):
        if stop is not None and stop.value:
            answers.append((_SKIPPED, None))
            continue
        if record is not None:
            array[at + 2] = index
        try:
            result = call(item)
            if type(result) is GeneratorType:
                answers.append((_GENERATOR, _drain(result)))
                continue
            if type(result) is CoroutineType:
                result.close()  # (else "never awaited" in the worker)
                raise coroutine_returned(result)
            answers.append((_OK, result))
        except Exception as exc:
            answers.append((_ERROR, _portable(exc)))
    if record is not None:
        array[at + 2] = -1
    work = time.perf_counter() - started
    cpu = time.process_time() - cpu
    loaded = started - loading
    try:
        return pickle.dumps((answers, work, cpu, loaded), PROTOCOL)
    except Exception:
        for index, (_, value) in enumerate(answers):
            try:
                pickle.dumps(value, PROTOCOL)
            except Exception as exc:
                answers[index] = (_ERROR, unpicklable_result(value, exc))
        return pickle.dumps((answers, work, cpu, loaded), PROTOCOL)


def _drain(gen: Generator[Any, Any, Any]) -> tuple[list[Any], Exception | None]:
    """A generator's values, to its end or its error (then the values before it stay)."""
    values: list[Any] = []
    try:
        for value in gen:
            values.append(value)
    except Exception as exc:
        return values, _portable(exc)
    return values, None


def _portable(exc: Exception) -> Exception:
    """``exc`` with the worker's traceback as a note, or a stand-in if it cannot travel."""
    where = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    try:
        exc.add_note(f"conveyor: in a worker process, at\n{where}")
        pickle.loads(pickle.dumps(exc, PROTOCOL))
    except Exception:
        stand_in = RuntimeError(f"{type(exc).__qualname__}: {exc}")
        stand_in.add_note(
            f"conveyor: the worker's exception could not be pickled, so it is reported as "
            f"a RuntimeError; raised at\n{where}"
        )
        return stand_in
    return exc
