"""The ``conveyor`` logger: retries at WARNING, failures given up at INFO with a summary
at the end of the run, executor choices at INFO, nothing per item on the happy path."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor
from conveyor import batch_task, single_task
from conveyor._engine import _log


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


# -- structured fields (issue 19, part 5) ---------------------------------------------


def conveyor_fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k.startswith("conveyor_")}


def records_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "conveyor"]


async def test_every_kind_of_record_carries_the_run_and_its_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retries, calls given up (skipped, emitted, raised), the end of the run, executors,
    ``"auto"``'s choice, the window raised at the start, an error handler: each record has
    its event, the run's id and pipeline, and its task where it is a task's."""
    caplog.set_level(logging.DEBUG, logger="conveyor")
    ids: list[str | None] = []

    @single_task(retry_attempts=2, retry_delay=0, on_error="skip_item")
    def parse(x: int) -> int:
        context = conveyor.get_current_context()
        ids.append(None if context is None else context.pipeline_id)
        if x == 3:
            raise ValueError("three")
        return x

    @single_task(executor="thread:2", on_error="emit")
    def check(x: int) -> int:
        if x == 4:
            raise KeyError(x)
        return x

    @single_task(executor="auto")
    def chosen(x: object) -> object:
        return x

    @batch_task(max_size=8, error_handler=conveyor.LoggingErrorHandler())
    def total(xs: list[object]) -> list[object]:
        if 0 in xs:
            raise OverflowError("a batch with 0")
        return xs

    pipeline = (parse | check | chosen | total).with_context(max_in_flight=4)
    await pipeline(range(10)).collect()
    (run_id,) = set(ids)
    records = records_of(caplog)
    events = {r.conveyor_event for r in records}  # type: ignore[attr-defined]
    assert {"window", "retry", "gave_up", "executor", "auto", "handler", "run_end"} <= events
    tasks = {
        "retry": "parse",
        "executor": "check",
        "auto": "chosen",
        "handler": "total",
    }
    for record in records:
        fields = conveyor_fields(record)
        assert fields["conveyor_run_id"] == run_id, record.getMessage()
        assert fields["conveyor_pipeline"] == "parse | check | chosen | total"
        event = fields["conveyor_event"]
        if event in tasks:
            assert fields["conveyor_task"] == tasks[event], record.getMessage()
        if event == "gave_up":
            assert fields["conveyor_task"] in ("parse", "check")
        assert set(fields) <= set(_log.FIELDS), record.getMessage()


async def test_a_retry_and_a_call_given_up_carry_their_facts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="conveyor")
    await (flaky | strict)(["ok-1", "bad-item", "ok-3"]).collect()
    retry, again = [r for r in records_of(caplog) if r.levelno == logging.WARNING]
    assert conveyor_fields(retry) == {
        "conveyor_event": "retry",
        "conveyor_run_id": conveyor_fields(retry)["conveyor_run_id"],
        "conveyor_pipeline": "flaky | strict",
        "conveyor_task": "flaky",
        "conveyor_item": "'bad-item'",
        "conveyor_attempt": 1,
        "conveyor_max_attempts": 3,
        "conveyor_delay": 0.0,
        "conveyor_outcome": "retried",
        "conveyor_error_type": "ConnectionError",
        "conveyor_error": "ConnectionError: refused: bad-item",
    }
    assert isinstance(retry.conveyor_run_id, str)  # type: ignore[attr-defined]
    assert again.conveyor_attempt == 2  # type: ignore[attr-defined]
    given_up = [r for r in records_of(caplog) if r.conveyor_event == "gave_up"]  # type: ignore[attr-defined]
    assert sorted((r.conveyor_task, r.conveyor_outcome, r.conveyor_attempt) for r in given_up) == [  # type: ignore[attr-defined]
        ("flaky", "skipped", 3),
        ("strict", "emitted", 1),
    ]
    (end,) = [r for r in records_of(caplog) if r.conveyor_event == "run_end"]  # type: ignore[attr-defined]
    assert end.conveyor_outcome == "finished"  # type: ignore[attr-defined]
    assert end.conveyor_counts == {  # type: ignore[attr-defined]
        "flaky": {"retried": 2, "skipped": 1},
        "strict": {"emitted": 1},
    }


