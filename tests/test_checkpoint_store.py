"""The checkpoint's store seam and its writer thread: a store of the user's own
(``conveyor.abc.CheckpointStore``, here in memory) records and resumes like the built-in
ones; the writes are made by the session's writer thread, never on the event loop, and
the run reads no input past a window whose group is not committed yet (the crash
bound); groups queued while the writer is busy are merged into one transaction; a store
error fails the run and lets the lock go; the writer is joined when the run is over."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import conveyor
from conveyor import Checkpoint, CheckpointBusy, CheckpointSummary, single_task
from conveyor.abc import CheckpointStore

calls: list[int] = []


@single_task
def double(x: int) -> int:
    calls.append(x)
    return x * 2


class MemoryStore:
    """A checkpoint store in memory: the protocol's smallest implementation."""

    run_class: type[MemoryRun]

    def __init__(self) -> None:
        self.records: dict[str, tuple[str, str] | None] = {}
        self.runs: list[list[Any]] = []  # [started, ended, outcome, skipped]
        self.lock = threading.Lock()
        self.writes: list[tuple[list[str], dict[str, tuple[str, str]]]] = []
        self.threads: set[str] = set()

    def open_run(self, retry_failed: bool) -> MemoryRun:
        if not self.lock.acquire(blocking=False):
            raise CheckpointBusy("in use by another run")
        self.threads.add(threading.current_thread().name)
        skip = {key for key, error in self.records.items() if error is None or not retry_failed}
        self.runs.append([1.0, None, None, 0])
        return self.run_class(self, skip)

    def summary(self) -> CheckpointSummary:
        failed = sum(error is not None for error in self.records.values())
        last = self.runs[-1] if self.runs else [None, None, None, 0]
        return CheckpointSummary(len(self.records) - failed, failed, *last)

    def failures(self) -> dict[str, tuple[str, str]]:
        return {key: error for key, error in self.records.items() if error is not None}

    def reset(self) -> None:
        if not self.lock.acquire(blocking=False):
            raise CheckpointBusy("in use by another run")
        self.records.clear()
        self.runs.clear()
        self.lock.release()


class MemoryRun:
    def __init__(self, store: MemoryStore, skip: set[str]) -> None:
        self.store = store
        self.skip = skip

    def record(self, done: list[str], failed: dict[str, tuple[str, str]]) -> None:
        self.store.threads.add(threading.current_thread().name)
        self.store.writes.append((done, failed))
        self.store.records.update(dict.fromkeys(done))
        self.store.records.update(failed)

    def close(self, outcome: str, done: int, failed: int, skipped: int) -> None:
        self.store.runs[-1][1:] = [2.0, outcome, skipped]
        self.store.lock.release()


