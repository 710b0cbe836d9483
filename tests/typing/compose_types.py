"""Checked by tests/test_compose.py with mypy --strict: the types of composed stages."""

from typing import Any, assert_type

from conveyor import Pipeline, SingleTask, parallel, route, single_task


@single_task
async def length(x: str) -> int:
    return len(x)


@single_task
def upper(x: str) -> str:
    return x.upper()


@single_task
def halve(x: int) -> float:
    return x / 2


async def main() -> None:
    both = parallel(length, upper)
    assert_type(both, SingleTask[str, tuple[int, str]])
    assert_type(length & upper, SingleTask[str, tuple[int, str]])
    assert_type(parallel(length, upper, length), SingleTask[str, tuple[int, str, int]])
    # a pipeline as a branch: its input and output types
    assert_type(parallel(length | halve, upper), SingleTask[str, tuple[float, str]])
    assert_type((length | halve) & upper, SingleTask[str, tuple[float, str]])

    def join(item: str, n: int, text: str) -> bytes:
        return f"{item}{n}{text}".encode()

    assert_type(parallel(length, upper, combine=join), SingleTask[str, bytes])
    assert_type(length | parallel(halve, halve), Pipeline[str, tuple[float, float]])
    async for pair in parallel(length, upper)(["a"]):
        assert_type(pair, tuple[int, str])

    routed = route(len, {0: upper, 1: upper})
    assert_type(routed, SingleTask[str, Any])

    paired = (length | halve).with_items()
    assert_type(paired, Pipeline[str, tuple[Any, float]])
