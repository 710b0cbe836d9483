"""Ctrl-C in synchronous code: ``pipeline.run``, ``pipeline.iter`` and ``conveyor.run``.

Each test runs a small script in a child process, with slow calls (``CALL`` seconds) on
``process:2`` or ``thread:4``, and interrupts it with SIGINT once every worker is inside a
call. The first SIGINT waits for the calls running now and never starts a queued one; a
second stops waiting at once: worker processes terminated, threads told to take no more
work and named in a note on the ``KeyboardInterrupt``. The child prints what is left
(threads, child processes) after catching the ``KeyboardInterrupt``, and the parent checks
that the worker processes are gone. Linux only (forkserver pools, /proc).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SIGINT to a child, /proc"
)

ROOT = Path(__file__).resolve().parents[1]
CALL = 4.0  # seconds of one call
LONG_CALL = 30.0  # (a second Ctrl-C does not wait for it: long, so it is surely under way)
MARGIN = 3.0  # generous: CI machines are slow
WORKERS = {"process:2": 2, "thread:4": 4}

CHILD = """
import asyncio, json, multiprocessing, os, sys, threading, time

if sys.argv[3] == "asyncio":
    sys.modules["uvloop"] = None  # (conveyor then runs on asyncio's own loop)

import conveyor
from conveyor import single_task


def slow(seconds):
    # (one write: the lines of threads printing at once do not interleave)
    os.write(1, f"started {os.getpid()} {threading.current_thread().name}\\n".encode())
    time.sleep(seconds)
    return seconds


async def collect(pipeline, items):
    return await pipeline(items).collect()


async def stubborn(seconds):
    # No conveyor here: a main task that waits again when cancelled.
    slow(0)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        await asyncio.sleep(seconds)


if __name__ == "__main__":
    executor, front, seconds = sys.argv[1], sys.argv[2], float(sys.argv[4])
    task = single_task(executor=executor)(slow)
    items = [seconds] * 40
    notes = []
    try:
        if front == "run":
            task.run(items)
        elif front == "iter":
            for _ in task.iter(items):
                pass
        elif front == "stubborn":
            conveyor.run(stubborn(seconds))
        else:
            conveyor.run(collect(task, items))
        outcome = "finished"
    except KeyboardInterrupt as exc:
        outcome = "KeyboardInterrupt"
        notes = getattr(exc, "__notes__", [])
    print("report " + json.dumps({
        "outcome": outcome,
        "notes": notes,
        "threads": [t.name for t in threading.enumerate() if t is not threading.main_thread()],
        "children": [p.pid for p in multiprocessing.active_children()],
    }), flush=True)
"""


class Child:
    """The script in a child process, its lines read as they come."""

    def __init__(
        self, tmp_path: Path, executor: str, front: str, loop: str, call: float = CALL
    ) -> None:
        script = tmp_path / "interrupted.py"
        script.write_text(CHILD)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            [sys.executable, str(script), executor, front, loop, str(call)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.started: list[str] = []
        self.report: dict[str, Any] | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.put(line)
        self.lines.put(None)

    def wait_for_calls(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.started) < count:
            self._take(deadline - time.monotonic())

    def _take(self, timeout: float) -> bool:
        try:
            line = self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the child is stuck; started: {self.started}") from None
        if line is None:
            return False
        if line.startswith("started "):
            self.started.append(line)
        elif line.startswith("report "):
            self.report = json.loads(line.removeprefix("report "))
        return True

    def interrupt(self) -> float:
        self.process.send_signal(signal.SIGINT)
        return time.monotonic()

    def end(self, timeout: float = 60) -> float:
        """Wait for the child's exit (and its output's end): when it exited."""
        self.process.wait(timeout)
        ended = time.monotonic()
        deadline = ended + 10
        while self._take(deadline - time.monotonic()):
            pass
        return ended

    def worker_pids(self) -> set[int]:
        return {int(line.split()[1]) for line in self.started} - {self.process.pid}


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for its reaper counts)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def assert_nothing_left(child: Child) -> None:
    assert child.report is not None, "the child did not report"
    assert child.report["outcome"] == "KeyboardInterrupt"
    assert child.report["children"] == []
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in child.worker_pids()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(pid) for pid in child.worker_pids()), child.worker_pids()


@pytest.mark.parametrize(
    ("executor", "front"),
    [
        ("process:2", "run"),
        ("process:2", "iter"),
        ("process:2", "conveyor.run"),
        ("thread:4", "run"),
        ("thread:4", "iter"),
    ],
)
def test_the_first_ctrl_c_waits_for_the_calls_running_now_only(
    tmp_path: Path, executor: str, front: str
) -> None:
    child = Child(tmp_path, executor, front, "default")
    child.wait_for_calls(WORKERS[executor])
    first_call = time.monotonic()
    interrupted = child.interrupt()
    ended = child.end()
    # The calls under way end CALL seconds after they started; a queued chunk would take
    # another CALL seconds (before the fix: 8 s for 4 s calls on process:2).
    assert ended - interrupted < CALL - (interrupted - first_call) + MARGIN
    assert len(child.started) == WORKERS[executor], child.started  # no queued call started
    assert_nothing_left(child)
    assert child.report is not None and child.report["threads"] == []
    assert child.report["notes"] == []


@pytest.mark.parametrize(
    ("executor", "front", "loop"),
    [
        ("process:2", "run", "default"),
        ("process:2", "iter", "default"),
        ("process:2", "conveyor.run", "asyncio"),
        ("thread:4", "run", "default"),
        ("thread:4", "iter", "default"),
        ("thread:4", "conveyor.run", "asyncio"),
    ],
)
def test_a_second_ctrl_c_stops_waiting_and_leaves_nothing_running(
    tmp_path: Path, executor: str, front: str, loop: str
) -> None:
    child = Child(tmp_path, executor, front, loop, LONG_CALL)
    child.wait_for_calls(WORKERS[executor])
    child.interrupt()
    time.sleep(0.5)  # (the run is waiting for its calls)
    interrupted = child.interrupt()
    ended = child.end()
    assert ended - interrupted < 1 + MARGIN
    assert len(child.started) == WORKERS[executor], child.started
    assert_nothing_left(child)
    report = child.report
    assert report is not None
    if executor == "process:2":
        assert report["threads"] == [] and report["notes"] == []
    else:
        # Python cannot stop a thread inside a call: it takes no more work, exits when its
        # call returns, and the KeyboardInterrupt names it. No other thread is left.
        [note] = report["notes"]
        assert "4 of its thread(s) were still inside a call" in note
        assert report["threads"] and all(name in note for name in report["threads"])
        assert all(name.startswith("conveyor-1_") for name in report["threads"])


def test_without_a_pool_a_second_ctrl_c_raises_at_once(tmp_path: Path) -> None:
    """Nothing of conveyor's to stop: ``conveyor.run`` does what ``asyncio.run`` does."""
    child = Child(tmp_path, "thread:4", "stubborn", "default", LONG_CALL)
    child.wait_for_calls(1)
    child.interrupt()
    time.sleep(0.5)  # (the main task waits again)
    interrupted = child.interrupt()
    ended = child.end()
    assert ended - interrupted < 1 + MARGIN
    assert child.report is not None and child.report["outcome"] == "KeyboardInterrupt"