class GatedRun(MemoryRun):
    """Each write waits for ``gate`` (or fails with ``error``)."""

    gate = threading.Event()
    entered = threading.Event()  # (a write is waiting for the gate)
    error: BaseException | None = None

    def record(self, done: list[str], failed: dict[str, tuple[str, str]]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        if self.error is not None:
            raise self.error
        super().record(done, failed)


MemoryStore.run_class = MemoryRun


class GatedStore(MemoryStore):
    run_class = GatedRun

    def __init__(self) -> None:
        super().__init__()
        GatedRun.gate = threading.Event()
        GatedRun.entered = threading.Event()
        GatedRun.error = None


class FailsThirdRun(MemoryRun):
    """Its store's third write fails."""

    def record(self, done: list[str], failed: dict[str, tuple[str, str]]) -> None:
        self.store.attempts += 1
        if self.store.attempts == 3:
            raise OSError("disk full")
        super().record(done, failed)


class FailsThirdStore(MemoryStore):
    run_class = FailsThirdRun
    attempts = 0


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


async def test_a_store_of_ones_own(tmp_path: Any) -> None:
    store = MemoryStore()
    assert isinstance(store, CheckpointStore)
    cp = Checkpoint(store)
    pipeline = conveyor.Pipeline([double]).with_context(max_in_flight=8).with_checkpoint(cp)
    assert await pipeline(range(20)).collect() == [x * 2 for x in range(20)]
    assert cp.summary() == CheckpointSummary(20, 0, 1.0, 2.0, "finished", 0)
    calls.clear()
    assert await pipeline(range(25)).collect() == [x * 2 for x in range(20, 25)]
    assert calls == list(range(20, 25))
    assert store.threads == {"conveyor-checkpoint"}  # (never the loop's thread)
    with pytest.raises(TypeError, match="CheckpointStore"):
        Checkpoint(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name="):
        Checkpoint(store, name="x")


async def test_reading_waits_for_the_commit_not_the_loop() -> None:
    """While the writer is stuck on a write, the loop goes on (this test's sleeps run)
    and the run admits nothing past its window: a crash then would repeat at most the
    window."""
    store = GatedStore()
    pipeline = (
        conveyor.Pipeline([double]).with_context(max_in_flight=4).with_checkpoint(Checkpoint(store))
    )
    stream = pipeline(range(100))
    collected = asyncio.ensure_future(stream.collect())
    for _ in range(50):
        await asyncio.sleep(0.002)  # (the loop is free: the write is on the writer thread)
    assert calls == [0, 1, 2, 3]  # the first window, then nothing until it is committed
    assert store.writes == []
    GatedRun.gate.set()
    assert await collected == [x * 2 for x in range(100)]
    assert sorted(key for done, _ in store.writes for key in done) == sorted(
        f"int:{x}" for x in range(100)
    )


async def test_a_store_error_fails_the_run() -> None:
    store = GatedStore()
    GatedRun.error = OSError("disk full")
    GatedRun.gate.set()
    cp = Checkpoint(store)
    pipeline = conveyor.Pipeline([double]).with_context(max_in_flight=4).with_checkpoint(cp)
    with pytest.raises(OSError, match="disk full"):
        await pipeline(range(100)).collect()
    assert len(calls) == 4  # (nothing read past the window that could not be recorded)
    assert cp.summary().last_run_outcome == "failed"
    cp.reset()  # (the lock was let go)
    GatedRun.error = None
    assert await pipeline(range(3)).collect() == [0, 2, 4]
    assert cp.summary().last_run_outcome == "finished"


async def test_a_store_failing_the_last_group() -> None:
    """The last group is written when the run is over (its consumer has every result):
    if that write fails, the run's row says ``failed`` and those items are not recorded
    (the next run repeats them: at most the window); the lock is let go."""
    store = FailsThirdStore()
    cp = Checkpoint(store)
    pipeline = conveyor.Pipeline([double]).with_context(max_in_flight=4).with_checkpoint(cp)
    assert await pipeline(range(10)).collect() == [x * 2 for x in range(10)]
    assert store.attempts == 3
    assert set(store.records) == {f"int:{x}" for x in range(8)}  # (8 and 9: not recorded)
    assert cp.summary().last_run_outcome == "failed"
    cp.reset()  # (the lock was let go)


def test_groups_queued_meanwhile_are_merged() -> None:
    store = GatedStore()
    session = Checkpoint(store).open_session(retry_failed=False)
    first = session.record(["a"], {})
    assert GatedRun.entered.wait(10)  # (the writer is in the first write)
    later = [
        session.record(["b"], {}),
        session.record([], {"c": ValueError("no c")}),
        session.record(["c", "d"], {}),  # (c again: the later state wins)
    ]
    cancelled = session.record(["e"], {})
    assert cancelled.cancel()  # (not taken yet: not written)
    GatedRun.gate.set()
    first.result(10)
    for future in later:
        future.result(10)
    session.close("finished", 4, 0, 0)
    assert store.writes == [(["a"], {}), (["b", "c", "d"], {})]  # one transaction
    assert store.records == dict.fromkeys("abcd")
    assert not any(t.name == "conveyor-checkpoint" for t in threading.enumerate())


def test_a_busy_store_fails_the_session_at_once() -> None:
    store = MemoryStore()
    session = Checkpoint(store).open_session(retry_failed=False)
    try:
        with pytest.raises(CheckpointBusy):
            Checkpoint(store).open_session(retry_failed=False)
    finally:
        session.close("closed", 0, 0, 0)
    assert not any(t.name == "conveyor-checkpoint" for t in threading.enumerate())
