"""Functions for tests on process executors and Dask: workers import them by name.

They live in a module of their own (not in a test module) so that importing them in a
worker process runs no test code. State that must outlive one call -- "fail the first
time", "kill this worker once" -- is kept in marker files, since every call may run in
another process.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any


def square(x: int) -> int:
    return x * x


def spin(x: int, seconds: float = 0.001) -> int:
    """About ``seconds`` of pure-Python CPU work."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return x


def spin_pid(x: int, seconds: float = 0.002) -> int:
    spin(x, seconds)
    return os.getpid()


def nap(x: int, seconds: float = 0.05) -> int:
    time.sleep(seconds)
    return x


def fail_on_multiples_of_three(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"bad item {x}")
    return x


def fail_once(x: int, folder: str) -> int:
    """Fails the first call for each item, then succeeds (a marker file per item)."""
    marker = Path(folder) / f"seen-{x}"
    if not marker.exists():
        marker.touch()
        raise ConnectionError(f"transient failure on {x}")
    return x


def die_once(x: int, folder: str, at: int) -> int:
    """Kills its own worker process on item ``at``, the first time only."""
    marker = Path(folder) / "died"
    if x == at and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def pid(_: Any) -> int:
    return os.getpid()


def up_to(n: int) -> Any:
    yield from range(n)


def total(batch: list[int]) -> list[int]:
    return [sum(batch)] * len(batch)


def returns_a_lock(_: Any) -> Any:
    import threading

    return threading.Lock()


class Unpicklable(Exception):
    """An exception whose constructor needs two arguments: pickle cannot rebuild it."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raises_unpicklable(x: int) -> int:
    raise Unpicklable(x, x)


def sha256_file(path: Path) -> tuple[Path, str, int]:
    """The file's SHA-256 and size, read a block at a time (tests/test_files.py)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while block := file.read(1 << 16):
            digest.update(block)
            size += len(block)
    return path, digest.hexdigest(), size


from conveyor import single_task  # noqa: E402  (below: a task decorated in place)


@single_task(executor="process:2")
def decorated_cube(x: int) -> int:
    """The name ``decorated_cube`` holds the task: workers still find its function."""
    return x**3


def spin_into(x: int, seconds: float, *, box: list[int]) -> int:
    """``spin``, then record the item in the run's resource ``box`` (tests/test_auto.py)."""
    spin(x, seconds)
    box.append(x)
    return x


def die_at(at: int | tuple[int, ...], how: str = "exit", once_file: str | None = None) -> Any:
    """A function of one item that kills its own worker process on item ``at`` and
    returns any other item: ``how`` is "exit" (``os._exit(1)``), "sigkill" or "segfault"
    (reading address 0); with
    ``once_file``, only the first time (a marker file), so that a retry of the item
    succeeds; ``at=-1`` kills on every item, a tuple on each of its items. Picklable (a
    partial of ``kill_at``)."""
    import functools

    return functools.partial(kill_at, at=at, how=how, once_file=once_file)


def kill_at(
    x: int, at: int | tuple[int, ...], how: str = "exit", once_file: str | None = None
) -> int:
    """See :func:`die_at`."""
    culprit = x in at if isinstance(at, tuple) else x == at or at == -1
    if culprit and (once_file is None or not Path(once_file).exists()):
        if once_file is not None:
            Path(once_file).touch()
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "segfault":
            import ctypes
            import faulthandler

            faulthandler.disable()  # (no traceback on stderr: the test reads the exit)
            ctypes.string_at(0)
        os._exit(1)
    return x


def count_then_fail(n: int) -> Any:
    """Yields 0, 1, ... and raises ValueError after ``n`` values."""
    yield from range(n)
    raise ValueError(f"gave out after {n}")


async def _double(x: int) -> int:
    return 2 * x


def returns_a_coroutine(x: int) -> Any:
    return _double(x)


def kill_in_batch(batch: list[int]) -> list[int]:
    """A batch function whose worker dies on any batch holding 13 (``die_at`` for batches)."""
    if 13 in batch:
        os.kill(os.getpid(), signal.SIGKILL)
    return batch


def fail_on_short_block(block: bytes) -> bytes:
    """Fails on a block whose first byte is a multiple of 5 (blocks of bytes, weighed)."""
    if block[0] % 5 == 0:
        raise ValueError(f"bad block {block[0]}")
    return block


def sleep_for(seconds: float) -> float:
    """Sleeps as many seconds as the item says; returns it."""
    time.sleep(seconds)
    return seconds


def squares(batch: list[int]) -> list[int]:
    """An element-wise batch function: each item's own result, in the batch's order."""
    return [x * x for x in batch]
