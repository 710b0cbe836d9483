"""Error handling: what happens to an item whose task raises.

For a failing call, conveyor decides in this order:
1. retries (``retry_attempts`` attempts in all, for exceptions matching ``retry_on``);
2. the task's ``error_handler``, if it has one;
3. the task's ``on_error`` action: "fail" (default), "skip_item", "skip_batch", "emit".
"""

import asyncio
import logging
import sys
import time

import conveyor
from conveyor import ErrorHandler, Failure, LoggingErrorHandler, batch_task, single_task

logging.basicConfig(stream=sys.stdout, format="  [log] %(name)s: %(message)s")


# -- on_error="skip_item": the failing item is dropped, the others go on -----------------


@single_task(on_error="skip_item")
async def invert(x: int) -> float:
    return 1 / x  # ZeroDivisionError for 0


# -- retries with exponential backoff ---------------------------------------------------

attempts: dict[str, int] = {}


@single_task(retry_attempts=3, retry_delay=0.01, retry_exponential_backoff=True)
async def flaky_fetch(url: str) -> str:
    """Fails twice per URL, then succeeds (waits 0.01 s, then 0.02 s between attempts)."""
    attempts[url] = attempts.get(url, 0) + 1
    if attempts[url] < 3:
        raise ConnectionError(f"{url}: attempt {attempts[url]} failed")
    return f"{url}: ok after {attempts[url]} attempts"


# -- on_error="skip_batch": a failing batch is dropped whole ----------------------------


@batch_task(max_size=2, on_error="skip_batch")
async def save(rows: list[int]) -> int:
    if 3 in rows:
        raise ValueError(f"cannot save {rows}")
    return sum(rows)


# -- on_error="skip_item" on a batch task: only the failing items are dropped ------------


@batch_task(max_size=4, on_error="skip_item")
async def save_each(rows: list[int]) -> list[int]:
    if 3 in rows:
        raise ValueError(f"cannot save {rows}")
    return [row * 10 for row in rows]  # a list: one item per element


# -- on_error="emit": a Failure takes the item's place and reaches the consumer ---------


@single_task(on_error="emit")
async def parse(text: str) -> int:
    return int(text)


@single_task
async def add_one(x: int) -> int:
    return x + 1  # never sees a Failure: later tasks pass it through untouched


# -- a custom ErrorHandler: continue with a replacement value ---------------------------


class MinusOne(ErrorHandler):
    async def handle_error(self, error, item, task_name, attempt):
        print(f"  MinusOne: {task_name} failed on {item!r} ({error!r}), using -1")
        return True, -1  # (continue, value); value None would drop the item


@single_task(error_handler=MinusOne())
async def parse_or_minus_one(text: str) -> int:
    return int(text)


@single_task(error_handler=LoggingErrorHandler(replacement_value=0))
async def parse_or_zero(text: str) -> int:
    return int(text)


# -- timeout, and retry_on: which exceptions are retried ---------------------------------


@single_task(timeout=0.05, retry_attempts=2, retry_delay=0.01, on_error="emit")
async def slow_call(seconds: float) -> float:
    await asyncio.sleep(seconds)  # each attempt gets 0.05 s
    return seconds


@single_task(retry_attempts=5, retry_delay=0.01, retry_on=ConnectionError, on_error="emit")
async def lookup(key: str) -> str:
    raise KeyError(key)  # not a ConnectionError: no retry


# -- on_error="fail" (the default): the exception reaches the consumer ------------------


@single_task(task_name="parse-strict")
async def parse_strict(text: str) -> int:
    return int(text)


async def main() -> None:
    inverted = await invert([1, 0, 4]).collect()
    print("skip_item:      ", inverted)
    assert inverted == [1.0, 0.25], inverted

    started = time.perf_counter()
    fetched = await flaky_fetch(["a", "b"]).collect()
    elapsed = time.perf_counter() - started
    print("retries:        ", fetched, f"({elapsed:.3f}s)")
    assert fetched == ["a: ok after 3 attempts", "b: ok after 3 attempts"], fetched
    assert elapsed >= 0.03 - 0.005  # backoff: 0.01 s + 0.02 s

    saved = await save(range(6)).collect()  # batches [0, 1] [2, 3] [4, 5]
    print("skip_batch:     ", saved)
    assert saved == [1, 9], saved  # [2, 3] was dropped as a whole

    saved_each = await save_each(range(8)).collect()  # batches [0..3] [4..7]
    print("batch skip_item:", saved_each)
    assert saved_each == [0, 10, 20, 40, 50, 60, 70], saved_each  # only 3 was dropped

    emitted = await (parse | add_one)(["1", "x", "3"]).collect()
    print("emit:           ", emitted)
    assert emitted[0] == 2 and emitted[2] == 4, emitted
    failure = emitted[1]
    assert isinstance(failure, Failure)
    assert failure.item == "x" and failure.task_name == "parse" and failure.attempts == 1
    assert isinstance(failure.exception, ValueError)
    good = [r for r in emitted if not isinstance(r, Failure)]
    assert good == [2, 4]

    handled = await parse_or_minus_one(["1", "x", "3"]).collect()
    print("ErrorHandler:   ", handled)
    assert handled == [1, -1, 3], handled

    logged = await parse_or_zero(["1", "x", "3"]).collect()
    print("LoggingErrorHandler:", logged)
    assert logged == [1, 0, 3], logged

    for mode in ("ordered", "as_completed"):
        pipeline = (parse_strict | add_one).with_execution_mode(mode)
        try:
            await pipeline(["1", "x", "3"]).collect()
        except ValueError as exc:
            print(f"fail ({mode}):", repr(exc))
            for note in exc.__notes__:
                print("   note:", note)
            assert exc.__notes__ == ["conveyor: raised by task 'parse-strict' on 'x'"]
        else:
            raise AssertionError("expected a ValueError")

    timed = await slow_call([0.01, 1.0]).collect()
    print("timeout:        ", timed)
    assert timed[0] == 0.01, timed
    assert isinstance(timed[1], Failure) and isinstance(timed[1].exception, TimeoutError)
    assert timed[1].attempts == 2  # a timeout is retried like any other error

    looked_up = await lookup(["k"]).collect()
    print("retry_on:       ", looked_up)
    assert isinstance(looked_up[0], Failure) and looked_up[0].attempts == 1  # not retried


if __name__ == "__main__":
    conveyor.run(main())
