"""The ``conveyor`` logger: retries at WARNING, failures given up at INFO with a summary
at the end of the run, executor choices at INFO, nothing per item on the happy path."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from conveyor import batch_task, single_task


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "conveyor" and r.levelno == level]


@single_task(retry_attempts=3, retry_delay=0, on_error="skip_item")
async def flaky(x: str) -> str:
    if x.startswith("bad"):
        raise ConnectionError(f"refused: {x[:10]}")
    return x


@single_task(on_error="emit")
def strict(x: str) -> str:
    if x == "ok-3":
        raise ValueError("no threes")
    return x


async def test_retries_warn_with_task_item_and_attempt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="conveyor")
    long_item = "bad" + "x" * 500
    results = await (flaky | strict)(["ok-1", long_item, "ok-3"]).collect()
    assert [type(r).__name__ for r in results] == ["str", "Failure"]
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 2  # attempts 1 and 2 are retried; the third gives up
    assert warnings[0].startswith("task 'flaky' failed on item 'badxxxx")
    assert (
        "(attempt 1 of 3): ConnectionError: refused: badxxxxxxx; retrying in 0.00 s"
        in (warnings[0])
    )
    assert "(attempt 2 of 3)" in warnings[1]
    assert all(len(w) < 200 for w in warnings)  # the item is shortened
    info = messages(caplog, logging.INFO)
    (skipped,) = [m for m in info if m.startswith("task 'flaky' gave up on item 'badxxx")]
    assert skipped.endswith("(skipped): ConnectionError: refused: badxxxxxxx")
    assert "task 'strict' gave up on item 'ok-3' (emitted as a Failure): ValueError: no threes" in (
        info
    )
    assert len(info) == 3
    assert info[-1] == (
        "run of flaky | strict finished: flaky: 2 retried, 1 skipped; strict: 1 emitted"
    )


async def test_the_happy_path_logs_nothing_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="conveyor")
    assert len(await (flaky | strict)([f"ok-{i}" for i in (1, 2, 4)] * 100).collect()) == 300
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    assert messages(caplog, logging.DEBUG) == ["run of flaky | strict finished: no call failed"]


async def test_a_failure_that_is_raised_is_logged_at_debug_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="conveyor")

    @single_task
    def fails(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(KeyError):
        await fails([1]).collect()
    assert messages(caplog, logging.DEBUG) == [
        "task 'fails' gave up on item 1 (raised): KeyError: 1"
    ]
    assert messages(caplog, logging.INFO) == ["run of fails failed: fails: 1 failed"]


async def test_isolated_batch_items_are_logged_one_by_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")

    @batch_task(max_size=4, on_error="skip_item")
    def no_sevens(batch: list[int]) -> list[int]:
        if 7 in batch:
            raise ValueError("a seven")
        return batch

    assert await no_sevens(range(8)).collect() == [0, 1, 2, 3, 4, 5, 6]
    assert messages(caplog, logging.INFO) == [
        "task 'no_sevens' gave up on item 7 (skipped): ValueError: a seven",
        "run of no_sevens finished: no_sevens: 1 skipped",
    ]


async def test_executor_choices_are_logged_once_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")

    @single_task(executor="thread:2")
    def on_threads(x: int) -> int:
        return x

    @single_task(executor="auto")
    def chosen(x: int) -> int:
        return x

    assert await (on_threads | chosen)(range(50)).collect() == list(range(50))
    info = messages(caplog, logging.INFO)
    assert info.count("task 'on_threads' runs on thread:2") == 1
    assert any(m.startswith("task 'chosen': executor 'auto' chose inline") for m in info)


def test_unconfigured_logging_shows_warnings_only() -> None:
    """With no logging set up, Python prints WARNING and above to stderr: the retries,
    not the INFO lines. ``logging.getLogger("conveyor").setLevel(logging.ERROR)``
    silences them."""
    code = """
import conveyor
from conveyor import single_task

@single_task(retry_attempts=2, retry_delay=0, on_error="skip_item")
def bad(x):
    raise OSError("down")

print(conveyor.run(bad([1]).collect()))
"""
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert shown.stdout == "[]\n"
    assert shown.stderr.splitlines() == [
        "task 'bad' failed on item 1 (attempt 1 of 2): OSError: down; retrying in 0.00 s"
    ]
    silenced = subprocess.run(
        [
            sys.executable,
            "-c",
            'import logging; logging.getLogger("conveyor").setLevel(logging.ERROR)\n' + code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert silenced.stderr == ""
