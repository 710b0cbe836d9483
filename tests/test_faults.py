"""Fault injection on process pools: workers that die, and what happens to every item.

A worker killed at one culprit item (``os._exit(1)``, SIGKILL or a segfault:
``workers.die_at``) in a run of 600 items on ``process:2``: only the culprit fails, under
its task's policy, with an error naming it and how its worker died; every other item is
delivered exactly once and counted as no retry; no worker process outlives the run.
Also: a batch that kills its worker is split until the culprit is alone, a function that
dies once recovers with retries, one that kills every worker stops after a bounded
number of pool restarts, a user's pool that breaks stops the run with the fix, a
generator on processes that fails midway behaves as inline, and a coroutine returned in
a worker is closed there.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import workers

from conveyor import Failure, batch_task, single_task
from conveyor._engine._deaths import RESTARTS, PoolGaveUp, WorkerDied

N, CULPRIT = 600, 300
TESTS = Path(__file__).parent
DIED = {
    "exit": "died (exit code 1)",
    "sigkill": "died (killed by SIGKILL)",
    "segfault": "died (killed by SIGSEGV)",
}


@pytest.fixture(autouse=True)
def no_children() -> Any:
    yield
    assert multiprocessing.active_children() == []  # (joins the exited ones)


def killer(how: str, policy: str, attempts: int, once_file: str | None = None) -> Any:
    return single_task(
        executor="process:2",
        on_error=policy,
        retry_attempts=attempts,
        retry_delay=0,
        task_name="killer",
    )(workers.die_at(CULPRIT, how, once_file))


@pytest.mark.parametrize("attempts", [1, 3])
@pytest.mark.parametrize("how", ["exit", "sigkill"])
async def test_fail_names_the_culprit_and_how_its_worker_died(how: str, attempts: int) -> None:
    stream = killer(how, "fail", attempts)(range(N))
    with pytest.raises(WorkerDied) as caught:
        await stream.collect()
    assert f"the worker process running item {CULPRIT} {DIED[how]}" in str(caught.value)
    assert f"conveyor: raised by task 'killer' on {CULPRIT}" in caught.value.__notes__
    [stage] = stream.stats.stages
    assert (stage.failed, stage.retried) == (1, attempts - 1)  # the culprit's alone


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
@pytest.mark.parametrize("attempts", [1, 3])
@pytest.mark.parametrize("how", ["exit", "sigkill"])
async def test_skip_item_loses_the_culprit_alone(how: str, attempts: int, mode: str) -> None:
    stream = killer(how, "skip_item", attempts).with_execution_mode(mode)(range(N))
    out = await stream.collect()
    expected = [x for x in range(N) if x != CULPRIT]
    assert (out if mode == "ordered" else sorted(out)) == expected  # each exactly once
    [stage] = stream.stats.stages
    assert (stage.skipped, stage.retried, stage.failed) == (1, attempts - 1, 0)


@pytest.mark.parametrize(
    ("how", "attempts"), [("exit", 1), ("exit", 3), ("sigkill", 1), ("sigkill", 3), ("segfault", 1)]
)
async def test_emit_gives_one_failure_for_the_culprit(how: str, attempts: int) -> None:
    stream = killer(how, "emit", attempts)(range(N))
    out = await stream.collect()
    [failure] = [r for r in out if isinstance(r, Failure)]
    assert failure.item == CULPRIT and failure.attempts == attempts
    assert isinstance(failure.exception, WorkerDied)
    assert isinstance(failure.exception, concurrent.futures.process.BrokenProcessPool)
    assert f"running item {CULPRIT} {DIED[how]}" in str(failure.exception)
    assert out == [failure if x == CULPRIT else x for x in range(N)]
    [stage] = stream.stats.stages
    assert (stage.emitted, stage.retried) == (1, attempts - 1)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
async def test_a_function_that_dies_once_recovers_with_retries(tmp_path: Path, how: str) -> None:
    once = str(tmp_path / "died")
    stream = killer(how, "fail", 3, once_file=once)(range(N))
    assert await stream.collect() == list(range(N))
    assert Path(once).exists()
    [stage] = stream.stats.stages
    assert (stage.retried, stage.failed) == (1, 0)  # the culprit's one retry, nothing else


async def test_innocents_on_a_broken_pool_are_not_retries(tmp_path: Path) -> None:
    """Slow items: both workers are mid-chunk when one dies, so the other worker's items
    are lost with the pool; they are sent again, never counted as retried or failed."""
    task = single_task(executor="process:2", on_error="emit", chunk_size=4)(
        workers.die_at(9, "sigkill")
    )
    slow = single_task(executor="process:2", chunk_size=4)(workers.nap).with_inputs(0.01)
    stream = (slow | task)(range(40))
    out = await stream.collect()
    assert Counter(r.item if isinstance(r, Failure) else r for r in out) == Counter(range(40))
    assert [r.item for r in out if isinstance(r, Failure)] == [9]
    assert [(s.retried, s.emitted) for s in stream.stats.stages] == [(0, 0), (0, 1)]


async def test_a_batch_that_kills_its_worker_is_split_until_the_culprit_is_alone() -> None:
    task = batch_task(max_size=8, executor="process:2", on_error="skip_item")(workers.kill_in_batch)
    stream = task(range(64))
    assert await stream.collect() == [x for x in range(64) if x != 13]
    [stage] = stream.stats.stages
    assert (stage.skipped, stage.retried) == (1, 0)


async def test_the_bound_is_on_breaks_in_a_row_not_in_all() -> None:
    """Eight culprits spread over a run: eight breaks, each followed by chunks that
    complete, so the run goes on: each culprit skipped alone, nothing else lost."""
    culprits = tuple(range(100, 1700, 200))
    task = single_task(executor="process:2", on_error="skip_item")(
        workers.die_at(culprits, "sigkill")
    )
    stream = task(range(1600))
    assert await stream.collect() == [x for x in range(1600) if x not in culprits]
    assert stream.stats.stages[0].skipped == len(culprits) > RESTARTS


async def test_a_worker_killed_from_outside_fails_at_most_the_item_it_was_running() -> None:
    """As the out-of-memory killer would: the item the worker was running (if any) is
    blamed; every other item is delivered once."""
    task = single_task(executor="process:2", on_error="emit", chunk_size=1)(workers.nap)
    stream = task.with_inputs(0.01).with_execution_mode("as_completed")(range(100))
    out: list[Any] = []
    async with stream:
        async for result in stream:
            out.append(result)
            if len(out) == 20:
                victim = multiprocessing.active_children()[0]
                os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    assert Counter(r.item if isinstance(r, Failure) else r for r in out) == Counter(range(100))
    failures = [r for r in out if isinstance(r, Failure)]
    assert len(failures) <= 1
    for failure in failures:
        assert f"running item {failure.item} died (killed by SIGKILL)" in str(failure.exception)


async def test_a_function_that_kills_every_worker_stops_at_the_bound() -> None:
    task = single_task(executor="process:2", on_error="skip_item", task_name="killer")(
        workers.die_at(-1, "sigkill")
    )
    with pytest.raises(PoolGaveUp) as caught:
        await task(range(200)).collect()
    message = str(caught.value)
    assert message.startswith("task 'killer': its worker processes died")
    assert f"died {RESTARTS + 1} times in a row" in message
    assert f"at most {RESTARTS} times in a row" in message
    assert "the worker running item " in message and "(killed by SIGKILL)" in message


async def test_a_users_pool_that_breaks_stops_the_run_with_the_fix() -> None:
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        task = single_task(executor=pool, on_error="skip_item")(workers.die_at(CULPRIT, "sigkill"))
        with pytest.raises(PoolGaveUp) as caught:
            await task(range(N)).collect()
    message = str(caught.value)
    assert "the process pool given as executor= (ProcessPoolExecutor) is broken" in message
    assert "cannot replace a pool it does not own" in message
    assert "executor='process' or 'process:N'" in message


# -- generators and coroutines -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ordered", "as_completed"])
@pytest.mark.parametrize("policy", ["emit", "skip_item"])
async def test_a_generator_failing_midway_behaves_as_inline(mode: str, policy: str) -> None:
    def run(executor: str | None) -> Any:
        task = single_task(executor=executor, on_error=policy)(workers.count_then_fail)
        return task.with_execution_mode(mode)([3, 0, 2]).collect()

    inline, on_processes = await run(None), await run("process:2")

    def shown(results: list[Any]) -> list[Any]:
        return [
            (r.item, repr(r.exception), r.task_name, r.attempts) if isinstance(r, Failure) else r
            for r in results
        ]

    if mode == "as_completed":
        assert sorted(shown(on_processes), key=str) == sorted(shown(inline), key=str)
        return
    assert shown(on_processes) == shown(inline)
    if policy == "emit":  # the values before each error are kept
        assert [r if isinstance(r, int) else r[0] for r in shown(inline)] == [
            *(0, 1, 2, "<output 3 of a generator>"),
            "<output 0 of a generator>",
            *(0, 1, "<output 2 of a generator>"),
        ]
    else:
        assert shown(inline) == [0, 1, 2, 0, 1]


async def test_a_generator_failing_midway_fails_the_run_as_inline() -> None:
    task = single_task(executor="process:2")(workers.count_then_fail)
    with pytest.raises(ValueError, match="gave out after 2") as caught:
        await task([2]).collect()
    assert "conveyor: raised by task 'count_then_fail' on '<output 2 of a generator>'" in (
        caught.value.__notes__
    )


COROUTINE = """
import workers
from conveyor import Failure, batch_task, single_task

if __name__ == "__main__":
    task = single_task(executor="process:1", on_error="emit")(workers.returns_a_coroutine)
    [failure] = task.run([1])
    assert isinstance(failure, Failure) and isinstance(failure.exception, TypeError)
    print(failure.exception)
"""


def test_a_coroutine_returned_in_a_worker_is_closed_there(tmp_path: Path) -> None:
    """In a fresh interpreter, whose forkserver (and so every worker) writes to a pipe
    this test reads: a forkserver started earlier in the session would write elsewhere."""
    script = tmp_path / "coroutine.py"
    script.write_text(COROUTINE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "returned a coroutine (_double) in a worker process" in done.stdout
    assert "never awaited" not in done.stderr and "Warning" not in done.stderr
