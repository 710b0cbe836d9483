"""``executor="auto"``: the backend chosen by measuring the task's own calls.

The rule (``conveyor._engine._auto.choose``) is tested on numbers; the measurements on
real calls whose nature is unmistakable (a sleep waits, a busy loop computes).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from typing import Any

import pytest
import workers

from conveyor import single_task
from conveyor._engine._auto import CHEAP, choose

MS = 1e-3


def test_the_rule() -> None:
    # cheap: inline, whatever it does
    assert choose(CHEAP / 2, CHEAP / 2, 0.0, multicore=True)[0] == "inline"
    assert choose(CHEAP / 2, 0.0, None, multicore=True)[0] == "inline"
    # waits: thread
    assert choose(10 * MS, 0.1 * MS, 0.01 * MS, multicore=True)[0] == "thread"
    # computes, pays for its transfer: process
    assert choose(1 * MS, 1 * MS, 0.01 * MS, multicore=True)[0] == "process"
    # computes, but the transfer is dear, or it cannot travel, or one core: not a process
    assert choose(0.9 * MS, 0.9 * MS, 0.5 * MS, multicore=True)[0] == "inline"
    assert choose(5 * MS, 5 * MS, None, multicore=True)[0] == "thread"  # off the loop
    assert choose(0.5 * MS, 0.5 * MS, None, multicore=True)[0] == "inline"
    choice, reason = choose(5 * MS, 5 * MS, 0.01 * MS, multicore=False)
    assert choice == "thread" and "one core" in reason


def test_a_cheap_function_stays_inline(caplog: pytest.LogCaptureFixture) -> None:
    task = single_task(executor="auto")(workers.square)
    with caplog.at_level(logging.INFO, logger="conveyor"):
        assert task.run(range(1000)) == [x * x for x in range(1000)]
    assert "chose inline" in repr(task)
    [record] = [r for r in caplog.records if "executor 'auto'" in r.getMessage()]
    assert record.levelno == logging.INFO and "'square'" in record.getMessage()


async def test_a_waiting_function_goes_to_threads() -> None:
    main = threading.get_ident()

    @single_task(executor="auto")
    def blocking(x: int) -> bool:
        time.sleep(0.005)
        return threading.get_ident() != main

    started = time.perf_counter()
    out = await blocking(range(300)).collect()
    elapsed = time.perf_counter() - started
    assert not any(out[:8]) and all(out[20:])  # measured inline, then on threads
    assert "chose thread" in repr(blocking) and "it waits" in repr(blocking)
    assert elapsed < 300 * 0.005 / 3  # 1.5 s inline


async def test_a_computing_function_goes_to_processes() -> None:
    task = single_task(executor="auto")(workers.spin_pid).with_inputs(0.002)
    out = await task(range(200)).collect()
    if "it waits" in repr(task):  # a busy-loop preempted more than half the time
        pytest.skip(f"the machine is too loaded to measure CPU-bound work: {task!r}")
    assert out[:8] == [os.getpid()] * 8  # measured inline
    assert os.getpid() not in out[40:]  # then in worker processes
    assert "chose process" in repr(task) and "it computes" in repr(task)
    assert multiprocessing.active_children() == []  # the pool closed with the run


async def test_a_computing_function_that_cannot_travel_goes_to_threads() -> None:
    main = threading.get_ident()

    def busy(x: int) -> bool:  # a local function: it cannot be pickled
        workers.spin(x, 0.002)
        return threading.get_ident() != main

    task = single_task(executor="auto")(busy)
    out = await task(range(40)).collect()
    assert all(out[10:])
    assert "chose thread" in repr(task) and "cannot be pickled" in repr(task)


async def test_the_choice_follows_the_measurements(caplog: pytest.LogCaptureFixture) -> None:
    @single_task(executor="auto")
    def changes(x: int) -> int:
        if x >= 400:  # from here on it waits
            time.sleep(0.002)
        return x

    with caplog.at_level(logging.INFO, logger="conveyor"):
        assert await changes(range(1200)).collect() == list(range(1200))
    choices = [r.getMessage() for r in caplog.records if "executor 'auto'" in r.getMessage()]
    assert "chose inline" in choices[0] and "chose thread" in choices[-1]


async def test_async_and_generator_functions_stay_inline() -> None:
    @single_task(executor="auto")
    async def fetch(x: int) -> int:
        return x

    @single_task(executor="auto")
    def expand(x: int) -> Any:
        yield x

    assert await (fetch | expand)(range(3)).collect() == [0, 1, 2]
    assert "chose inline" in repr(fetch) and "chose inline" in repr(expand)


async def test_a_task_with_a_resource_never_goes_to_processes() -> None:
    """A computing function would go to processes, but its resource belongs to the run:
    a worker would get a copy (the run's resource saw 8 of 300 calls). It goes to threads
    instead (off the loop), and the resource sees every call."""
    box: list[int] = []
    task = single_task(executor="auto")(workers.spin_into).with_inputs(0.002)
    task = task.with_resources(box=lambda: contextlib.nullcontext(box))
    assert await task(range(300)).collect() == list(range(300))
    assert sorted(box) == list(range(300))
    assert "chose process" not in repr(task)
    if "it waits" not in repr(task):  # (a loaded machine may see it wait: threads too)
        assert "chose thread" in repr(task) and "resources" in repr(task)
    assert multiprocessing.active_children() == []


def test_the_rule_keeps_a_task_that_stays_in_this_process() -> None:
    choice, reason = choose(5 * MS, 5 * MS, 0.01 * MS, multicore=True, stays="it has resources")
    assert choice == "thread" and "it has resources" in reason
    assert choose(0.5 * MS, 0.5 * MS, 0.01 * MS, multicore=True, stays="x")[0] == "inline"
