"""The PostgreSQL checkpoint store (``Checkpoint("postgresql://...", name=...)``), on a
throwaway server the test session starts (``postgres_server``; skipped, saying why,
where PostgreSQL's binaries are missing): records, resume, failures, checkpoints by name
in one database, one run at a time by an advisory lock that the server lets go when the
run's process is killed, and the error naming the extra when asyncpg is missing."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import Checkpoint, CheckpointBusy, single_task

calls: list[int] = []


@single_task
def double(x: int) -> int:
    calls.append(x)
    return x * 2


def boom_on_7(x: int) -> int:
    if x % 10 == 7:
        raise ValueError(f"no {x}")
    return x


@pytest.fixture
def fresh(postgres_url: str, request: pytest.FixtureRequest) -> Checkpoint:
    """A checkpoint of its own (named after the test), empty."""
    cp = Checkpoint(postgres_url, name=request.node.name)
    cp.reset()
    calls.clear()
    return cp


async def test_records_and_resume(fresh: Checkpoint) -> None:
    pipeline = conveyor.Pipeline([double]).with_context(max_in_flight=16).with_checkpoint(fresh)
    assert await pipeline(range(100)).collect() == [x * 2 for x in range(100)]
    summary = fresh.summary()
    assert (summary.done, summary.failed, summary.last_run_outcome) == (100, 0, "finished")
    assert summary.last_run_started is not None and summary.last_run_ended is not None
    calls.clear()
    stream = pipeline(range(150))
    assert await stream.collect() == [x * 2 for x in range(100, 150)]
    assert calls == list(range(100, 150))  # no call for the 100 done earlier
    assert stream.stats.done_earlier == 100
    assert (fresh.summary().done, fresh.summary().last_run_skipped) == (150, 100)


async def test_failures_and_retry_failed(fresh: Checkpoint) -> None:
    flaky = conveyor.Pipeline([single_task(on_error="emit")(boom_on_7)])
    await flaky.with_checkpoint(fresh)(range(20)).collect()
    assert fresh.failures() == {"int:7": ("ValueError", "no 7"), "int:17": ("ValueError", "no 17")}
    assert await flaky.with_checkpoint(fresh)(range(20)).collect() == []  # skipped too
    fixed = conveyor.Pipeline([double]).with_checkpoint(fresh, retry_failed=True)
    assert await fixed(range(20)).collect() == [14, 34]
    assert fresh.failures() == {}
    assert fresh.summary().done == 20


async def test_names_share_a_database(postgres_url: str) -> None:
    a = Checkpoint(postgres_url, name="shared-a")
    b = Checkpoint(postgres_url, name="shared-b")
    a.reset()
    b.reset()
    await conveyor.Pipeline([double]).with_checkpoint(a)(range(10)).collect()
    assert (a.summary().done, b.summary().done) == (10, 0)
    async with conveyor.Pipeline([double]).with_checkpoint(a)(range(10, 20)) as first:
        assert await anext(first) == 20
        # another name is another checkpoint: not busy
        assert await conveyor.Pipeline([double]).with_checkpoint(b)(range(3)).collect() == [0, 2, 4]
    b.reset()
    assert a.summary().done >= 10 and b.summary().done == 0


async def test_one_run_per_name(fresh: Checkpoint, postgres_url: str) -> None:
    pipeline = conveyor.Pipeline([double]).with_checkpoint(fresh)
    async with pipeline(range(100)) as first:
        assert await anext(first) == 0
        with pytest.raises(CheckpointBusy, match="in use by another run"):
            await anext(pipeline(range(5)))
        with pytest.raises(CheckpointBusy):
            fresh.reset()
        same = Checkpoint(postgres_url, name=fresh.store.name)  # type: ignore[attr-defined]
        with pytest.raises(CheckpointBusy):
            await anext(conveyor.Pipeline([double]).with_checkpoint(same)(range(5)))
    assert fresh.summary().last_run_outcome in {"closed", "failed"}
    fresh.reset()
    assert await pipeline(range(3)).collect() == [0, 2, 4]  # free again


HOLDER = """
import asyncio, sys
import conveyor
from conveyor import Checkpoint, single_task

