"""Crash and resume, for real: a child process runs a 20,000-item pipeline (an async
stage, a batch stage on threads, a batch sink into SQLite) on a checkpoint and is killed
with SIGKILL at random moments; the parent starts it again until it completes.

The sink writes the exactly-once way (docs/durable-runs.md): ``INSERT ... ON CONFLICT
(item) DO NOTHING`` on the item's natural key, so a row repeated after a crash is not
written twice; in the same transaction it logs its call (a plain ``INSERT`` into
``calls``), and the async stage logs each of its calls to a file (an unbuffered
``os.write``, which SIGKILL does not lose). Afterwards:

- the sink's table holds every input item exactly once;
- each restart repeated at most the window's items (``max_in_flight``), at the sink and
  at the first stage: what was in flight at the crash, never more;
- the checkpoint holds every item done.

Against the SQLite store (50 kills) and the PostgreSQL store (10 kills, on the test
session's throwaway server: skipped where PostgreSQL's binaries are missing).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

import conveyor
from conveyor import Checkpoint

N = 20_000
WINDOW = 16

CHILD = """
import asyncio, os, sqlite3, sys
import conveyor
from conveyor import Checkpoint, batch_task, single_task

sink_path, where, name, attempt, log_path = sys.argv[1:6]
attempt = int(attempt)
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
db = sqlite3.connect(sink_path, timeout=30.0, isolation_level=None)
db.execute("PRAGMA synchronous=NORMAL")

@single_task
async def fetch(x):
    os.write(log, b"%d %d\\n" % (x, attempt))  # (this call, logged before it returns)
    await asyncio.sleep(0)
    return x

@batch_task(max_size=8, executor="thread")
def score(batch):
    return [(x, x * x) for x in batch]

@batch_task(max_size=8)
def sink(batch):
    db.execute("BEGIN IMMEDIATE")
    # exactly once: a row already written (before a crash) is not written again
    db.executemany(
        "INSERT INTO rows (item, square) VALUES (?, ?) ON CONFLICT (item) DO NOTHING", batch
    )
    db.executemany("INSERT INTO calls VALUES (?, ?)", [(x, attempt) for x, _ in batch])
    db.execute("COMMIT")
    return None

checkpoint = Checkpoint(where) if name == "-" else Checkpoint(where, name=name)
pipeline = (fetch | score | sink).with_context(max_in_flight=WINDOW)
asyncio.run(pipeline.with_checkpoint(checkpoint)(range(N)).collect())
db.close()
print("complete")
"""


def crash_until_complete(tmp_path: Path, where: str, name: str, kills: int) -> None:
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(CHILD).replace("WINDOW", str(WINDOW)).replace("(N)", f"({N})")
    )
    sink, log = tmp_path / "sink.db", tmp_path / "calls.log"
    with contextlib.closing(sqlite3.connect(sink)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE rows (item INTEGER PRIMARY KEY, square INTEGER NOT NULL)")
        db.execute("CREATE TABLE calls (item INTEGER NOT NULL, attempt INTEGER NOT NULL)")
    env = {**os.environ, "PYTHONPATH": str(Path(conveyor.__file__).parent.parent)}
    rng = random.Random(20)
    # Most kills when the sink reaches a random count (so they fall across the whole
    # run, whatever the machine's speed), a moment later; every fifth at a random
    # moment of the child's start (importing, opening the checkpoint).
    targets = sorted(rng.sample(range(100, N - 2000), kills))
    killed = 0
    started = time.monotonic()
    with contextlib.closing(sqlite3.connect(sink, timeout=30.0)) as watch:
        for attempt in range(kills + 5):
            child = subprocess.Popen(
                [sys.executable, str(script), str(sink), where, name, str(attempt), str(log)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            if killed < kills:
                if killed % 5 == 4:
                    time.sleep(rng.random() * 0.3)
                else:
                    target = targets[killed]
                    while child.poll() is None:
                        (count,) = watch.execute("SELECT count(*) FROM rows").fetchone()
                        if count >= target:
                            break
                        time.sleep(0.002)
                    time.sleep(rng.random() * 0.005)
                if child.poll() is None:
                    child.send_signal(signal.SIGKILL)
                    killed += 1
            out, err = child.communicate(timeout=120)
            if child.returncode == 0:
                assert b"complete" in out
                break
            assert child.returncode == -signal.SIGKILL, err.decode()
        else:
            pytest.fail("the child never completed")
        elapsed = time.monotonic() - started
        assert killed == kills, "a child completed before it was killed"
        rows = watch.execute("SELECT count(*), count(DISTINCT item) FROM rows").fetchone()
        items = {item for (item,) in watch.execute("SELECT item FROM rows")}
        sink_calls = watch.execute("SELECT item, attempt FROM calls").fetchall()
    assert rows == (N, N) and items == set(range(N))  # every item, exactly once

    def repeats(calls: list[tuple[int, int]]) -> list[int]:
        """Per attempt, how many of its calls were on items called by an earlier one."""
        by_attempt: dict[int, set[int]] = defaultdict(set)
        for item, attempt in calls:
            by_attempt[attempt].add(item)
        seen: set[int] = set()
        counts = []
        for attempt in sorted(by_attempt):
            counts.append(len(by_attempt[attempt] & seen))
            seen |= by_attempt[attempt]
        return counts

    first_calls = [
        (int(item), int(attempt))
        for item, attempt in (line.split() for line in log.read_text().splitlines())
    ]
    at_sink, at_first = repeats(sink_calls), repeats(first_calls)
    assert max(at_sink) <= WINDOW and max(at_first) <= WINDOW, (at_sink, at_first)
    assert sum(at_first) > 0  # (the kills did catch items in flight)
    summary = Checkpoint(where).summary() if name == "-" else Checkpoint(where, name=name).summary()
    assert (summary.done, summary.failed, summary.last_run_outcome) == (N, 0, "finished")
    print(
        f"{kills} kills, {attempt + 1} runs in {elapsed:.1f} s; repeated per restart: "
        f"max {max(at_sink)} at the sink, {max(at_first)} at the first stage "
        f"(window {WINDOW}); in all {sum(at_sink)} and {sum(at_first)}"
    )


def test_sigkill_50_times_sqlite(tmp_path: Path) -> None:
    crash_until_complete(tmp_path, str(tmp_path / "checkpoint.db"), "-", kills=50)


def test_sigkill_10_times_postgres(tmp_path: Path, postgres_url: str) -> None:
    Checkpoint(postgres_url, name="crash").reset()
    crash_until_complete(tmp_path, postgres_url, "crash", kills=10)
