"""The executor registry: every kind of ``executor=`` value, declared once, one row each.

A row (:class:`ExecutorKind`) says everything conveyor needs to know about one kind of
executor option: which values are of that kind (``matches``), how a value is checked
(``check``; its error names the parameter and the fix), which engine module builds it
for a run (``build``, found by name: ``"module:name"``), its short name in charts
and logs (``display``), whether work leaves the process (``sends_work_away``, and with
it whether resources and ``async def`` functions can go there), what becomes of a
generator's output there (``generators``), whether the run's log names it
(``logged``), and whether ``executor="auto"`` may choose it, and when (``auto``).

Every question about an option is asked of its row (:func:`kind_of`); the optional
parts of an executor object are asked of the protocols of :mod:`conveyor.abc`
(:func:`run_scoped`, :func:`figures`), here and nowhere else (a test holds every other
module to it). A new kind is one engine module, with a callable ``name(spec, option)``
that builds its executor for a run (``_ray.RayCalls``, say), plus one row in
:data:`KINDS` (or :func:`register`, for a kind declared elsewhere: rows are tried in
order, the catch-all ``bind`` row last).

This module imports nothing of conveyor but :mod:`conveyor.abc` (``build`` names its
module, imported when a run starts): ``_spec`` validates options with it, and the
engine builds them with it, without an import cycle, type-only imports counted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard

from ..abc import ChunkedExecutor, ChunkFigures, RunScopedExecutor

if TYPE_CHECKING:
    from ..abc import Executor, TaskDescription

__all__ = [
    "KINDS",
    "AutoChoice",
    "ExecutorKind",
    "build",
    "check",
    "chunked_kinds",
    "display_name",
    "figures",
    "kind_of",
    "register",
    "run_scoped",
    "sends_work_away",
    "unregister",
]


class AutoChoice:
    """``executor="auto"`` of one task: the engine's latest measured choice, for ``repr``.

    Each run measures afresh (see ``conveyor._engine._auto``) and records here what it
    chose and why, so that ``repr(task)`` shows the decision.
    """

    __slots__ = ("choice", "reason")

    def __init__(self) -> None:
        self.choice: str | None = None
        self.reason = ""

    def __repr__(self) -> str:
        if self.choice is None:
            return "'auto'"
        return f"'auto' (chose {self.choice}: {self.reason})"


def _same(name: str, value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutorKind:
    """One kind of ``executor=`` value (see the module's docstring)."""

    name: str
    """The kind's name, unique in the registry (``"dask"``, ``"ray"``, ...)."""
    matches: Callable[[Any], bool]
    """Whether a value is of this kind: the raw option, and the value ``check`` made of
    it (both must match). Never raises, and imports nothing."""
    accepted: str
    """How the option is written, for the error message of a value no row accepts."""
    build: str
    """``"module:name"``: the callable of an engine module (relative to
    ``conveyor._engine``) that builds a run's executor: ``name(spec, option)``."""
    check: Callable[[str, Any], Any] = _same
    """Validates a matching value (``check(parameter name, value)``) and returns the
    value to keep; raises ``ValueError``/``TypeError`` naming the parameter and the fix."""
    display: Callable[[Any], str | None] = lambda value: type(value).__name__
    """The short name in ``to_mermaid()``; ``None`` for the default (inline)."""
    sends_work_away: bool = False
    """Calls run in other processes: items, results and the function are pickled, calls
    travel in chunks (``chunk_size=`` applies), and no resource and no ``async def``
    function can go there."""
    generators: str = "paced"
    """What becomes of a generator a call returns: ``"paced"`` (expanded as the window
    allows, the generator runs where the call ran) or ``"replayed"`` (run to its end
    in the worker, its values sent back at once and expanded here)."""
    chunked: bool = False
    """Whether ``chunk_size=`` applies (calls may travel in chunks)."""
    logged: bool = True
    """Whether the run's log names the stage's executor when the run starts (not for the
    default; ``auto`` logs its own choices)."""
    auto: str | None = None
    """When ``executor="auto"`` chooses this kind (``None``: never)."""

    @property
    def takes_resources(self) -> bool:
        """Whether a task with run-scoped resources may use it (they live here)."""
        return not self.sends_work_away

    @property
    def takes_async(self) -> bool:
        """Whether an ``async def`` (or async generator) function may run on it."""
        return not self.sends_work_away


# -- the rows ------------------------------------------------------------------------


def _is_str(kind: str) -> Callable[[Any], bool]:
    def matches(value: Any) -> bool:
        return isinstance(value, str) and value.partition(":")[0] == kind

    return matches


def _workers(name: str, value: Any) -> Any:
    _, colon, workers = value.partition(":")
    if colon and not (workers.isdigit() and int(workers) >= 1):
        raise ValueError(f"{name} must be {help_text()}; got {value!r}")
    return value


def _is_auto(value: Any) -> bool:
    return isinstance(value, AutoChoice) or (isinstance(value, str) and value == "auto")


def _auto(name: str, value: Any) -> Any:
    return value if isinstance(value, AutoChoice) else AutoChoice()  # one per task


def is_dask_client(value: Any) -> bool:
    """Whether ``value`` is a ``dask.distributed.Client`` (without importing dask)."""
    return type(value).__module__.startswith("distributed") and hasattr(value, "submit")


def is_ray(value: Any) -> bool:
    """Whether ``value`` is the ``ray`` module or what ``ray.init()`` returned (without
    importing ray)."""
    if isinstance(value, types.ModuleType):
        return value.__name__ == "ray"
    return type(value).__module__.startswith("ray.") and type(value).__name__ in (
        "RayContext",
        "ClientContext",
    )


def _is_custom(value: Any) -> bool:
    return callable(getattr(value, "bind", None))


KINDS: list[ExecutorKind] = [
    ExecutorKind(
        "inline",
        lambda value: value is None or (isinstance(value, str) and value == "inline"),
        "'inline'",
        "_calls:executor_for",
        display=lambda value: None,
        logged=False,
        auto="calls cheaper than a hand-off, and async or generator functions",
    ),
    ExecutorKind(
        "thread",
        _is_str("thread"),
        "'thread', 'thread:N'",
        "_threads:executor_for",
        _workers,
        display=str,
        auto="calls that wait (their wall time well above their CPU time)",
    ),
    ExecutorKind(
        "process",
        _is_str("process"),
        "'process', 'process:N' (N >= 1 workers)",
        "_pools:executor_for",
        _workers,
        display=str,
        sends_work_away=True,
        chunked=True,
        generators="replayed",
        auto="calls that compute, on more than one core, when items and results pickle",
    ),
    ExecutorKind(
        "auto",
        _is_auto,
        "'auto'",
        "_auto:Auto",
        _auto,
        display=lambda value: "auto",
        chunked=True,  # (when it chooses "process")
        logged=False,
    ),
    ExecutorKind(
        "thread pool",
        lambda value: isinstance(value, concurrent.futures.ThreadPoolExecutor),
        "a concurrent.futures.Executor",
        "_pools:executor_for",
    ),
    ExecutorKind(
        "process pool",
        lambda value: isinstance(value, concurrent.futures.Executor),
        "a concurrent.futures.Executor",
        "_pools:executor_for",
        sends_work_away=True,
        chunked=True,
        generators="replayed",
    ),
    ExecutorKind(
        "dask",
        is_dask_client,
        "a dask.distributed Client",
        "_dask:DaskCalls",
        display=lambda value: "dask",
        sends_work_away=True,
        chunked=True,
        generators="replayed",
    ),
    ExecutorKind(
        "ray",
        is_ray,
        "the ray module (after ray.init())",
        "_ray:RayCalls",
        display=lambda value: "ray",
        sends_work_away=True,
        chunked=True,
        generators="replayed",
    ),
    ExecutorKind(
        "bind",  # the catch-all: any object of the Executor protocol (conveyor.abc)
        _is_custom,
        "an object with a bind(invoke) method (conveyor.abc.Executor)",
        "_calls:given",
    ),
]
"""The kinds, tried in order: the first whose ``matches`` accepts a value is its kind."""


def register(kind: ExecutorKind) -> ExecutorKind:
    """Add ``kind`` before the catch-all ``bind`` row (its name must be new)."""
    if any(row.name == kind.name for row in KINDS):
        raise ValueError(f"an executor kind named {kind.name!r} is registered already")
    KINDS.insert(len(KINDS) - 1, kind)
    return kind


def unregister(name: str) -> None:
    """Remove the kind named ``name`` (a kind :func:`register` added)."""
    KINDS[:] = [row for row in KINDS if row.name != name]


# -- the questions -----------------------------------------------------------------------


def find(value: Any) -> ExecutorKind | None:
    """The kind of ``value``, or ``None`` if no row accepts it."""
    for row in KINDS:
        if row.matches(value):
            return row
    return None


def kind_of(value: Any) -> ExecutorKind:
    """The kind of a task's (validated) ``executor`` option."""
    row = find(value)
    if row is None:
        raise TypeError(f"not an executor option: {value!r}")  # (validated, so never)
    return row


def help_text() -> str:
    """What ``executor=`` accepts, from the rows, for error messages."""
    seen: list[str] = []
    for row in KINDS:
        if row.accepted not in seen:
            seen.append(row.accepted)
    return ", ".join(seen[:-1]) + ", or " + seen[-1]


def check(name: str, value: Any) -> Any:
    """Validate an ``executor=`` value (the parameter is ``name``): the value to keep."""
    row = find(value)
    if row is None:
        error = ValueError if isinstance(value, str) else TypeError
        raise error(f"{name} must be {help_text()}; got {value!r}")
    return row.check(name, value)


def chunked_kinds() -> str:
    """The kinds ``chunk_size=`` applies to, for its error message."""
    return ", ".join(row.accepted for row in KINDS if row.chunked)


def sends_work_away(value: Any) -> bool:
    """Whether calls on the (validated) option ``value`` run in other processes."""
    row = find(value)
    return row is not None and row.sends_work_away


def display_name(value: Any) -> str | None:
    """The option's short name in charts; ``None`` for the default (inline)."""
    return kind_of(value).display(value)


def build(spec: TaskDescription) -> Executor:
    """A new executor for one run of the stage ``spec``, built by its kind's module."""
    option = spec.options.executor
    module, _, function = kind_of(option).build.partition(":")
    if module.startswith("_"):
        module = f"{__package__}.{module}"
    builder = getattr(importlib.import_module(module), function)
    return builder(spec, option)  # type: ignore[no-any-return]


# -- the optional parts of an executor object (conveyor.abc) -----------------------------


def run_scoped(executor: Executor) -> TypeGuard[RunScopedExecutor]:
    """Whether ``executor`` opens something per run (:class:`~conveyor.abc.RunScopedExecutor`)."""
    return isinstance(executor, RunScopedExecutor)


def figures(executor: Any) -> ChunkFigures | None:
    """The chunk figures of ``executor`` (:class:`~conveyor.abc.ChunkedExecutor`), if any."""
    if isinstance(executor, ChunkedExecutor):
        return executor.chunker
    return None


def offload(executor: Any) -> dict[str, Any] | None:
    """Work ``executor`` sent to other processes in chunks (``_chunks``): where its time
    went (a stage's ``offload`` statistics), or None."""
    chunker = figures(executor)
    if chunker is None:
        return None
    return {
        "chunks": chunker.chunks,
        "items": chunker.items,
        "work_seconds": chunker.work_total,
        "transfer_seconds": chunker.transfer_total,
        "queued_seconds": max(
            0.0, chunker.round_trip_total - chunker.work_total - chunker.transfer_total
        ),
        "chunk_size": chunker.size,
    }
