"""The executor registry (``conveyor._engine._registry``): one row per kind of ``executor=``.

Every row's values, validation message, display name and flags; the optional parts of an
executor asked of ``conveyor.abc``'s protocols; and a kind registered here, with its
builder in this module, accepted by ``executor=``, run, charted and logged, as a new kind
of the library would be.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import single_task
from conveyor._engine import _registry
from conveyor._engine._auto import choose
from conveyor._engine._calls import INLINE
from conveyor._engine._registry import AutoChoice, ExecutorKind, kind_of
from conveyor._engine._threads import RunThreads
from conveyor.abc import ChunkedExecutor, Executor, RunScopedExecutor


class _FakeDaskClient:
    """Looks like a ``dask.distributed.Client`` to the registry (never used to run)."""

    def submit(self, *args: Any) -> None: ...


_FakeDaskClient.__module__ = "distributed.client"


class _Custom:
    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return invoke


@pytest.fixture
def pools() -> Iterator[tuple[Any, Any]]:
    threads = concurrent.futures.ThreadPoolExecutor(1)
    processes = concurrent.futures.ProcessPoolExecutor(1)  # (no process starts unused)
    yield threads, processes
    threads.shutdown()
    processes.shutdown()


# name: (sends work away, chunk_size applies, generators, logged, display of the sample)
FLAGS = {
    "inline": (False, False, "paced", False, None),
    "thread": (False, False, "paced", True, "thread:2"),
    "process": (True, True, "replayed", True, "process:2"),
    "auto": (False, True, "paced", False, "auto"),
    "thread pool": (False, False, "paced", True, "ThreadPoolExecutor"),
    "process pool": (True, True, "replayed", True, "ProcessPoolExecutor"),
    "dask": (True, True, "replayed", True, "dask"),
    "ray": (True, True, "replayed", True, "ray"),
    "bind": (False, False, "paced", True, "_Custom"),
}


def samples(pools: tuple[Any, Any]) -> dict[str, Any]:
    threads, processes = pools
    return {
        "inline": None,
        "thread": "thread:2",
        "process": "process:2",
        "auto": "auto",
        "thread pool": threads,
        "process pool": processes,
        "dask": _FakeDaskClient(),
        "ray": types.ModuleType("ray"),
        "bind": _Custom(),
    }


def test_every_row_is_described_here() -> None:
    assert [row.name for row in _registry.KINDS] == list(FLAGS)
    assert _registry.KINDS[-1].name == "bind"  # the catch-all is tried last


def test_each_sample_is_of_its_kind_with_its_flags(pools: tuple[Any, Any]) -> None:
    for name, value in samples(pools).items():
        checked = _registry.check("executor", value)
        row = kind_of(checked)
        assert row.name == name and kind_of(value).name == name
        away, chunked, generators, logged, display = FLAGS[name]
        assert row.sends_work_away is away and _registry.sends_work_away(checked) is away
        assert row.takes_resources is not away and row.takes_async is not away
        assert row.chunked is chunked
        assert row.generators == generators
        assert row.logged is logged
        assert _registry.display_name(checked) == display, name


def test_inline_is_none_or_its_name_and_auto_is_one_choice_per_task() -> None:
    assert kind_of("inline").name == "inline" and kind_of(None).name == "inline"
    first, second = _registry.check("executor", "auto"), _registry.check("executor", "auto")
    assert isinstance(first, AutoChoice) and first is not second
    assert _registry.check("executor", first) is first  # (a validated value stays)


@pytest.mark.parametrize(
    "bad", ["thread:0", "thread:x", "threads", "process:", "process:0", "gpu", "auto:1"]
)
def test_a_bad_name_names_the_parameter_and_every_kind(bad: str) -> None:
    with pytest.raises(ValueError) as raised:
        single_task(executor=bad)
    message = str(raised.value)
    assert message.startswith("executor must be 'inline', 'thread', 'thread:N', 'process'")
    for row in _registry.KINDS:
        assert row.accepted in message
    assert message.endswith(f"; got {bad!r}")


@pytest.mark.parametrize("bad", [42, object(), ["thread"]])
def test_a_value_of_no_kind_is_a_type_error_naming_every_kind(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"executor must be .*conveyor\.abc\.Executor\); got"):
        single_task(executor=bad)


def test_chunk_size_is_refused_where_nothing_is_chunked() -> None:
    for option in ("inline", "thread", _Custom()):
        with pytest.raises(ValueError, match="chunk_size applies to work sent") as raised:
            single_task(executor=option, chunk_size=10)
        message = str(raised.value)
        assert message.endswith(f"(got executor={option!r})")
        for row in _registry.KINDS:
            assert not row.chunked or row.accepted in message
        assert "thread" not in message.removesuffix(f"(got executor={option!r})")


def test_every_choice_of_auto_has_a_row_that_says_when() -> None:
    ms = 1e-3
    choices = {
        choose(1e-6, 1e-6, None, multicore=True)[0],
        choose(5 * ms, 0.1 * ms, None, multicore=True)[0],
        choose(5 * ms, 5 * ms, 0.01 * ms, multicore=True)[0],
    }
    assert choices == {"inline", "thread", "process"}
    for choice in choices:
        assert kind_of(choice if choice != "inline" else None).auto


def test_the_optional_parts_are_asked_of_the_protocols() -> None:
    threads = RunThreads(2)
    assert _registry.run_scoped(threads) and isinstance(threads, RunScopedExecutor)
    assert not _registry.run_scoped(INLINE) and isinstance(INLINE, Executor)
    assert _registry.figures(INLINE) is None

    class Chunked(_Custom):
        chunker = None

    assert isinstance(Chunked(), ChunkedExecutor) and _registry.figures(Chunked()) is None


# -- a new kind: one row, one builder ------------------------------------------------


class Lane:
    """A new kind of option (it has no ``bind``: only its row makes it an executor)."""

    def __init__(self) -> None:
        self.items: list[Any] = []


class LaneCalls:
    def __init__(self, lane: Lane) -> None:
        self.lane = lane

    def bind(self, invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def call(item: Any) -> Any:
            self.lane.items.append(item)
            return invoke(item)

        return call

    def __repr__(self) -> str:
        return "a lane"


def build_lane(spec: Any, lane: Lane) -> LaneCalls:
    return LaneCalls(lane)


@pytest.fixture
def lane_kind() -> Iterator[ExecutorKind]:
    kind = _registry.register(
        ExecutorKind(
            "lane",
            lambda value: isinstance(value, Lane),
            "a Lane",
            f"{__name__}:build_lane",
            display=lambda value: "lane",
        )
    )
    try:
        yield kind
    finally:
        _registry.unregister("lane")
    assert all(row.name != "lane" for row in _registry.KINDS)


async def test_a_registered_kind_is_accepted_run_charted_and_logged(
    lane_kind: ExecutorKind, caplog: pytest.LogCaptureFixture
) -> None:
    assert _registry.KINDS[-2] is lane_kind  # (before the catch-all)
    lane = Lane()
    task = single_task(executor=lane, task_name="laned")(lambda x: x + 1)
    with caplog.at_level(logging.INFO, logger="conveyor"):
        assert await task(range(5)).collect() == [1, 2, 3, 4, 5]
    assert lane.items == [0, 1, 2, 3, 4]
    assert "executor lane" in task.to_mermaid()
    assert "task 'laned' runs on a lane" in caplog.text
    with pytest.raises(ValueError, match="named 'lane' is registered already"):
        _registry.register(lane_kind)


def test_an_unregistered_kind_is_refused(lane_kind: ExecutorKind) -> None:
    _registry.unregister("lane")
    with pytest.raises(TypeError, match="executor must be"):
        single_task(executor=Lane())
    _registry.register(lane_kind)  # (the fixture unregisters it)


# -- one place ----------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "conveyor"
ASKED_ELSEWHERE = [
    re.compile(r"hasattr\([^)]*[\"'](open|chunker|bind)[\"']"),  # abc's protocols say
    re.compile(r"getattr\([^)]*[\"'](open|chunker)[\"']"),
    re.compile(r"(?<![.\w])(option|executor|value) (==|!=) [\"']inline[\"']"),
    re.compile(r"\bis_(dask_client|ray)\("),
]


def test_kinds_are_asked_of_the_registry_only() -> None:
    """No module but the registry asks what kind an executor option is, or probes an
    executor for the optional parts that ``conveyor.abc`` declares."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_registry.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(pattern.search(line) for pattern in ASKED_ELSEWHERE):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
