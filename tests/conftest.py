"""Shared test fixtures.

Every async test is checked for structured concurrency: when it ends, no task other than
the test's own may still be pending (after a few loop iterations to let cancelled tasks
unwind), and the event loop must not have reported any error (such as "Task was destroyed
but it is pending" or "exception was never retrieved").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
async def _structured_concurrency() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        yield
        me = asyncio.current_task()
        for _ in range(10):
            await asyncio.sleep(0)
        leaked = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        assert not leaked, f"tasks left pending: {leaked}"
        assert not reported, f"event loop reported errors: {reported}"
    finally:
        loop.set_exception_handler(previous)


def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Tasks other than the caller's that are not done."""
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and not t.done()]


async def settle(iterations: int = 10) -> None:
    """Let cancelled tasks unwind."""
    for _ in range(iterations):
        await asyncio.sleep(0)
