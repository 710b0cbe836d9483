"""Checked by tests/test_typing.py with mypy: what a type checker infers from pipelines."""

from typing import assert_type

from conveyor import AsyncStream, Pipeline, batch_task, single_task


@single_task
async def parse(x: str) -> int:
    return int(x)


@batch_task(max_size=3)
async def total(batch: list[int]) -> int:
    return sum(batch)


@single_task
def fmt(x: int) -> str:
    return f"<{x}>"


async def main() -> None:
    pipeline = parse | total | fmt
    assert_type(pipeline, Pipeline[str, str])
    assert_type(pipeline(["1", "2"]), AsyncStream[str])
    async for result in pipeline(["1", "2"]):
        assert_type(result, str)
    results = await pipeline(["1"]).collect()
    assert_type(results, list[str])