async def test_a_batch_call_names_its_size(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")

    @batch_task(max_size=4, retry_attempts=2, retry_delay=0, on_error="skip_batch")
    def fails(xs: list[int]) -> list[int]:
        raise ValueError("no")

    await fails(range(3)).collect()
    retry = next(r for r in records_of(caplog) if r.levelno == logging.WARNING)
    assert retry.conveyor_batch_size == 3  # type: ignore[attr-defined]
    assert retry.conveyor_item == "[0, 1, 2]"  # type: ignore[attr-defined]


def test_a_process_stages_chunk_sizes_carry_the_run() -> None:
    code = """
import logging, conveyor
from conveyor import single_task
from tests.workers import square

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)
logger = logging.getLogger("conveyor")
logger.addHandler(Keep())
logger.setLevel(logging.DEBUG)
task = single_task(executor="process:2")(square)
task.run(range(50))
chunks = [r for r in records if getattr(r, "conveyor_event", None) == "chunk"]
assert chunks, [r.getMessage() for r in records]
assert all(r.conveyor_run_id and r.conveyor_pipeline == "square" for r in chunks)
assert all(isinstance(r.conveyor_chunk_size, int) for r in chunks)
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_the_fields_are_documented() -> None:
    """docs/logging.md's table of fields is ``_log.FIELDS``."""
    page = (Path(__file__).parent.parent / "docs" / "logging.md").read_text()
    documented = set(re.findall(r"^\| `(conveyor_\w+)` \|", page, re.MULTILINE))
    assert documented == set(_log.FIELDS)


async def test_structlog_gets_the_fields() -> None:
    """structlog's stdlib integration (``ExtraAdder``) renders the fields as JSON keys."""
    structlog = pytest.importorskip("structlog")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    logger = logging.getLogger("conveyor")
    logger.addHandler(handler)
    try:
        await flaky(["bad-1"]).collect()
    finally:
        logger.removeHandler(handler)
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["level"] == "warning"
    assert first["conveyor_task"] == "flaky"
    assert first["conveyor_item"] == "'bad-1'"
    assert first["conveyor_attempt"] == 1
    assert first["conveyor_outcome"] == "retried"
    assert first["conveyor_pipeline"] == "flaky"
    assert first["conveyor_run_id"]


# -- retry_log="summary" --------------------------------------------------------------


def crawl(retry_log: str) -> tuple[list[logging.LogRecord], list[object]]:
    """500 URLs: most fail once or twice before they answer, every 50th never does."""
    attempts: dict[int, int] = {}

    @single_task(retry_attempts=3, retry_delay=0, on_error="skip_item")
    async def fetch(url: int) -> int:
        attempts[url] = attempts.get(url, 0) + 1
        if url % 50 == 0:
            raise ConnectionError(f"refused: http://example.org/{url}")
        if attempts[url] <= url % 3:
            raise TimeoutError(f"timed out: http://example.org/{url}")
        return url

    @single_task(retry_attempts=2, retry_delay=0)
    def parse(url: int) -> int:
        attempts[-url - 1] = attempts.get(-url - 1, 0) + 1
        if url % 7 == 0 and attempts[-url - 1] == 1:
            raise ValueError("bad page")
        return url

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("conveyor")
    keep = Keep(logging.WARNING)
    logger.addHandler(keep)
    try:
        results = (fetch | parse).with_context(retry_log=retry_log).run(range(500))
    finally:
        logger.removeHandler(keep)
    return records, results


def test_retries_summed_up_once_per_task_at_the_end() -> None:
    # The model: fetch retries url % 3 times (twice, then gives up, on every 50th); parse
    # once on every 7th that reached it.
    fetch_retries = sum(2 if url % 50 == 0 else url % 3 for url in range(500))
    fetch_items = sum(1 for url in range(500) if url % 50 == 0 or url % 3)
    parse_retries = sum(1 for url in range(500) if url % 50 and url % 7 == 0)
    assert (fetch_retries, fetch_items, parse_retries) == (510, 337, 70)

    each, results = crawl("each")
    assert len(each) == fetch_retries + parse_retries  # a warning per retry: noise
    summary, same = crawl("summary")
    assert same == results
    assert len(summary) == 2
    assert re.fullmatch(
        r"task 'fetch' retried 510 times on 337 items: 490 TimeoutError \('timed out: "
        r"http://example.org/\d+'\), 20 ConnectionError \('refused: http://example.org/\d+'\)",
        summary[0].getMessage(),
    )
    assert summary[1].getMessage() == (
        "task 'parse' retried 70 times on 70 items: 70 ValueError ('bad page')"
    )
    fetch = summary[0]
    assert conveyor_fields(fetch) == {
        "conveyor_event": "retry_summary",
        "conveyor_run_id": fetch.conveyor_run_id,  # type: ignore[attr-defined]
        "conveyor_pipeline": "fetch | parse",
        "conveyor_task": "fetch",
        "conveyor_outcome": "retried",
        "conveyor_retries": 510,
        "conveyor_items": 337,
        "conveyor_errors": {"TimeoutError": 490, "ConnectionError": 20},
    }


async def test_a_retry_summary_when_the_run_fails(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor")

    @single_task(retry_attempts=2, retry_delay=0)
    def breaks(x: int) -> int:
        raise RuntimeError(f"broken {x}")

    with pytest.raises(RuntimeError):
        await breaks.with_context(retry_log="summary")([1]).collect()
    assert [r.getMessage() for r in records_of(caplog)] == [
        "task 'breaks' retried 1 times on 1 items: 1 RuntimeError ('broken 1')"
    ]


@pytest.mark.parametrize("where", ["context", "with_context"])
def test_retry_log_is_checked_when_it_is_given(where: str) -> None:
    allowed = r"retry_log must be 'each' .* or 'summary' .* got 'quiet'"
    with pytest.raises(ValueError, match=allowed):
        if where == "context":
            conveyor.PipelineContext(retry_log="quiet")  # type: ignore[arg-type]
        else:
            flaky.with_context(retry_log="quiet")


LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def test_every_log_call_passes_its_fields() -> None:
    """Each call to the ``conveyor`` logger in the package passes ``extra=`` (the run's
    fields: ``_log.RunLog`` or ``_log_fields.run_fields``), so no kind of record comes
    without them; a new record of a run should go through ``RunLog.log``."""
    import ast

    package = Path(conveyor.__file__).parent
    bare = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            named = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
            passes = any(keyword.arg == "extra" for keyword in node.keywords)
            if node.func.attr in LEVELS and named == "logger" and not passes:
                bare.append(f"{path.relative_to(package)}:{node.lineno}")
    assert bare == []
