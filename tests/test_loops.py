"""The engine on both event loops: plain asyncio and uvloop (what conveyor.run picks)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import conveyor
from conveyor import Failure, batch_task, single_task

uvloop = pytest.importorskip("uvloop")

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": conveyor.run,
}


@single_task(on_error="emit")
async def guarded(x: int) -> int:
    assert asyncio.current_task() is not None
    async with asyncio.TaskGroup() as group:
        group.create_task(asyncio.sleep(0.001))
    async with asyncio.timeout(0.05):
        await asyncio.sleep(1 if x == 2 else 0.001)
    return x


@batch_task(max_size=3)
def total(batch: list[int]) -> int:
    return sum(batch)


@single_task
def plain(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("runner", RUNNERS)
def test_pipelines_run_on_each_loop(runner: str) -> None:
    async def main() -> tuple[list[Any], list[Any], str]:
        with_failure = await guarded(range(4)).collect()
        batched = await (plain | total).as_completed(range(6)).collect()
        me = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        assert not left
        return with_failure, batched, type(asyncio.get_running_loop()).__module__

    with_failure, batched, loop_module = RUNNERS[runner](main())
    assert with_failure[:2] == [0, 1] and with_failure[3] == 3
    assert isinstance(with_failure[2], Failure)
    assert isinstance(with_failure[2].exception, TimeoutError)
    assert sorted(batched) == [6, 15]
    assert loop_module.startswith("uvloop" if runner == "uvloop" else "asyncio")
