"""Checked by tests/test_typing.py with mypy: what a type checker infers from pipelines."""

from typing import Any, assert_type

from conveyor import AsyncStream, Failure, Pipeline, batch_task, single_task


@single_task
async def parse(x: str) -> int:
    return int(x)


@batch_task(max_size=3)
async def total(batch: list[int]) -> int:
    return sum(batch)


@single_task
def fmt(x: int) -> str:
    return f"<{x}>"


@single_task(on_error="emit")
async def parse_or_fail(x: str) -> int:
    return int(x)


@batch_task(max_size=2, on_error="emit")
async def total_or_fail(batch: list[int]) -> int:
    return sum(batch)


async def main() -> None:
    pipeline = parse | total | fmt
    assert_type(pipeline, Pipeline[str, str])
    assert_type(pipeline(["1", "2"]), AsyncStream[str])
    async for result in pipeline(["1", "2"]):
        assert_type(result, str)
    results = await pipeline(["1"]).collect()
    assert_type(results, list[str])

    # on_error="emit": a Failure can come out, and passes the later stages untouched.
    lenient = parse_or_fail | fmt
    assert_type(lenient, Pipeline[Any, str | Failure[Any]])
    async for value in lenient(["1", "x"]):
        assert_type(value, str | Failure[Any])
    assert_type(total | total_or_fail | fmt, Pipeline[Any, str | Failure[Any]])