@single_task
async def slow(x):
    if x == 3:
        print("holding", flush=True)
    await asyncio.sleep(0.05)
    return x

cp = Checkpoint(sys.argv[1], name=sys.argv[2])
asyncio.run(conveyor.Pipeline([slow]).with_checkpoint(cp)(range(100_000)).collect())
"""


def test_sigkill_lets_the_lock_go(postgres_url: str, tmp_path: Path) -> None:
    """A run's process killed with SIGKILL: the server ends its session, and with it the
    advisory lock; the next run takes the checkpoint, and resumes."""
    name = "sigkill-lock"
    cp = Checkpoint(postgres_url, name=name)
    cp.reset()
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(HOLDER))
    env = {**os.environ, "PYTHONPATH": str(Path(conveyor.__file__).parent.parent)}
    child = subprocess.Popen(
        [sys.executable, str(script), postgres_url, name], env=env, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"holding\n"
        pipeline = conveyor.Pipeline([double]).with_checkpoint(cp)
        with pytest.raises(CheckpointBusy):
            pipeline.run(range(3))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while True:  # (the server notices the closed socket in a moment)
        try:
            results = pipeline.run(range(3))
            break
        except CheckpointBusy:
            assert time.monotonic() < deadline, "the lock was not let go after SIGKILL"
            time.sleep(0.05)
    assert results == [0, 2, 4]
    summary = cp.summary()
    assert summary.last_run_outcome == "finished" and summary.done == 3


def test_summary_inside_a_running_loop(fresh: Checkpoint) -> None:
    """``summary()``, ``failures()`` and ``reset()`` stay sync, and work inside a loop."""

    async def main() -> Any:
        return fresh.summary(), fresh.failures()

    summary, failures = asyncio.run(main())
    assert summary == conveyor.CheckpointSummary(0, 0, None, None, None, 0)
    assert failures == {}


def test_url_forms_and_repr(postgres_url: str) -> None:
    secret = postgres_url.replace("postgres@", "postgres:hunter2@")
    cp = Checkpoint(secret.replace("postgresql://", "postgres://"), name="forms")
    assert "hunter2" not in repr(cp) and "***" in repr(cp)
    cp.reset()  # (trust authentication: the password is not checked)
    assert cp.summary().done == 0
    with pytest.raises(TypeError, match="name="):
        Checkpoint("file.db", name="x")


def test_missing_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # (import asyncpg fails)
    monkeypatch.delitem(sys.modules, "conveyor._stores.postgres", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'conveyor\[postgres\]'"):
        Checkpoint("postgresql://nowhere/db")
    monkeypatch.undo()
    importlib.import_module("conveyor._stores.postgres")


def test_the_docs_postgresql_blocks(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/durable-runs.md's PostgreSQL blocks (``<!-- no-test -->`` there: they need a
    server) run against this session's server, as ``DATABASE_URL``."""
    from test_docs import ROOT, extract_blocks

    blocks = [
        block
        for block in extract_blocks(ROOT / "docs" / "durable-runs.md")
        if block.language == "python" and block.skipped and "DATABASE_URL" in block.code
    ]
    assert len(blocks) == 2
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    for block in blocks:
        exec(compile(block.code, block.id, "exec"), {"__name__": "__main__"})
    assert Checkpoint(postgres_url, name="scores").summary().done == 10_000


def test_an_unreachable_database_fails_the_run_at_its_start() -> None:
    """``Checkpoint(url)`` connects to nothing; the run does, at its start, and fails
    there with the connection's error, before any call (no server needed)."""
    from postgres_server import free_port

    cp = Checkpoint(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    calls.clear()
    with pytest.raises(OSError):
        conveyor.Pipeline([double]).with_checkpoint(cp).run(range(3))
    assert calls == []
    assert not any(t.name == "conveyor-checkpoint" for t in threading.enumerate())
