"""Shared test fixtures.

Every async test is checked for structured concurrency: when it ends, no task other than
the test's own may still be pending (after a few loop iterations to let cancelled tasks
unwind), and the event loop must not have reported any error (such as "Task was destroyed
but it is pending" or "exception was never retrieved").

CONVEYOR_TEST_LOOP=uvloop runs the async tests on uvloop's event loop instead of asyncio's
(through pytest-asyncio's ``pytest_asyncio_loop_factories`` hook, so no event loop policy
is set); tests marked ``looptime`` stay on asyncio's loop, which looptime's virtual clock
needs. The pytest header says which loop is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import looptime
import pytest
from hypothesis import settings

# -- the event loop of the async tests: CONVEYOR_TEST_LOOP=asyncio (default) | uvloop ----------

TEST_LOOPS = ("asyncio", "uvloop")
TEST_LOOP = os.environ.get("CONVEYOR_TEST_LOOP", "").strip().lower() or "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    if TEST_LOOP not in TEST_LOOPS:
        raise pytest.UsageError(
            f"CONVEYOR_TEST_LOOP={TEST_LOOP!r}: expected one of {', '.join(TEST_LOOPS)}"
        )


def pytest_report_header(config: pytest.Config) -> str:
    if TEST_LOOP == "uvloop":
        import uvloop

        return (
            f"conveyor test loop: uvloop {uvloop.__version__}"
            " (CONVEYOR_TEST_LOOP; looptime tests on asyncio)"
        )
    return "conveyor test loop: asyncio (CONVEYOR_TEST_LOOP=uvloop for uvloop)"


if TEST_LOOP == "uvloop":
    try:
        import uvloop
    except ImportError as exc:  # not silently asyncio: the run was asked for uvloop
        raise pytest.UsageError(f"CONVEYOR_TEST_LOOP=uvloop, but uvloop is missing: {exc}") from exc

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
        # One factory per test keeps the test ids unchanged. looptime's virtual clock
        # patches a pure-Python loop; uvloop's C loop keeps real time.
        if item.get_closest_marker("looptime") is not None:
            return {"asyncio": asyncio.new_event_loop}
        return {"uvloop": uvloop.new_event_loop}


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


def run_on_virtual_clock(
    main: Coroutine[Any, Any, Any],
    loop_errors: list[dict[str, Any]],
    timeout: float = 100_000.0,
    real_timeout: float = 60.0,
    *,
    virtual: bool = True,
) -> None:
    """Run ``main`` on a fresh looptime loop; fail (not hang) if it deadlocks.

    ``timeout`` is in virtual seconds; ``real_timeout`` guards against a loop that waits
    for something no timer will ever bring (virtual time cannot move then). Either way
    the stacks of the stuck tasks are reported. ``virtual=False`` runs on a plain loop
    (then ``timeout`` is in real seconds): looptime cannot see work on threads or in
    processes, and would move its clock while the loop waits for them.
    """
    loop = looptime.new_event_loop(start=0) if virtual else asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    stuck: list[str] = []

    def report_and_cancel() -> None:
        for task in asyncio.all_tasks(loop):
            stack = io.StringIO()
            task.print_stack(file=stack)
            stuck.append(stack.getvalue())
            task.cancel()

    watchdog = threading.Timer(real_timeout, loop.call_soon_threadsafe, (report_and_cancel,))
    watchdog.start()
    try:
        task = loop.create_task(main)
        with contextlib.suppress(asyncio.CancelledError):  # by the watchdog
            loop.run_until_complete(asyncio.wait({task}, timeout=timeout))
        if not task.done():
            report_and_cancel()
            loop.run_until_complete(asyncio.sleep(0))
        if stuck:
            pytest.fail("deadlock: the run did not finish.\n" + "\n".join(stuck))
        task.result()
    finally:
        watchdog.cancel()
        loop.close()


def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Tasks other than the caller's that are not done."""
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and not t.done()]


async def settle(iterations: int = 10) -> None:
    """Let cancelled tasks unwind."""
    for _ in range(iterations):
        await asyncio.sleep(0)


# HYPOTHESIS_PROFILE=thorough runs the model tests much longer (bug hunting).
settings.register_profile("thorough", max_examples=3000, deadline=None)
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)


@pytest.fixture(autouse=True, scope="module")
def _close_the_models_pools() -> Any:
    """The pools the random pipelines of ``pipeline_model`` share close with each module
    (no worker may be left for the next module's checks)."""
    yield
    import sys

    model = sys.modules.get("pipeline_model")
    if model is not None:
        model.shut_down()


@pytest.fixture(scope="session")
def postgres_url() -> Any:
    """The URL of a throwaway PostgreSQL server for the session (``postgres_server``);
    the test skips, saying why, where the server's binaries are missing."""
    import postgres_server

    binaries = postgres_server.find_binaries()
    if binaries is None:
        pytest.skip(postgres_server.MISSING)
    server = postgres_server.start(binaries)
    try:
        yield server.url
    finally:
        server.stop()
